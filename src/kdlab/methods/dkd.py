"""DKD: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv:2203.08679).

Defaults from the authors' github.com/megvii-research/mdistiller (`mdistiller/distillers/DKD.py`,
`mdistiller/engine/cfg.py` `DKD.*`, `configs/cifar100/dkd/`). Loss, keys and defaults: docs/methods.md#dkd.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


@register
class DKD(Method):
    """Zhao et al. 2022: α·TCKD + β·NCKD with a linear warm-up over the first `warmup` epochs.

    mdistiller CIFAR defaults: CE 1, α 1, β 8 (2 for res56→res20 and res110→res32, 6 for the wrn40-2 and
    vgg13 pairs; see configs/cifar100/), T 4, warm-up 20. `standardize=true` gives DKD+LS (Sun et al. 2024,
    who multiply α and β by 9 and use T 2).
    """

    name = "dkd"
    paper = "Zhao et al. Decoupled Knowledge Distillation. CVPR 2022 (arXiv:2203.08679)"
    defaults = {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20,
                "standardize": False}
    positive = ("temperature",)
    ce_weight = 1.0
    epoch_hparams = {"warmup": 240}  # 20 of mdistiller's 240 CIFAR epochs; scaled to the run's length

    def scale(self, epoch: int) -> float:
        return losses.dkd_warmup(epoch, self.hp["warmup"])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = batch.student_logits, batch.teacher_logits
        if self.hp["standardize"]:
            s, t = losses.logit_standardize(s), losses.logit_standardize(t)
        tckd, nckd = losses.dkd_terms(s, t, batch.targets, temperature=self.hp["temperature"])
        return {"dkd_tckd": self.hp["alpha"] * tckd, "dkd_nckd": self.hp["beta"] * nckd}


__all__ = ["DKD"]
