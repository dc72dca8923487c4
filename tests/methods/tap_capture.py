"""A test helper: copies of a model's symbolic taps, captured with our own forward hooks (registered before a
loss's, so they fire first; they only copy and never change the forward)."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.models import tap_points


class Capture:
    def __init__(self, model: nn.Module, names: list[str]):
        points = tap_points(model)
        self.out: dict[str, torch.Tensor] = {}
        for name in names:
            model.get_submodule(points[name]).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = output.detach().clone()

        return hook
