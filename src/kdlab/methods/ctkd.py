"""CTKD: Li, Li, Yang, Zhao, Song, Luo, Li, Yang, "Curriculum Temperature for Knowledge Distillation", AAAI 2023
(arXiv:2211.16231).

KD whose temperature is learned adversarially: a temperature module (one global parameter, or a small MLP
giving one temperature per sample) sits behind a gradient reversal, so the same SGD step that lowers the
distillation loss for the student raises it with respect to the temperature; the reversal strength follows a
cosine curriculum from 0 to 1 over the first epochs. The module's parameters are part of the method, so
`DistillationLoss.trainable_parameters()` hands them to the optimizer (with its weight decay, as the authors'
`trainable_list`) and checkpoints keep them. Defaults from github.com/zhengli97/CTKD
(`scripts/run_cifar_distill.sh`, `train_student.py`, `models/temp_global.py`, `distiller_zoo/KD.py`).
Loss, keys and defaults: docs/methods.md#ctkd.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method

MODES = ("global", "instance")


class GlobalTemperature(nn.Module):
    """One learnable value θ (the authors' `Global_T`, initialised to 1); the temperature is a bounded map of it."""

    def __init__(self, init: float):
        super().__init__()
        self.theta = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self.theta


class InstanceTemperature(nn.Module):
    """A 2-layer MLP on the concatenated (detached) teacher and student logits: one value per sample.

    The paper describes the instance-wise module only in words; the authors distribute its code outside the
    repository, so the width (`hidden`) and the detached inputs are kdlab's choices (docs/methods.md#ctkd).
    """

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([teacher_logits.detach(), student_logits.detach()], dim=1)
        return self.mlp(x.to(self.mlp[0].weight.dtype)).squeeze(1)


@register
class CTKD(Method):
    """Li et al. 2023: CE 0.1 + 0.9·T²·KL(σ_T(z_t) ‖ σ_T(z_s)), T = t_min + (t_max - t_min)·sigmoid(GRL_λ(θ)).

    Authors' CIFAR script (KD+CTKD, global T): -r 0.1 -a 0.9, --t_start 1 --t_end 20 (T in (1, 21)),
    θ initialised to 1 (T ≈ 15.6 at the start), cosine curriculum of λ over --decay_loops 10 epochs to 1.
    """

    name = "ctkd"
    paper = "Li et al. Curriculum Temperature for Knowledge Distillation. AAAI 2023 (arXiv:2211.16231)"
    defaults = {"weight": 0.9, "mode": "global", "t_min": 1.0, "t_max": 21.0, "init": 1.0,
                "curriculum_epochs": 10, "max_strength": 1.0, "hidden": 128}
    positive = ("t_min", "hidden")
    ce_weight = 0.1

    def __init__(self, **hparams):
        super().__init__(**hparams)
        hp = self.hp
        if hp["mode"] not in MODES:
            raise KdlabError(f"method.ctkd.mode must be one of {', '.join(MODES)}, got {hp['mode']!r}")
        if not hp["t_max"] > hp["t_min"]:
            raise KdlabError(f"method.ctkd.t_max={hp['t_max']} must exceed t_min={hp['t_min']}; the authors' range "
                             f"is t_min 1, t_max 21")
        if hp["curriculum_epochs"] < 0:
            raise KdlabError(f"method.ctkd.curriculum_epochs must be >= 0, got {hp['curriculum_epochs']}; "
                             f"the authors use 10 (0: full reversal from the first epoch)")
        if hp["max_strength"] < 0:
            raise KdlabError(f"method.ctkd.max_strength must be >= 0, got {hp['max_strength']}; the authors use 1")
        self.temperature_module: nn.Module | None = (GlobalTemperature(hp["init"]) if hp["mode"] == "global"
                                                     else None)

    def build(self, ctx: BuildContext) -> None:
        if self.hp["mode"] != "instance" or self.temperature_module is not None:
            return
        classes = ctx.num_classes or _classifier_outputs(ctx)
        if not classes:
            raise KdlabError("method.ctkd.mode=instance needs the number of classes to size its MLP; pass "
                             "num_classes=K (or input_shape=(C, H, W)) to DistillationLoss")
        self.temperature_module = InstanceTemperature(int(classes), self.hp["hidden"])
        if ctx.student is not None:
            self.temperature_module.to(next(ctx.student.parameters()).device)

    def strength(self, epoch: int) -> float:
        """The reversal strength λ of `epoch` (1-indexed)."""
        return losses.ctkd_strength(epoch, self.hp["curriculum_epochs"], self.hp["max_strength"])

    def temperature(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, epoch: int) -> torch.Tensor:
        """The temperature of this step (one value, or one per sample), reversed gradient attached."""
        if self.temperature_module is None:
            raise KdlabError("method ctkd (mode=instance) was used before build(); create it through "
                             "kdlab.DistillationLoss")
        raw = losses.reverse_gradient(self.temperature_module(student_logits, teacher_logits), self.strength(epoch))
        t_min, t_max = self.hp["t_min"], self.hp["t_max"]
        return t_min + (t_max - t_min) * torch.sigmoid(raw.float())

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        temperature = self.temperature(batch.student_logits, batch.teacher_logits, batch.epoch)
        self.last_temperature = temperature.detach().mean()
        return {"ctkd": losses.ctkd(batch.student_logits, batch.teacher_logits, temperature)}


def _classifier_outputs(ctx: BuildContext) -> int:
    """Output width of the student's `classifier` tap when it is a Linear layer (0 if unknown)."""
    path = ctx.student_points.get("classifier") if ctx.student is not None else None
    if not path:
        return 0
    module = ctx.student.get_submodule(path)
    return int(module.out_features) if isinstance(module, nn.Linear) else 0


__all__ = ["CTKD", "GlobalTemperature", "InstanceTemperature"]
