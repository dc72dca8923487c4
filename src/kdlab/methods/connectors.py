"""Connectors: small trainable adapters mapping a student tap onto a teacher tap's shape.

Chosen from probed shapes so that feature methods work for any teacher/student pair: channels through a
1x1 conv (+ BN, optionally ReLU), spatial size by adaptive average pooling (student larger) or bilinear
interpolation (student smaller); flat embeddings through a linear layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring a 4-D map to spatial `size`: average-pool when shrinking, bilinear when growing."""
    size = tuple(int(v) for v in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps to the other's spatial size (METHODS.md §27.3)."""
    ha, hb = a.shape[-2:], b.shape[-2:]
    if ha == hb:
        return a, b
    if ha[0] * ha[1] > hb[0] * hb[1]:
        return F.adaptive_avg_pool2d(a, hb), b
    return a, F.adaptive_avg_pool2d(b, ha)


def he_init_(conv: nn.Module) -> None:
    """He-normal init with std sqrt(2 / (k² C_out)), as the OD/AB/SRD connectors (METHODS.md §10, §20)."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    conv.weight.data.normal_(0.0, math.sqrt(2.0 / (k * conv.out_channels)))
    if conv.bias is not None:
        conv.bias.data.zero_()


class ConvConnector(nn.Module):
    """1x1 conv (no bias) + BN [+ ReLU], then resize to the teacher's spatial size."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool = False,
                 bn: bool = True):
        super().__init__()
        c_s, c_t = int(student_shape[0]), int(teacher_shape[0])
        self.out_size = tuple(int(v) for v in teacher_shape[1:])
        self.conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=not bn)
        he_init_(self.conv)
        self.bn = nn.BatchNorm2d(c_t) if bn else nn.Identity()
        self.relu = nn.ReLU(inplace=False) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.relu(self.bn(self.conv(x))), self.out_size)


class LinearConnector(nn.Module):
    """Linear map between flat embeddings of different widths."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
