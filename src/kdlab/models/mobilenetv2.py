"""MobileNetV2 for small images: ``mobilenetv2`` (width 0.5) and ``mobilenetv2_w1`` (width 1.0).

Architecture: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), in
the CIFAR form of the CRD benchmark (Tian et al., ICLR 2020; HobbitLong/RepDistiller
``models/mobilenetv2.py``, ``mobile_half`` = expansion 6, width 0.5): stride-2 3x3 stem, seven groups of
inverted residuals (t, c, n, s) = (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1),
(6,160,3,2), (6,320,1,1) where every block keeps its 1x1 expansion conv (also for t=1), a 1x1 conv to
1280 channels, global average pooling and a linear classifier. Stride-2 steps are clamped to stride 1
once the map (planned from ``image_size``) is 1x1.

Tap points: ``stem``; ``stage1``..``stage4`` are the outputs of groups 1, 2, 4 and 6 (the last group at
each resolution, as in the benchmark's features); ``stageK_pre`` is the same module because the linear
bottleneck output is never passed through a ReLU (it already is the pre-activation tensor);
``final_map`` (the 1x1 head's output, which the global pooling averages); ``embedding``; ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.models.common import conv_stride, init_weights

SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 with width multiplier ``width`` and expansion ``expansion``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        width: float = 1.0,
        expansion: int = 6,
    ) -> None:
        super().__init__()
        channels = int(32 * width)
        stride, size = conv_stride(image_size, 2)
        self.stem = _conv_bn_relu(in_channels, channels, 3, stride)
        groups = []
        for t, c, n, s in SETTINGS:
            t = t if t == 1 else expansion
            out_channels = int(c * width)
            layers = []
            for i in range(n):
                stride, size = conv_stride(size, s if i == 0 else 1)
                layers.append(InvertedResidual(channels, out_channels, stride, t))
                channels = out_channels
            groups.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*groups)
        # The benchmark keeps 1280 head channels for widths <= 1 (Sandler et al. do the same).
        head = 1280 if width <= 1.0 else int(1280 * width)
        self.head = _conv_bn_relu(channels, head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(head, num_classes)
        stages = {f"stage{k}": f"blocks.{g}" for k, g in enumerate((1, 2, 4, 6), start=1)}
        self.tap_points = {
            "stem": "stem",
            **stages,
            **{f"{name}_pre": path for name, path in stages.items()},
            "final_map": "head",
            "embedding": "flatten",
            "classifier": "classifier",
        }
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))
