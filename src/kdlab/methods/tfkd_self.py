"""Tf-KD self-training: Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge Distillation via Label Smoothing
Regularization", CVPR 2020 (arXiv:1909.11723).

The teacher is a trained copy of the student's architecture. Loss and defaults from the authors'
github.com/yuanli2333/Teacher-free-Knowledge-Distillation (`my_loss_function.py` `loss_kd_self`,
`experiments/` params.json). Loss, keys and defaults: docs/methods.md#tfkd_self.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class TfKDSelf(Method):
    """Tf-KD self-training (Yuan et al. 2020): the teacher is a trained copy of the student's architecture;
    (1−α)·CE + α·m·T²·KL with PyTorch's 'mean' reduction (÷B·K), as the authors' code. Defaults are the
    authors' CIFAR-100 ResNet-18 values α 0.95, T 6, m 50 (docs/methods.md#tfkd_self lists others per model)."""

    name = "tfkd_self"
    paper = "Yuan et al. Revisiting Knowledge Distillation via Label Smoothing Regularization. CVPR 2020"
    defaults = {"weight": 0.95, "temperature": 6.0, "multiplier": 50.0}
    positive = ("temperature",)
    ce_weight = 0.05

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"tfkd_self": losses.tfkd_self(batch.student_logits, batch.teacher_logits,
                                              temperature=self.hp["temperature"],
                                              multiplier=self.hp["multiplier"])}


__all__ = ["TfKDSelf"]
