"""Tf-KD with a virtual teacher: Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge Distillation via Label
Smoothing Regularization", CVPR 2020 (arXiv:1909.11723).

No network teacher: the soft targets are the softmax of a smoothed one-hot label, as the authors' code
(github.com/yuanli2333/Teacher-free-Knowledge-Distillation `my_loss_function.py`, `loss_kd_regularization`).
The optional calibrated temperature (`kdlab.losses.calibration`) follows P. Čuk's MSc thesis
(github.com/PiaCuk/distillistic). Loss, keys and defaults: docs/methods.md#tfkd_virtual.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.losses.calibration import calibrated_temperature
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method


@register
class TfKDVirtual(Method):
    """Tf-KD with a virtual teacher (Yuan et al. 2020): KL from softmax(p_d/τ) of a smoothed one-hot
    (correct class a = 0.99); no network teacher. Defaults: the authors' CIFAR-100 ResNet-18 values
    α 0.1, τ 20, m 100, i.e. CE weight 0.9 (docs/methods.md#tfkd_virtual).

    `calibrate=A` (0 = off, the authors' fixed τ) replaces τ by the temperature at which the signal's
    confidence q_y equals the target accuracy A (a better-calibrated signal; kdlab.experiments.calibration).
    """

    name = "tfkd_virtual"
    paper = "Yuan et al. Revisiting Knowledge Distillation via Label Smoothing Regularization. CVPR 2020"
    defaults = {"weight": 0.1, "temperature": 20.0, "multiplier": 100.0, "correct_prob": 0.99, "calibrate": 0.0}
    positive = ("temperature",)
    ce_weight = 0.9
    uses_teacher_logits = False
    needs_teacher = False

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not 0.0 <= self.hp["calibrate"] < 1.0:
            raise KdlabError(f"method.tfkd_virtual.calibrate={self.hp['calibrate']} must be a target accuracy in "
                             f"(1/K, 1), or 0 for the fixed temperature; e.g. calibrate=0.9")
        if not 0.0 <= self.hp["correct_prob"] <= 1.0:
            raise KdlabError(f"method.tfkd_virtual.correct_prob={self.hp['correct_prob']} must be a probability in "
                             f"[0, 1]; the authors use 0.99")

    def build(self, ctx: BuildContext) -> None:
        if ctx.num_classes:
            self.signal_temperature(ctx.num_classes)  # unusable settings fail here, before training

    def check_num_classes(self, num_classes: int) -> None:
        """One-line errors for settings the virtual teacher cannot use with `num_classes` classes."""
        if num_classes < 2:
            raise KdlabError(f"tfkd_virtual needs at least 2 classes, the student has {num_classes}")
        if not self.hp["calibrate"]:
            return
        chance = 1.0 / num_classes
        if not chance < self.hp["calibrate"] < 1.0:
            raise KdlabError(f"method.tfkd_virtual.calibrate={self.hp['calibrate']} is not a target accuracy between "
                             f"chance ({chance:.3g} for {num_classes} classes) and 1; use e.g. calibrate=0.9, or 0 to "
                             f"keep the fixed temperature")
        if self.hp["correct_prob"] <= (1.0 - self.hp["correct_prob"]) / (num_classes - 1):
            raise KdlabError(f"method.tfkd_virtual.correct_prob={self.hp['correct_prob']} must exceed 1/{num_classes} "
                             f"for the virtual teacher to favour the label; the authors use 0.99")

    def signal_temperature(self, num_classes: int) -> float:
        """τ of the virtual teacher: the fixed one, or the one calibrated to the target accuracy."""
        self.check_num_classes(num_classes)
        if not self.hp["calibrate"]:
            return self.hp["temperature"]
        return calibrated_temperature(num_classes, self.hp["calibrate"], self.hp["correct_prob"])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"tfkd_virtual": losses.tfkd_virtual(batch.student_logits, batch.targets,
                                                    correct_prob=self.hp["correct_prob"],
                                                    temperature=self.signal_temperature(batch.student_logits.shape[1]),
                                                    multiplier=self.hp["multiplier"])}


__all__ = ["TfKDVirtual"]
