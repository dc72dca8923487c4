"""DIST: Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
(arXiv:2205.10536).

Defaults from the authors' github.com/hunto/DIST_KD and github.com/hunto/image_classification_sota
(`configs/strategies/distill/dist_cifar.yaml`). Loss, keys and defaults: docs/methods.md#dist.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class DIST(Method):
    """Huang et al. 2022: β·inter + γ·intra Pearson relations of σ_τ outputs. CIFAR config (dist_cifar.yaml):
    τ 4, outer weight 2, CE 1; ImageNet uses τ 1."""

    name = "dist"
    paper = "Huang et al. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022 (arXiv:2205.10536)"
    defaults = {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}
    positive = ("temperature",)
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        inter, intra = losses.dist_terms(batch.student_logits, batch.teacher_logits,
                                         temperature=self.hp["temperature"])
        return {"dist_inter": self.hp["beta"] * inter, "dist_intra": self.hp["gamma"] * intra}


__all__ = ["DIST"]
