"""Wide ResNets WRN-D-K (pre-activation), for 32x32 inputs.

Architecture: Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016): a 16-channel 3x3 stem, three
groups of (D-4)/6 pre-activation basic blocks with 16K/32K/64K channels (strides 1, 2, 2), a final
BN-ReLU, global average pooling and a linear classifier; 1x1 projection shortcuts taken from the
activated input where shape changes. Same layout as the CRD benchmark's ``models/wrn.py``
(Tian et al., ICLR 2020; HobbitLong/RepDistiller), whose dropout default of 0 is kept.

Tap points follow the pre-activation convention of the CRD benchmark's WRN (docs/methods.md, "Taps and
notation"): ``stageK`` is the raw residual stream leaving group K (no BN/ReLU applied); ``stageK_pre`` is
that tensor after the BN which precedes the next ReLU (the first BN of group K+1, or the final BN for the
last group). That BN output passes through a :class:`HookPoint` named ``preact``; the network computes
exactly what it did without it. ``final_map`` is the final BN-ReLU output, the map the global pooling averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models.common import conv_stride, init_weights
from kdlab.models.hooks import HookPoint


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-projection shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.preact = HookPoint()
        self.act1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.preact(self.bn1(x)))
        out = self.act2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # Projection shortcuts read the activated input (Zagoruyko & Komodakis' reference code does too).
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-width for small images."""

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10 or width < 1:
            raise ValueError(
                f"WRN depth must be 6n+4 with n >= 1 and width >= 1, got depth={depth}, width={width}"
            )
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        in_planes, size = 16, image_size
        for index, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            stride, size = conv_stride(size, stride)
            blocks = [
                WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
            in_planes = planes
        self.norm = nn.BatchNorm2d(in_planes)
        self.preact = HookPoint()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_planes, num_classes)
        self.tap_points = {
            "stem": "stem",
            "stage1": "stage1",
            "stage2": "stage2",
            "stage3": "stage3",
            "stage1_pre": "stage2.0.preact",
            "stage2_pre": "stage3.0.preact",
            "stage3_pre": "preact",
            "final_map": "act",
            "embedding": "flatten",
            "classifier": "classifier",
        }
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        x = self.act(self.preact(self.norm(x)))
        return self.classifier(self.flatten(self.pool(x)))
