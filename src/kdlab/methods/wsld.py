"""WSLD: Zhou, Song, Chen, Zhou, Wang, Yuan, Zhang, "Rethinking Soft Labels for Knowledge Distillation: A
Bias-Variance Tradeoff Perspective", ICLR 2021 (arXiv:2102.00650).

KD's soft-label cross-entropy weighted per sample by how much worse the student fits the label than the
teacher. The authors' code (github.com/bellymonster/Weighted-Soft-Label-Distillation `knowledge_distiller.py`)
is ImageNet-only (T 2, alpha 2.5); the CIFAR-100 defaults come from the re-implementation in
github.com/yzd-v/cls_KD (`configs/distillers/cifar100/res34_distill_res18_cifar.py`: `WSLDLoss` temp 4,
alpha 2.25). Loss, keys and defaults: docs/methods.md#wsld.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class WSLD(Method):
    """Zhou et al. 2021: CE + weight·T²·mean_i w_i·CE(σ_T(z_t), σ_T(z_s)); weight = the paper's α.

    CIFAR-100 (cls_KD): α 2.25, T 4, CE 1. ImageNet (official): α 2.5, T 2.
    """

    name = "wsld"
    paper = ("Zhou et al. Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff "
             "Perspective. ICLR 2021 (arXiv:2102.00650)")
    defaults = {"weight": 2.25, "temperature": 4.0}
    positive = ("temperature",)
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"wsld": losses.wsld(batch.student_logits, batch.teacher_logits, batch.targets,
                                    temperature=self.hp["temperature"])}


__all__ = ["WSLD"]
