"""ICKD: Liu, Huang, Lin, Xie, Wang, Chang, Liang, "Exploring Inter-Channel Correlation for Diversity-Preserved
Knowledge Distillation", ICCV 2021 (arXiv:2202.03680).

The CIFAR-100 form of the authors' github.com/ADLab-AutoDrive/ICKD (`Cifar100/distiller_zoo/ICKD.py`
`ICKDLoss.batch_loss` and `Embed`, `Cifar100/helper/loops.py` for the feature, `Cifar100/README.md` for the
weights). Loss, keys and defaults: docs/methods.md#ickd.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch
from kdlab.methods.stages import StageMethod, deepest_stage

FINAL = "final_map"


def last_map(points: dict[str, str]) -> str:
    """`final_map` (the map the global pooling averages) if the model names it, else its deepest stage."""
    return FINAL if FINAL in points else deepest_stage(points)


class ChannelEmbed(nn.Module):
    """The authors' `Embed`: 1x1 conv (C_s -> C_t, no bias) + BatchNorm2d(C_t), PyTorch's default init, no ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@register
class ICKD(StageMethod):
    """Inter-channel correlation of the last feature map: ‖G~(e(F_s)) - G~(F_t)‖² / (C·B), G~ row-normalised Grams.

    The map each network pools into its embedding (`final_map`; the deepest stage where a model names none):
    the authors' `feat[-2]`, which their CIFAR models return as the last post-ReLU map before the pooling
    (after the final BN-ReLU of the WRNs, after the 1x1 head of MobileNetV2 and ShuffleNetV2). The student's
    map goes through `ChannelEmbed`
    (always, as the authors; the teacher's `embed_t` of their code is never used and is not built here).
    Spatial sizes may differ (the Grams are C x C). Defaults: weight (β) 2.5, CE 1, no KD term: the
    README's "ICKD-C (w/o KL)" command `-a 0 -b 2.5`; `--method ickd+kd method.kd.weight=1` is its
    "ICKD-C" row (`-a 1`, T 4).
    """

    name = "ickd"
    paper = ("Liu et al. Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation. "
             "ICCV 2021 (arXiv:2202.03680)")
    defaults = {"weight": 2.5}
    ce_weight = 1.0

    def stage_taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        return [last_map(student_points)], [last_map(teacher_points)]

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        ((s_shape, t_shape),) = self.stage_shapes(ctx)
        self.embed = ChannelEmbed(s_shape[0], t_shape[0])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        (s,), (t,) = self.features(batch)
        return {"ickd": losses.ickd(self.embed(s), t)}


__all__ = ["ChannelEmbed", "ICKD"]
