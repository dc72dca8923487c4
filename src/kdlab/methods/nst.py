"""NST: Huang, Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv:1707.01219,
2017.

Polynomial-kernel MMD of the authors' github.com/TuSimple/neuron-selectivity-transfer (`symbol/transfer.py`,
`kt_weight 50`) and github.com/HobbitLong/RepDistiller (`distiller_zoo/NST.py`). Loss, keys and defaults:
docs/methods.md#nst.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch
from kdlab.methods.stages import StageMethod


@register
class NST(StageMethod):
    """Neuron selectivity transfer: polynomial-kernel MMD² (d 2, c 0) over matched f1..fN.

    No connector (channel-agnostic). Defaults λ = 50 (RepDistiller `-b 50`, mdistiller `FEAT_WEIGHT 50`,
    official `kt_weight 50`), CE 1.
    """

    name = "nst"
    paper = ("Huang, Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. "
             "arXiv:1707.01219, 2017")
    defaults = {"weight": 50.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        return {"nst": losses.nst(s, t)}


__all__ = ["NST"]
