"""NKD: Yang, Zeng, Yuan, Li, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach
with Normalized Loss and Customized Soft Labels", ICCV 2023 (arXiv:2303.13005).

The teacher-weighted log-likelihood of the target class plus the cross-entropy of the normalised non-target
distributions. Defaults from the authors' github.com/yzd-v/cls_KD (branch 1.0,
`configs/distillers/cifar100/res34_distill_res18_cifar.py`: `NKDLoss` temp 3, gamma 3.5;
`mmcls/models/dis_losses/nkd.py`). Loss, keys and defaults: docs/methods.md#nkd.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class NKD(Method):
    """Yang et al. 2023: CE + weight·(L_target + γ·L_non-target), T on the non-target term only.

    cls_KD CIFAR-100 config: T 3, γ 3.5, CE 1, weight 1 (ImageNet: T 1, γ 1.5).
    """

    name = "nkd"
    paper = ("Yang et al. From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with "
             "Normalized Loss and Customized Soft Labels. ICCV 2023 (arXiv:2303.13005)")
    defaults = {"weight": 1.0, "temperature": 3.0, "gamma": 3.5}
    positive = ("temperature",)
    ce_weight = 1.0

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.hp["gamma"] < 0:
            raise KdlabError(f"method.nkd.gamma must be >= 0, got {self.hp['gamma']}; the authors use 3.5 on CIFAR-100")

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        target_term, non_target = losses.nkd_terms(batch.student_logits, batch.teacher_logits, batch.targets,
                                                   temperature=self.hp["temperature"])
        return {"nkd_target": target_term, "nkd_nontarget": self.hp["gamma"] * non_target}


__all__ = ["NKD"]
