"""ShuffleNet V1 and V2 for small images (``shufflenetv1``, ``shufflenetv2``).

Architectures: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices" (CVPR 2018) and Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design" (ECCV 2018), in the CIFAR forms of the CRD benchmark (Tian et al., ICLR 2020;
HobbitLong/RepDistiller ``models/ShuffleNetv1.py``, ``models/ShuffleNetv2.py``): a 1x1 24-channel stem
without max-pool; V1 with groups=3, stages of 240/480/960 channels and 4/8/4 units; V2 at size 1x with
stages of 116/232/464 channels, 3/7/3 basic units after each down-sampling unit, and a 1x1 conv to 1024.
Stride-2 steps are clamped to stride 1 once the map (planned from ``image_size``) is 1x1.

Tap points: ``stem``, ``stageK``, ``stageK_pre`` (last unit of stage K just before its final ReLU),
``final_map`` (the map the global pooling averages: the last stage for V1, the 1x1 head for V2),
``embedding``, ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.models.common import StagedNet, conv_stride
from kdlab.models.hooks import HookPoint


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels of ``groups`` groups: (N, g*c, H, W) -> view (N, g, c) -> transpose -> flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnitV1(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add the input, or concat it avg-pooled."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, groups: int, concat: bool, first: bool
    ) -> None:
        super().__init__()
        mid = out_planes // 4
        # The very first unit sees only 24 stem channels, too few to split into groups (Zhang et al. 3.3).
        self.groups1 = 1 if first else groups
        self.concat = concat
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.groups1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride, 1) if concat else nn.Identity()
        self.preact = HookPoint()
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.act1(self.bn1(self.conv1(x))), self.groups1)
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        out = torch.cat([out, residual], 1) if self.concat else out + residual
        return self.act3(self.preact(out))


class ShuffleNetV1(StagedNet):
    """CRD-benchmark ShuffleNet V1 (groups=3)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        out_planes: tuple[int, ...] = (240, 480, 960),
        units: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        in_planes, size = 24, image_size
        taps: dict[str, str] = {"stem": "stem"}
        pre: dict[str, str] = {}
        for index, (planes, count) in enumerate(zip(out_planes, units), start=1):
            layers = []
            for i in range(count):
                stride, size = conv_stride(size, 2) if i == 0 else (1, size)
                # The first unit of a stage concatenates its pooled input, so its branch makes the rest.
                branch = planes - in_planes if i == 0 else planes
                first = index == 1 and i == 0
                layers.append(ShuffleUnitV1(in_planes, branch, stride, groups, concat=i == 0, first=first))
                in_planes = planes
            self.add_module(f"stage{index}", nn.Sequential(*layers))
            taps[f"stage{index}"] = f"stage{index}"
            pre[f"stage{index}_pre"] = f"stage{index}.{count - 1}.preact"
        self.finish(len(out_planes), in_planes, num_classes, {**taps, **pre})


class ShuffleUnitV2(nn.Module):
    """Split channels in half, transform one half (1x1, depthwise 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.half = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.preact = HookPoint()
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x[:, : self.half], x[:, self.half :]
        out = self.bn3(self.conv3(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(transformed)))))))
        # The paper applies the ReLU to the branch before concat + shuffle. The kept half is the output of
        # an earlier ReLU (>= 0) and shuffling commutes with ReLU, so applying it after concat + shuffle
        # computes the same tensor while giving ``preact`` a pre-ReLU tensor in the output's channel order.
        out = channel_shuffle(torch.cat([kept, out], 1), 2)
        return self.act3(self.preact(out))


class DownUnitV2(nn.Module):
    """Both branches see the whole input with stride 2 (depthwise 3x3 -> 1x1 | 1x1 -> depthwise -> 1x1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(StagedNet):
    """CRD-benchmark ShuffleNet V2, size 1x."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        out_channels: tuple[int, ...] = (116, 232, 464, 1024),
        units: tuple[int, ...] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        channels, size = 24, image_size
        taps: dict[str, str] = {"stem": "stem"}
        pre: dict[str, str] = {}
        for index, (planes, count) in enumerate(zip(out_channels[:-1], units), start=1):
            stride, size = conv_stride(size, 2)
            layers: list[nn.Module] = [DownUnitV2(channels, planes, stride)]
            layers += [ShuffleUnitV2(planes) for _ in range(count)]
            channels = planes
            self.add_module(f"stage{index}", nn.Sequential(*layers))
            taps[f"stage{index}"] = f"stage{index}"
            pre[f"stage{index}_pre"] = f"stage{index}.{count}.preact"
        self.head = nn.Sequential(
            nn.Conv2d(channels, out_channels[-1], 1, bias=False), nn.BatchNorm2d(out_channels[-1]), nn.ReLU()
        )
        self.finish(len(units), out_channels[-1], num_classes, {**taps, **pre}, final_map="head")

    def head_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)
