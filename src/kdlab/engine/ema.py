"""Exponential moving average (EMA) of a model's weights, the model a run evaluates and reports when
`ema_decay` is set.

After every optimizer step each floating-point entry of the state_dict (parameters and BatchNorm running
statistics) moves as ema = decay·ema + (1 - decay)·current; integer entries (BatchNorm's batch counter) are
copied. Averaging the buffers too follows timm's ModelEmaV2 (github.com/huggingface/pytorch-image-models,
timm/utils/model_ema.py); the average starts from the model's initial weights, without a warm-up of the decay.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """The averaged copy of `model` (`module`, in eval mode, never trained); `update(model)` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = _copy_without_hooks(model)
        self.module.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, copied = [], []
        for (name, mine), theirs in zip(self.module.state_dict().items(), model.state_dict().values(), strict=True):
            if mine.shape != theirs.shape:
                raise ValueError(f"EMA entry {name} has shape {tuple(mine.shape)}, the model {tuple(theirs.shape)}")
            (averaged if mine.is_floating_point() else copied).append((mine, theirs))
        if averaged:
            torch._foreach_lerp_([m for m, _ in averaged], [t.detach() for _, t in averaged], 1.0 - self.decay)
        for mine, theirs in copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def _copy_without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without its forward hooks (kdlab's tap recorders hold references to the trained
    model; the copy must neither record taps nor copy the recorders)."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    try:
        for m, _, _ in saved:
            m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
        return copy.deepcopy(model)
    finally:
        for m, hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks
