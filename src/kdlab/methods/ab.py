"""AB: Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019 (arXiv:1811.03233).

An init stage on the alternative L2 loss, as the authors' github.com/bhheo/AB_distillation
(`cifar10_AB_distillation.py`, `models/distillation_module.py`) and github.com/HobbitLong/RepDistiller
(`distiller_zoo/AB.py`, `helper/pretrain.py`), then CE (RepDistiller) or KD (the authors' CIFAR-10 script).
Loss, keys and defaults: docs/methods.md#ab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.connectors import ConvConnector, resize_to
from kdlab.methods.stages import matched_stages, shape3


class _Resize(nn.Module):
    """Parameter-free connector for equal channel counts: only the spatial size is adapted."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(int(v) for v in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.size)


@register
class AB(Method):
    """Activation-boundary distillation (Heo et al., AAAI 2019).

    Init stage: the student and per-stage connectors are trained on the alternative-L2 loss between
    connector(student pre-ReLU stage) and the teacher's pre-ReLU stage at the matched stages, stage
    weights ¼, ½, 1 (deepest 1), summed and divided by B inside `kdlab.losses.ab`, times `init_weight`
    3/1000 (official and RepDistiller), margin 1. Connector: 1x1 conv (no bias) + BN, He-normal init,
    identity when the channels match (official), resized to the teacher's map if the sizes differ.
    Main phase (`main`): 'ce' (default, RepDistiller: CE only, connectors unused, `-b` has no effect) or
    'kd' (official CIFAR-10 script: `weight`·KL(σ_T(z_t) ‖ σ_T(z_s)) batch-mean with T = 3 and no T², CE
    weight 0). The teacher stays in eval mode in both stages (RepDistiller; the official init runs it in
    train mode).
    """

    name = "ab"
    paper = ("Heo et al. Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons. "
             "AAAI 2019 (arXiv:1811.03233)")
    defaults = {"weight": 1.0, "init_weight": 3e-3, "margin": 1.0, "main": "ce", "temperature": 3.0}
    positive = ("temperature",)
    ce_weight = 1.0
    has_init_stage = True
    mains = ("ce", "kd")

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hp["main"] not in self.mains:
            raise KdlabError(f"method.ab.main must be 'ce' (RepDistiller) or 'kd' (official), got {self.hp['main']!r}")
        self.ce_weight = 0.0 if self.hp["main"] == "kd" else 1.0  # the official KD stage has no CE term

    def needs_teacher_logits(self) -> bool:
        return self.hp["main"] == "kd"

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_stages, self.teacher_stages = matched_stages(student_points, teacher_points, pre_teacher=True,
                                                                  pre_student=True)
        return list(self.student_stages), list(self.teacher_stages)

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_stages, self.teacher_stages, strict=True):
            s_shape = shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            t_shape = shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")
            same = s_shape[0] == t_shape[0]
            self.connectors.append(_Resize(t_shape[1:]) if same else ConvConnector(s_shape, t_shape))

    def connected(self, batch: DistillBatch) -> list[torch.Tensor]:
        return [conn(batch.student[n]) for conn, n in zip(self.connectors, self.student_stages, strict=True)]

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        t = [batch.teacher[n] for n in self.teacher_stages]
        return {"ab": self.hp["init_weight"] * losses.ab(self.connected(batch), t, margin=self.hp["margin"])}

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if self.hp["main"] == "ce":
            return {}
        temperature = self.hp["temperature"]
        kl = losses.kd(batch.student_logits, batch.teacher_logits, temperature=temperature) / temperature**2
        return {"ab_kd": kl}


__all__ = ["AB"]
