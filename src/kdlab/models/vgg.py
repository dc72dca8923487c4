"""VGG with batch norm for small images (vgg8, vgg11, vgg13, vgg16, vgg19).

Architecture: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR 2015), configurations A/B/D/E, with BN after every conv (Ioffe & Szegedy 2015). The CIFAR form is
the CRD benchmark's (Tian et al., ICLR 2020; HobbitLong/RepDistiller ``models/vgg.py``): five conv
blocks separated by 2x2 max-pools, no fully connected hidden layers, global average pooling and a single
``Linear(512, num_classes)``; ``vgg8`` is the benchmark's extra configuration S (one conv per block).

Downsampling is planned from ``image_size``: the first three pools are skipped only if the map is 1x1,
and the pool before the last block is applied only when the map is at least 8x8, which reproduces the
benchmark (for 32x32 inputs the last block runs at 4x4; for 64x64 inputs it is pooled to 4x4).

Tap points: ``stem`` (block 0 after ReLU), ``stageK`` (block K after ReLU), ``stageK_pre`` (block K's
last BN output, before the ReLU), ``final_map`` (the map the global pooling averages: the last stage),
``embedding``, ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.common import init_weights
from kdlab.models.hooks import HookPoint

CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class ConvBlock(nn.Module):
    """Conv3x3-BN-ReLU layers; the last BN output passes through ``preact`` before its ReLU."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width)]
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
            in_channels = width
        self.layers = nn.Sequential(*layers)
        self.preact = HookPoint()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.preact(self.layers(x)))


class VGG(nn.Module):
    """CIFAR VGG-BN: block0, then (pool, block) x 4, global average pool, linear classifier."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        config = CONFIGS[depth]
        self.stem = ConvBlock(in_channels, config[0])
        size = image_size
        taps = {"stem": "stem"}
        for index in range(1, 5):
            # Pools 1-3 only need a map of at least 2x2; the last one mirrors the benchmark (see module doc).
            use_pool = size >= (8 if index == 4 else 2)
            self.add_module(f"pool{index}", nn.MaxPool2d(2, 2) if use_pool else nn.Identity())
            size = size // 2 if use_pool else size
            self.add_module(f"stage{index}", ConvBlock(config[index - 1][-1], config[index]))
            taps[f"stage{index}"] = f"stage{index}"
        taps.update({f"stage{index}_pre": f"stage{index}.preact" for index in range(1, 5)})
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        self.tap_points = {**taps, "final_map": "stage4", "embedding": "flatten", "classifier": "classifier"}
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"stage{index}")(getattr(self, f"pool{index}")(x))
        return self.classifier(self.flatten(self.pool(x)))
