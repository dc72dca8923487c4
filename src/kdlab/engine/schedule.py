"""Learning-rate schedules as epoch -> factor functions (linear warm-up, then step / cosine / constant)."""

from __future__ import annotations

import math
from collections.abc import Callable

from kdlab.config import OptimConfig


def lr_factor(optim: OptimConfig) -> Callable[[int], float]:
    """Multiplier of the base LR for 0-indexed epoch e (the LR used during epoch e+1).

    Step: ×gamma for every milestone m with e+1 > m, i.e. the CRD recipe's ×0.1 after epochs 150/180/210.
    """

    def factor(epoch: int) -> float:
        if epoch >= optim.epochs:  # optim.extend_to: the schedule's last LR, held constant
            epoch = optim.epochs - 1
        if optim.warmup_epochs and epoch < optim.warmup_epochs:
            return (epoch + 1) / optim.warmup_epochs
        if optim.schedule == "step":
            return optim.gamma ** sum(epoch + 1 > m for m in optim.milestones)
        if optim.schedule == "cosine":
            span = max(optim.epochs - optim.warmup_epochs, 1)
            progress = (epoch - optim.warmup_epochs) / span
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def describe(optim: OptimConfig, base_lr: float | None = None) -> str:
    """One line for the start of a run: optimizer, LR and where it changes, e.g.
    'schedule: 30 epochs, SGD momentum 0.9, weight decay 0.0005, lr 0.05, x0.1 after epochs 19/23/26'."""
    lr = optim.lr if base_lr is None else base_lr
    if optim.optimizer == "adamw":
        optimizer = f"AdamW betas {optim.betas[0]:g},{optim.betas[1]:g}"
    elif optim.optimizer == "dot":
        optimizer = (f"DOT momentum {optim.momentum - optim.dot_delta:g} (task) / "
                     f"{optim.momentum + optim.dot_delta:g} (distillation)")
    else:
        optimizer = f"SGD momentum {optim.momentum:g}{' nesterov' if optim.nesterov else ''}"
    parts = [f"{optim.epochs} epochs", optimizer, f"weight decay {optim.weight_decay:g}", f"lr {lr:g}"]
    if optim.warmup_epochs:
        parts.append(f"linear warm-up over {optim.warmup_epochs} epochs")
    if optim.schedule == "step":
        parts.append(f"x{optim.gamma:g} after epochs {'/'.join(map(str, optim.milestones))}"
                     if optim.milestones else "constant (no milestones)")
    else:
        parts.append("cosine to 0" if optim.schedule == "cosine" else "constant")
    if optim.clip_grad_norm is not None:
        parts.append(f"gradient norm clipped at {optim.clip_grad_norm:g}")
    if optim.extend_to and optim.extend_to > optim.epochs:
        parts.append(f"extended to epoch {optim.extend_to} at the last epoch's lr")
    return "schedule: " + ", ".join(parts)


def total_epochs(optim: OptimConfig) -> int:
    """Epochs to train: `optim.epochs`, or `optim.extend_to` when a finished run is extended past them."""
    return max(optim.epochs, optim.extend_to or 0)
