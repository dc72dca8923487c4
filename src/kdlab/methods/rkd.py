"""RKD: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068).

Distance and angle losses of the authors' github.com/lenscloth/RKD (`metric/loss.py`) on the pooled
embeddings, weights as github.com/HobbitLong/RepDistiller (`distiller_zoo/RKD.py`, `RKDLoss(25, 50)`).
Loss, keys and defaults: docs/methods.md#rkd.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, EmbeddingMethod


@register
class RKD(EmbeddingMethod):
    """Relational KD (Park et al., CVPR 2019): distance_weight·L_D + angle_weight·L_A on the pooled
    embeddings (not L2-normalised, as RepDistiller/mdistiller; the TF benchmark normalises).

    Defaults: weight 1 with distance 25 / angle 50 (RepDistiller `RKDLoss(25, 50)` with `-b 1`, mdistiller
    `DISTANCE_WEIGHT 25`, `ANGLE_WEIGHT 50`, `FEAT_WEIGHT 1`), CE 1. The two terms are reported apart.
    """

    name = "rkd"
    paper = "Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019 (arXiv:1904.05068)"
    defaults = {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = batch.student["embedding"], batch.teacher["embedding"]
        terms = {}
        if self.hp["distance_weight"]:
            terms["rkd_distance"] = self.hp["distance_weight"] * losses.rkd_distance(s, t)
        if self.hp["angle_weight"]:
            terms["rkd_angle"] = self.hp["angle_weight"] * losses.rkd_angle(s, t)
        return terms


__all__ = ["RKD"]
