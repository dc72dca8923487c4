"""Connectors: small trainable adapters mapping a student tap onto a teacher tap's shape.

Chosen from probed shapes so that feature methods work for any teacher/student pair: channels through a
1x1 conv (+ BN, optionally ReLU), spatial size by adaptive average pooling (student larger) or bilinear
interpolation (student smaller).
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


def he_init_(conv: nn.Module) -> None:
    """He-normal init with std sqrt(2 / (k² C_out)), as the OD/AB/SRD connectors (docs/methods.md#od, #ab, #srd)."""
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

