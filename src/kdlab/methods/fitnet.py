"""FitNet: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015
(arXiv:1412.6550).

The one-stage hint loss of github.com/HobbitLong/RepDistiller (`distiller_zoo/FitNet.py`, regressor
`models/util.py` ConvReg) and github.com/megvii-research/mdistiller (`mdistiller/distillers/FitNet.py`).
Loss, keys and defaults: docs/methods.md#fitnet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import StageMethod, matched_stages


class ConvReg(nn.Module):
    """RepDistiller's FitNet regressor (`models/util.py` ConvReg): conv, BN(C_t), ReLU.

    Conv by size: H_s = 2H_t → 3x3 stride 2 pad 1; 2H_s = H_t → 4x4 transposed conv stride 2 pad 1;
    H_s >= H_t → kernel (1+H_s-H_t) x (1+W_s-W_t) (large for large size gaps, as in RepDistiller).
    RepDistiller tests only H; here both H and W must fit the rule. Conv bias and init: PyTorch defaults.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        c_s, h_s, w_s = (int(v) for v in student_shape)
        c_t, h_t, w_t = (int(v) for v in teacher_shape)
        if (h_s, w_s) == (2 * h_t, 2 * w_t):
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif (2 * h_s, 2 * w_s) == (h_t, w_t):
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"ConvReg does not apply to student {h_s}x{w_s} -> teacher {h_t}x{w_t}")
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = nn.ReLU()

    @staticmethod
    def applies(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> bool:
        _, h_s, w_s = (int(v) for v in student_shape)
        _, h_t, w_t = (int(v) for v in teacher_shape)
        return (h_s, w_s) == (2 * h_t, 2 * w_t) or (2 * h_s, 2 * w_s) == (h_t, w_t) or (h_s >= h_t and w_s >= w_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def hint_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """ConvReg where its size rule applies; otherwise (student smaller, not by exactly 2x) our extension:
    1x1 conv + BN + ReLU, bilinearly resized to the teacher's size. Both end in a ReLU: the hint is post-ReLU."""
    if ConvReg.applies(student_shape, teacher_shape):
        return ConvReg(student_shape, teacher_shape)
    return ConvConnector(student_shape, teacher_shape, relu=True)


@register
class FitNet(StageMethod):
    """FitNet hint loss, one-stage form of RepDistiller/mdistiller: MSE(r(F_s), F_t).

    Hint = one matched stage, `hint_stage` indexing the matched stages (default -2, the second-to-last:
    f2 of three stages = RepDistiller `--hint_layer 2`, mdistiller `HINT_LAYER 2`). r = `hint_regressor`.
    Defaults: weight 100 (RepDistiller `-b 100`, mdistiller `FEAT_WEIGHT 100`), CE 1, no KD term. The
    paper's two-stage protocol (hint pre-training, then KD) is not what the benchmarks run.
    """

    name = "fitnet"
    paper = "Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015 (arXiv:1412.6550)"
    defaults = {"weight": 100.0, "hint_stage": -2}
    ce_weight = 1.0

    def stage_taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        s, t = matched_stages(student_points, teacher_points)
        i = self.hp["hint_stage"]
        if not -len(s) <= i < len(s):
            raise KdlabError(f"method.fitnet.hint_stage={i} is out of range for the {len(s)} matched stages "
                             f"({', '.join(s)}); use a value from {-len(s)} to {len(s) - 1}")
        return [s[i]], [t[i]]

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        ((s_shape, t_shape),) = self.stage_shapes(ctx)
        self.regressor = hint_regressor(s_shape, t_shape)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        (s,), (t,) = self.features(batch)
        return {"fitnet": losses.fitnet(self.regressor(s), t)}


__all__ = ["ConvReg", "FitNet", "hint_regressor"]
