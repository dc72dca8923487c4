"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019 (arXiv:1904.01802).

The paper's Gaussian-RBF correlation, as github.com/AberHu/Knowledge-Distillation-Zoo (`kd_losses/cc.py`), or
the loss of github.com/HobbitLong/RepDistiller (`distiller_zoo/CC.py`, `models/util.py` LinearEmbed) with
`variant=repdistiller`. Loss, keys and defaults: docs/methods.md#cc.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, EmbeddingMethod
from kdlab.methods.stages import flat_width


@register
class CC(EmbeddingMethod):
    """Correlation congruence (Peng et al., ICCV 2019) on 128-d linear embeddings of the pooled features of
    both networks; both heads are trainable, as in RepDistiller (`LinearEmbed`).

    `variant='paper'` (default): the paper's Gaussian-RBF correlation matrix (order-P Taylor expansion on
    L2-normalised embeddings, γ 0.4, P 2), MSE between the B×B matrices (AberHu's form); the default because
    it is the loss the paper defines, whereas RepDistiller's shipped loss couples consecutive samples only.
    Its default weight is 100 (AberHu, CIFAR-10; the paper's value is not verified). `variant='repdistiller'`:
    mean_i Σ_d |Δ_i,d|·|Δ_i+1,d| with default weight 0.02 (RepDistiller `-b 0.02`). An explicit `weight`
    overrides the variant's. CE 1. A trainable teacher head lets both heads drift towards a constant
    output; keep the weight moderate.
    """

    name = "cc"
    paper = "Peng et al. Correlation Congruence for Knowledge Distillation. ICCV 2019 (arXiv:1904.01802)"
    defaults = {"weight": 100.0, "variant": "paper", "gamma": 0.4, "order": 2, "feat_dim": 128}
    variant_weights = {"paper": 100.0, "repdistiller": 0.02}
    ce_weight = 1.0

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        variant = self.hp["variant"]
        if variant not in self.variant_weights:
            raise KdlabError(f"method.cc.variant must be one of {', '.join(self.variant_weights)}, got {variant!r}")
        if "weight" not in hparams:
            self.hp["weight"] = self.variant_weights[variant]
        if self.hp["feat_dim"] < 1 or self.hp["order"] < 0:
            raise KdlabError("method.cc.feat_dim must be >= 1 and method.cc.order >= 0; use 128 and 2")

    def build(self, ctx: BuildContext) -> None:
        dim = self.hp["feat_dim"]
        self.embed_student = nn.Linear(flat_width(ctx.student_shapes["embedding"], "student embedding"), dim)
        self.embed_teacher = nn.Linear(flat_width(ctx.teacher_shapes["embedding"], "teacher embedding"), dim)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s = self.embed_student(batch.student["embedding"].flatten(1))
        t = self.embed_teacher(batch.teacher["embedding"].flatten(1))
        return {"cc": losses.cc(s, t, variant=self.hp["variant"], gamma=self.hp["gamma"], order=self.hp["order"])}


__all__ = ["CC"]
