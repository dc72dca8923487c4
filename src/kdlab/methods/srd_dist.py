"""SRDwithDIST: SRD (Yang et al., ICLR 2021) with DIST's Pearson terms (Huang et al., NeurIPS 2022,
arXiv:2205.10536) in place of the softmax-regression MSE.

As defined in github.com/chitraz/KnowledgeDistillationForModelCompression (`scripts/KD_methods.py`,
``DISTV2``: "do not do softmax"), an MSc project of 2024. Loss, keys and defaults: docs/methods.md#srd_dist.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import DistillBatch
from kdlab.methods.srd import SRD


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
    positive = ("temperature",)

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


__all__ = ["SRDWithDIST"]
