"""SRD: Yang, Martinez, Bulat, Tzimiropoulos, "Knowledge Distillation via Softmax Regression Representation
Learning", ICLR 2021 (called SRD in arXiv:2205.06701).

The student's last feature map goes through a connector (1x1 conv + BN + ReLU to the teacher's embedding
width), is pooled, matched to the teacher's pooled feature (L_FM), and passed through the teacher's frozen
classifier; those cross-network logits are matched to the teacher's logits (L_SR). The teacher classifier
stays in the autograd graph (gradients reach the student through it) but is never optimised. As the
authors' github.com/jingyang2017/SRD_ossl (`distiller_zoo/AIN.py`, `train_student.py`). Loss, keys and
defaults: docs/methods.md#srd.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import deepest_stage, shape3


@register
class SRD(Method):
    """L = CE + weight·(feature_weight·L_FM + L_SR); SRD_ossl defaults weight 1, feature_weight 1, CE 1."""

    name = "srd"
    paper = ("Yang et al. Knowledge Distillation via Softmax Regression Representation Learning. ICLR 2021 "
             "(SRD in arXiv:2205.06701)")
    defaults = {"weight": 1.0, "feature_weight": 1.0}
    ce_weight = 1.0

    def taps(self, student_points, teacher_points):
        return [deepest_stage(student_points)], ["embedding", "classifier"]

    def build(self, ctx: BuildContext) -> None:
        s_tap = deepest_stage(ctx.student_points)
        s_shape = shape3(ctx.student_shapes[s_tap], f"student tap {s_tap}")
        t_shape = tuple(ctx.teacher_shapes["embedding"])
        if len(t_shape) not in (1, 3):
            raise KdlabError(f"{self.name}: the teacher's embedding tap has shape {t_shape}; it needs a pooled (C,) "
                             f"embedding or a (C, H, W) map")
        t_dim = int(t_shape[0])
        self.student_tap = s_tap
        self.connector = ConvConnector(s_shape, (t_dim, *s_shape[1:]), relu=True)
        classifier = ctx.teacher.get_submodule(ctx.teacher_points["classifier"])
        # Held outside the module tree: never in the optimizer or this method's state_dict.
        object.__setattr__(self, "_teacher_classifier", classifier)

    def cross_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        classifier: nn.Module = self._teacher_classifier
        return classifier(pooled.to(next(classifier.parameters()).dtype))

    def transformed(self, batch: DistillBatch) -> torch.Tensor:
        return self.connector(batch.student[self.student_tap]).mean(dim=(2, 3))

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        pooled = self.transformed(batch)
        fm, sr = losses.srd_terms(pooled, batch.teacher["embedding"], self.cross_logits(pooled),
                                  batch.teacher_logits)
        return {"srd_fm": self.hp["feature_weight"] * fm, "srd_sr": sr}


__all__ = ["SRD"]
