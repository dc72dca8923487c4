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


def total_epochs(optim: OptimConfig) -> int:
    """Epochs to train: `optim.epochs`, or `optim.extend_to` when a finished run is extended past them."""
    return max(optim.epochs, optim.extend_to or 0)
