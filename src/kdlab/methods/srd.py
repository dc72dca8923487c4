"""SRD (softmax regression representation learning) and SRDwithDIST, SRD with DIST's correlation loss.

The student's last feature map goes through a connector (1x1 conv + BN + ReLU to the teacher's embedding
width), is pooled, matched to the teacher's pooled feature (L_FM), and passed through the teacher's frozen
classifier; those cross-network logits are matched to the teacher's logits (L_SR, MSE or DIST).
METHODS.md §20: the teacher classifier stays in the autograd graph (gradients reach the student through
it) but is never optimised.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method, deepest_stage
from kdlab.methods.connectors import ConvConnector


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
        s_shape = ctx.student_shapes[s_tap]
        t_dim = int(ctx.teacher_shapes["embedding"][0])
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


@register
class SRDWithDIST(SRD):
    """SRD with the softmax-regression MSE replaced by DIST's Pearson terms ('SRDwithDIST').

    As its authors define it (github.com/chitraz/KnowledgeDistillationForModelCompression, ``DISTV2``:
    "do not do softmax"), the inter- and intra-class Pearson terms compare the raw cross-network logits
    with the raw teacher logits (no temperature, no tau^2). `softmax=true` applies DIST as published
    instead (softmax(z / temperature), tau^2 inside); `temperature` is used only then.
    """

    name = "srd_dist"
    paper = ("SRDwithDIST: SRD (Yang et al. ICLR 2021) with DIST's Pearson terms (Huang et al. NeurIPS 2022) "
             "on raw logits (github.com/chitraz/KnowledgeDistillationForModelCompression, MSc 2024)")
    defaults = {"weight": 1.0, "feature_weight": 1.0, "beta": 1.0, "gamma": 1.0, "softmax": False,
                "temperature": 1.0}

    @classmethod
    def check_hparams(cls, hparams):
        values = super().check_hparams(hparams)
        if not values["softmax"] and values["temperature"] != 1.0:
            raise KdlabError(f"method.srd_dist.temperature={values['temperature']} is used only on softmax "
                             "outputs; add method.srd_dist.softmax=true, or drop the temperature (the authors' "
                             "SRDwithDIST uses raw logits)")
        return values

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        pooled = self.transformed(batch)
        loss = losses.srd_dist(pooled, batch.teacher["embedding"], self.cross_logits(pooled), batch.teacher_logits,
                               feature_weight=self.hp["feature_weight"], beta=self.hp["beta"],
                               gamma=self.hp["gamma"], temperature=self.hp["temperature"],
                               softmax=self.hp["softmax"])
        return {"srd_dist": loss}
