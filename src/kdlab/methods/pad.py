"""PAD-L2: Zhang, Lan, Dai, Zeng, Bai, Chang, Wei, "Prime-Aware Adaptive Distillation", ECCV 2020
(arXiv:2008.01458).

No code of the authors is public; this follows the re-implementation of github.com/yoshitomo-matsubara/torchdistill
(`torchdistill/losses/mid_level.py` `PADL2Loss`, `torchdistill/models/wrapper.py` `VarianceBranch4PAD`, and the
two-stage schedule of `configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/`
`{ce_l2,pad_l2}-resnet18_from_resnet34.yaml`).
Loss, keys, schedule and defaults: docs/methods.md#pad.
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


class VarianceBranch(nn.Module):
    """torchdistill's `var_estimator`: Linear(D, D) then BatchNorm1d(D), output used as log σ² (no activation)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.bn = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


@register
class PAD(EmbeddingMethod):
    """PAD-L2 on the pooled embeddings, after an L2 stage: weight·(l2_weight·MSE) then weight·PAD-L2.

    Epochs 1..round(l2_fraction·epochs) train CE + l2_weight·MSE(f_s, f_t) (torchdistill `ce_l2`, 90 of its
    120 epochs: l2_fraction 0.75, l2_weight 15); the rest CE + PAD-L2 with the variance branch (torchdistill
    `pad_l2`, weight 1, eps 1e-6). l2_fraction 0 is PAD-L2 from the first epoch. Equal widths are used as
    they are (the original needs them); our extension maps a student embedding of another width with a
    Linear(D_s, D_t). The variance branch reads the (mapped) student embedding, without a detach.
    """

    name = "pad"
    paper = "Zhang et al. Prime-Aware Adaptive Distillation. ECCV 2020 (arXiv:2008.01458)"
    defaults = {"weight": 1.0, "l2_weight": 15.0, "l2_fraction": 0.75, "eps": 1e-6}
    ce_weight = 1.0

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not 0.0 <= self.hp["l2_fraction"] < 1.0:
            raise KdlabError(f"method.pad.l2_fraction={self.hp['l2_fraction']} must be in [0, 1) (the share of "
                             f"epochs in the L2 stage); use 0.75 (torchdistill) or 0 for PAD-L2 throughout")
        if self.hp["l2_weight"] < 0:
            raise KdlabError(f"method.pad.l2_weight={self.hp['l2_weight']} must be >= 0; use the default 15")
        if self.hp["eps"] < 0:
            raise KdlabError(f"method.pad.eps={self.hp['eps']} must be >= 0; use the default 1e-6")
        self.l2_epochs = 0

    def build(self, ctx: BuildContext) -> None:
        d_s = flat_width(ctx.student_shapes["embedding"], "student tap embedding")
        d_t = flat_width(ctx.teacher_shapes["embedding"], "teacher tap embedding")
        self.connector = nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t)
        self.variance = VarianceBranch(d_t)
        # The L2 stage needs the run's length; without it (DistillationLoss(..., epochs=0)) PAD-L2 runs throughout.
        self.l2_epochs = round(self.hp["l2_fraction"] * ctx.epochs)

    def in_l2_stage(self, epoch: int) -> bool:
        return epoch <= self.l2_epochs

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s = self.connector(batch.student["embedding"].flatten(1))
        t = batch.teacher["embedding"].flatten(1)
        zero = s.new_zeros(())
        if self.in_l2_stage(batch.epoch):
            return {"pad_l2stage": self.hp["l2_weight"] * losses.embedding_l2(s, t), "pad": zero}
        return {"pad_l2stage": zero, "pad": losses.pad_l2(s, t, self.variance(s), eps=self.hp["eps"])}


__all__ = ["PAD", "VarianceBranch"]
