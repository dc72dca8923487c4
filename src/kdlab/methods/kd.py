"""KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop
(arXiv:1503.02531).

CIFAR recipe of github.com/HobbitLong/RepDistiller (`distiller_zoo/KD.py`, `-r 0.1 -a 0.9 --kd_T 4`) and
github.com/megvii-research/mdistiller (`mdistiller/distillers/KD.py`). Loss, keys and defaults:
docs/methods.md#kd.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class KD(Method):
    """Hinton et al. 2015: T²·KL(σ_T(z_t) ‖ σ_T(z_s)). CIFAR recipe CE 0.1 / KD 0.9, T 4 (RepDistiller,
    mdistiller). `standardize=true` applies logit standardisation (Sun et al. 2024) first."""

    name = "kd"
    paper = "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. NIPS-W 2014 (arXiv:1503.02531)"
    defaults = {"weight": 0.9, "temperature": 4.0, "standardize": False}
    positive = ("temperature",)
    ce_weight = 0.1

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = batch.student_logits, batch.teacher_logits
        if self.hp["standardize"]:
            s, t = losses.logit_standardize(s), losses.logit_standardize(t)
        return {"kd": losses.kd(s, t, temperature=self.hp["temperature"])}


__all__ = ["KD"]
