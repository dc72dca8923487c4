"""Helpers shared by the zoo families: weight init and downsampling that never collapses small inputs."""

from __future__ import annotations

import torch
from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU gain), BN weight 1 / bias 0, zero linear biases.

    This is the initialisation of the RepDistiller CIFAR models (He et al. 2015, "Delving Deep into
    Rectifiers"); linear weights keep PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def conv_stride(size: int, stride: int) -> tuple[int, int]:
    """(stride to use, output size) for a padded 3x3 conv or 3x3/pad-1 pool on a ``size`` x ``size`` map.

    A stride-2 step on a 1x1 map is clamped to stride 1, so digits-size inputs (8x8) never run out of
    resolution in networks with many downsamplings.
    """
    if stride > 1 and size < 2:
        return 1, size
    return stride, -(-size // stride)


class StagedNet(nn.Module):
    """stem → stage1..N → head → global average pool → linear classifier, with the zoo's tap table.

    The shape shared by the CIFAR ResNets and the ShuffleNets: a subclass builds `stem` and `stage1..N`
    (and `head` where it has one: override `head_forward`), then calls `finish`.
    """

    def finish(self, num_stages: int, features: int, num_classes: int, taps: dict[str, str],
               final_map: str | None = None) -> None:
        """Add pool, flatten and classifier, declare the taps (`final_map`: the last stage unless named) and
        initialise the weights (`init_weights`)."""
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(features, num_classes)
        self.num_stages = num_stages
        self.tap_points = {**taps, "final_map": final_map or f"stage{num_stages}", "embedding": "flatten",
                           "classifier": "classifier"}
        init_weights(self)

    def head_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{index}")(x)
        return self.classifier(self.flatten(self.pool(self.head_forward(x))))
