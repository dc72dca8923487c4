"""SP: Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv:1907.09682).

Batch Gram matrices of the deepest stage, as github.com/HobbitLong/RepDistiller (`distiller_zoo/SP.py`,
`-b 3000`) and github.com/megvii-research/mdistiller. Loss, keys and defaults: docs/methods.md#sp.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import deepest_stage


@register
class SP(Method):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ‖G̃_t − G̃_s‖²_F / B² of the row-normalised
    batch Gram matrices of the deepest stage (`f3`, as RepDistiller/mdistiller).

    No connector (any widths and sizes). Defaults: weight γ = 3000 (RepDistiller `-b 3000`, mdistiller
    `SP.LOSS.FEAT_WEIGHT 3000`), CE 1.
    """

    name = "sp"
    paper = "Tung, Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019 (arXiv:1907.09682)"
    defaults = {"weight": 3000.0}
    ce_weight = 1.0
    uses_teacher_logits = False

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_tap, self.teacher_tap = deepest_stage(student_points), deepest_stage(teacher_points)
        return [self.student_tap], [self.teacher_tap]

    def build(self, ctx: BuildContext) -> None:
        self.student_tap, self.teacher_tap = deepest_stage(ctx.student_points), deepest_stage(ctx.teacher_points)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"sp": losses.sp(batch.student[self.student_tap], batch.teacher[self.teacher_tap])}


__all__ = ["SP"]
