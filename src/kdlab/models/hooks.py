"""Named identity modules that mark where a tap can attach a forward hook.

Zoo models return logits only; intermediate tensors are read with forward hooks addressed by module path
(see ``kdlab.models.tap_points``). Some tensors that distillation methods need, such as the pre-ReLU stage
output used by OD, AB and ReviewKD, are not the output of any ordinary module, so the models route them
through a :class:`HookPoint`, which returns its input unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Identity):
    """Identity whose output is a tensor worth tapping; it changes nothing in the network's function.

    The module after a hook point must not modify the tensor in place (no ``ReLU(inplace=True)``),
    otherwise a captured reference would change under the hook's feet.
    """


class FlatAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling that returns ``(N, C)`` instead of ``(N, C, 1, 1)``.

    Swapped in for torchvision's ``avgpool`` so the pooled embedding is the output of one module (a
    forward hook sees it) while the state_dict keys stay unchanged; torchvision's own ``torch.flatten``
    after it is then a no-op.
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.flatten(super().forward(input), 1)
