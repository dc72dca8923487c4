"""Helpers shared by the zoo families: weight init and downsampling that never collapses small inputs."""

from __future__ import annotations

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
