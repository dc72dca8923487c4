"""PKT: Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018
(arXiv:1803.10837).

Cosine-similarity conditional distributions of the authors' github.com/passalis/probabilistic_kt
(`nn/pkt.py`), weight as github.com/HobbitLong/RepDistiller (`distiller_zoo/PKT.py`, `-b 30000`). Loss, keys
and defaults: docs/methods.md#pkt.
"""

from __future__ import annotations

import torch

from kdlab import losses
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, EmbeddingMethod


@register
class PKT(EmbeddingMethod):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): KL between the cosine-similarity
    conditional distributions of the pooled embeddings, mean over B² entries.

    No connector (widths may differ). Defaults: weight 30000 (RepDistiller `-b 30000`, mdistiller
    `PKT.LOSS.FEAT_WEIGHT 30000`; large because of the 1/B² mean), CE 1.
    """

    name = "pkt"
    paper = ("Passalis, Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer. ECCV 2018 "
             "(arXiv:1803.10837)")
    defaults = {"weight": 30000.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"pkt": losses.pkt(batch.student["embedding"], batch.teacher["embedding"])}


__all__ = ["PKT"]
