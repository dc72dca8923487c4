"""Logit-standardised KD: Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024
(arXiv:2403.01427).

Defaults from the authors' github.com/sunshangquan/logit-standardization-KD (`tools/train.py`,
`mdistiller/distillers/KD.py`). Loss, keys and defaults: docs/methods.md#lskd.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class LogitStandardizedKD(Method):
    """Sun et al. 2024: KD on per-sample Z-scored logits; official defaults base T 2, KD weight 9, CE 0.1."""

    name = "lskd"
    paper = "Sun et al. Logit Standardization in Knowledge Distillation. CVPR 2024 (arXiv:2403.01427)"
    defaults = {"weight": 9.0, "temperature": 2.0}
    positive = ("temperature",)
    ce_weight = 0.1

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"lskd": losses.logit_standardized_kd(batch.student_logits, batch.teacher_logits,
                                                     temperature=self.hp["temperature"])}


__all__ = ["LogitStandardizedKD"]
