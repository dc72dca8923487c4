"""Post-activation ResNets for 32x32 inputs: resnet8..110, resnet8x4/32x4 and the CIFAR ResNet-18.

Architecture: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), section 4.2 (the
6n+2-layer CIFAR networks with 16/32/64 channels), with projection shortcuts (1x1 conv + BN) wherever
shape changes, as in the CRD benchmark (Tian et al., ICLR 2020; HobbitLong/RepDistiller
``models/resnet.py``). The ``x4`` variants are the benchmark's wider teachers/students: a 32-channel stem
and stages of 64/128/256 channels. ``resnet18`` is the CIFAR variant of ResNet-18 used in the same
benchmark (``models/resnetv2.py``): 3x3 stem without max-pool, four stages of 64..512 channels.

Tap points: ``stem`` (f0), ``stageK`` (post-ReLU output of stage K), ``stageK_pre`` (the residual sum of
the stage's last block, just before its final ReLU), ``final_map`` (the map the global pooling averages: the
last stage), ``embedding`` (pooled vector), ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.common import StagedNet, conv_stride
from kdlab.models.hooks import HookPoint


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; ``preact`` marks the sum before the final ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.preact = HookPoint()
        # Not in place: the tensor seen by a hook on ``preact`` must stay the pre-ReLU value.
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(self.preact(out + identity))


class CifarResNet(StagedNet):
    """3x3 stem, stages of basic blocks, global average pool, linear classifier."""

    def __init__(
        self,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU())
        taps = {"stem": "stem"}
        pre_taps = {}
        in_planes, size = stem_width, image_size
        for index, (width, count, stride) in enumerate(zip(widths, blocks, strides), start=1):
            stride, size = conv_stride(size, stride)
            layers = [
                BasicBlock(in_planes if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(count)
            ]
            self.add_module(f"stage{index}", nn.Sequential(*layers))
            taps[f"stage{index}"] = f"stage{index}"
            pre_taps[f"stage{index}_pre"] = f"stage{index}.{count - 1}.preact"
            in_planes = width
        self.finish(len(widths), in_planes, num_classes, {**taps, **pre_taps})


def resnet_cifar(depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    """He et al.'s 6n+2 CIFAR ResNet (``depth`` in 8, 14, 20, 32, 44, 56, 110, ...): widths 16/32/64."""
    n = (depth - 2) // 6
    return CifarResNet(16, (16, 32, 64), (n,) * 3, (1, 2, 2), num_classes, in_channels, image_size)


def resnet_cifar_x4(depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    """CRD benchmark's 4x-wide CIFAR ResNet (resnet8x4, resnet32x4): stem 32, stages 64/128/256."""
    n = (depth - 2) // 6
    return CifarResNet(32, (64, 128, 256), (n,) * 3, (1, 2, 2), num_classes, in_channels, image_size)


def resnet18_cifar(num_classes: int, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool): 11.22M parameters with 100 classes."""
    return CifarResNet(
        64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), num_classes, in_channels, image_size
    )
