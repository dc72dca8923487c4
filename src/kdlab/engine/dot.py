"""DOT: SGD with one momentum for the task gradient and another for the distillation gradient.

Zhao, Cui, Song, Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023 (arXiv:2307.08436); update rule as in
the authors' code (github.com/megvii-research/mdistiller, `mdistiller/engine/dot.py`). With β the configured
momentum and Δ `optim.dot_delta`, the task (cross-entropy) gradient gets momentum β - Δ and the distillation
gradient β + Δ. For a parameter θ with both gradients, weight decay w and learning rate η:

    v_task ← (β-Δ)·v_task + (g_task + w·θ)      v_kd ← (β+Δ)·v_kd + g_kd      θ ← θ - η·v_task - η·v_kd

Weight decay is added to the task gradient only, so it is not counted twice. A parameter with only one of the two
gradients (a connector that only the distillation loss reaches) uses the mean momentum β and takes the weight
decay on the gradient it has. A buffer starts as its first gradient (PyTorch's SGD convention); no dampening, no
Nesterov. The trainer computes both gradients (`split_gradients`), puts the task one in `.grad` and hands the
distillation one to `set_distill_gradients` before `step()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from kdlab.engine.distributed import average_gradients


class DOT(torch.optim.Optimizer):
    """SGD with separate momenta for the task and the distillation gradients (see the module docstring)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9, delta: float = 0.075,
                 weight_decay: float = 0.0):
        if not (0 <= momentum - delta and momentum + delta < 1):
            raise ValueError(f"DOT needs 0 <= momentum - delta and momentum + delta < 1, got {momentum}, {delta}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay})
        self._distill: dict[int, torch.Tensor] = {}  # id(param) -> this step's distillation gradient

    def set_distill_gradients(self, params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
        """The distillation gradients of this step (None: the parameter has none); used by the next `step()`."""
        self._distill = {id(p): g for p, g in zip(params, grads, strict=True) if g is not None}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, delta, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
            for p in group["params"]:
                g_task, g_kd = p.grad, self._distill.get(id(p))
                if g_task is None and g_kd is None:
                    continue
                state = self.state[p]
                both = g_task is not None and g_kd is not None
                if g_task is not None:
                    d_p = g_task.add(p, alpha=wd) if wd else g_task
                    p.sub_(_momentum(state, "task_buffer", d_p, beta - delta if both else beta), alpha=lr)
                if g_kd is not None:
                    d_p = g_kd.add(p, alpha=wd) if wd and not both else g_kd
                    p.sub_(_momentum(state, "distill_buffer", d_p, beta + delta if both else beta), alpha=lr)
        self._distill = {}
        return loss


def _momentum(state: dict, key: str, d_p: torch.Tensor, beta: float) -> torch.Tensor:
    """The updated momentum buffer `key` of a parameter: β·v + d_p, or d_p itself on its first step."""
    buf = state.get(key)
    if buf is None:
        buf = state[key] = d_p.detach().clone()
    else:
        buf.mul_(beta).add_(d_p)
    return buf


def split_gradients(task: torch.Tensor, distill: torch.Tensor, params: Sequence[nn.Parameter]
                    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """(∇task, ∇distill) for `params`, each averaged over ranks under DDP (autograd.grad bypasses DDP's reducer,
    as the per-parameter clipping of KD-SVD does). No loss scale: DOT refuses fp16. A distillation loss without a
    graph (a warm-up factor of 0) has no gradient: None for every parameter."""
    g_distill = (torch.autograd.grad(distill, params, retain_graph=True, allow_unused=True) if distill.requires_grad
                 else (None,) * len(params))
    g_task = torch.autograd.grad(task, params, allow_unused=True)
    return average_gradients(g_task), average_gradients(g_distill)


__all__ = ["DOT", "split_gradients"]
