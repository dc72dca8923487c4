"""DeiT: Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, "Training data-efficient image transformers &
distillation through attention", ICML 2021 (arXiv:2012.12877).

A ViT student with a distillation token and a second head: the class head learns from the labels, the
distillation head from the teacher (its argmax for `hard`, its softened distribution for `soft`). As the
authors' github.com/facebookresearch/deit (`losses.py` `DistillationLoss`, `models.py`
`DistilledVisionTransformer`, `main.py` defaults). Loss, keys and defaults: docs/methods.md#deit.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.losses.transformers import DEIT_MODES, DEIT_REDUCTIONS
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method
from kdlab.models.vit import DISTILL_TAP

HEAD = "classifier"


@register
class DeiT(Method):
    """(1-α)·CE(z_cls, y) + α·L_dist(z_dist, z_t), the two heads read through the `classifier` and
    `distill_logits` taps of a distilled ViT (deit_tiny_cifar, timm:deit_*_distilled_*).

    Defaults of the authors' `main.py`: hard distillation (the README's training command), α 0.5, τ 1 (soft
    only), the soft KL divided by B·K (`reduction=mean`). The model's own output, the mean of both heads, is
    what kdlab evaluates (DeiT's inference); cross-entropy on it is off (`ce_weight` 0) because the method
    applies CE to the class head itself.
    """

    name = "deit"
    paper = ("Touvron, Cord, Douze, Massa, Sablayrolles, Jégou. Training data-efficient image transformers & "
             "distillation through attention. ICML 2021 (arXiv:2012.12877)")
    defaults = {"weight": 1.0, "mode": "hard", "alpha": 0.5, "temperature": 1.0, "reduction": "mean"}
    positive = ("temperature",)
    ce_weight = 0.0
    student_tap_names = (HEAD, DISTILL_TAP)

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        hp = self.hp
        if hp["mode"] not in DEIT_MODES:
            raise KdlabError(f"method.deit.mode must be one of {', '.join(DEIT_MODES)}, got {hp['mode']!r}")
        if hp["reduction"] not in DEIT_REDUCTIONS:
            raise KdlabError(f"method.deit.reduction must be one of {', '.join(DEIT_REDUCTIONS)}, got "
                             f"{hp['reduction']!r} (mean: the official B·K division)")
        if not 0 <= hp["alpha"] <= 1:
            raise KdlabError(f"method.deit.alpha must lie in [0, 1], got {hp['alpha']}; the authors use 0.5")

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        if DISTILL_TAP not in student_points or HEAD not in student_points:
            raise KdlabError(f"deit needs a student with a distillation token and head (its '{DISTILL_TAP}' tap), "
                             f"e.g. --student deit_tiny_cifar or timm:deit_tiny_distilled_patch16_224; for other "
                             f"students use kd")
        return [HEAD, DISTILL_TAP], []

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        hp = self.hp
        z_cls, z_dist = batch.student[HEAD], batch.student[DISTILL_TAP]
        dist = losses.deit(z_dist, batch.teacher_logits, mode=hp["mode"], temperature=hp["temperature"],
                           reduction=hp["reduction"])
        return {"deit_ce": (1.0 - hp["alpha"]) * batch.task_loss(z_cls),
                "deit": hp["alpha"] * dist}


__all__ = ["DeiT"]
