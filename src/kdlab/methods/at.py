"""AT: Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
Neural Networks via Attention Transfer", ICLR 2017 (arXiv:1612.03928).

The code form of the authors' github.com/szagoruyko/attention-transfer (`utils.py` `at`, `at_loss`), with
the weight of github.com/HobbitLong/RepDistiller (`-b 1000`). Loss, keys and defaults: docs/methods.md#at.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch
from kdlab.methods.stages import StageMethod


@register
class AT(StageMethod):
    """Attention transfer, code form: Σ_stages mean (q_s - q_t)² over matched f1..fN.

    No connector (channel-agnostic; the larger map is pooled). Defaults β = 1000, p = 2 (official README,
    RepDistiller `-b 1000`, mdistiller `FEAT_WEIGHT 1000`, `AT.P 2`), CE 1.
    """

    name = "at"
    paper = "Zagoruyko, Komodakis. Paying More Attention to Attention. ICLR 2017 (arXiv:1612.03928)"
    defaults = {"weight": 1000.0, "p": 2.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        return {"at": losses.at(s, t, p=self.hp["p"])}


__all__ = ["AT"]
