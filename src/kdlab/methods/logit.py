"""Logit-based methods: KD, DKD, DIST, logit-standardised KD, Tf-KD (self and virtual teacher).

Defaults follow ../shared/METHODS.md (§4, §12, §19, §24, §26) and the authors' CIFAR-100 configs.
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
class KD(Method):
    """Hinton et al. 2015: T²·KL(σ_T(z_t) ‖ σ_T(z_s)). CIFAR recipe CE 0.1 / KD 0.9, T 4 (RepDistiller,
    mdistiller). `standardize=true` applies logit standardisation (Sun et al. 2024) first."""

    name = "kd"
    paper = "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. NIPS-W 2014 (arXiv:1503.02531)"
    defaults = {"weight": 0.9, "temperature": 4.0, "standardize": False}
    ce_weight = 0.1

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = batch.student_logits, batch.teacher_logits
        if self.hp["standardize"]:
            s, t = losses.logit_standardize(s), losses.logit_standardize(t)
        return {"kd": losses.kd(s, t, temperature=self.hp["temperature"])}


@register
class LogitStandardizedKD(Method):
    """Sun et al. 2024: KD on per-sample Z-scored logits; official defaults base T 2, KD weight 9, CE 0.1."""

    name = "lskd"
    paper = "Sun et al. Logit Standardization in Knowledge Distillation. CVPR 2024 (arXiv:2403.01427)"
    defaults = {"weight": 9.0, "temperature": 2.0}
    ce_weight = 0.1

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"lskd": losses.logit_standardized_kd(batch.student_logits, batch.teacher_logits,
                                                     temperature=self.hp["temperature"])}


@register
class DKD(Method):
    """Zhao et al. 2022: α·TCKD + β·NCKD with a linear warm-up over the first `warmup` epochs.

    mdistiller CIFAR defaults: CE 1, α 1, β 8 (2 for res56→res20 and res110→res32, 6 for the wrn40-2 and
    vgg13 pairs; see configs/cifar100/), T 4, warm-up 20. `standardize=true` gives DKD+LS (Sun et al. 2024,
    who multiply α and β by 9 and use T 2).
    """

    name = "dkd"
    paper = "Zhao et al. Decoupled Knowledge Distillation. CVPR 2022 (arXiv:2203.08679)"
    defaults = {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20,
                "standardize": False}
    ce_weight = 1.0

    def scale(self, epoch: int) -> float:
        return losses.dkd_warmup(epoch, self.hp["warmup"])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = batch.student_logits, batch.teacher_logits
        if self.hp["standardize"]:
            s, t = losses.logit_standardize(s), losses.logit_standardize(t)
        tckd, nckd = losses.dkd_terms(s, t, batch.targets, temperature=self.hp["temperature"])
        return {"dkd_tckd": self.hp["alpha"] * tckd, "dkd_nckd": self.hp["beta"] * nckd}


@register
class DIST(Method):
    """Huang et al. 2022: β·inter + γ·intra Pearson relations of σ_τ outputs. CIFAR config (dist_cifar.yaml):
    τ 4, outer weight 2, CE 1; ImageNet uses τ 1."""

    name = "dist"
    paper = "Huang et al. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022 (arXiv:2205.10536)"
    defaults = {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        inter, intra = losses.dist_terms(batch.student_logits, batch.teacher_logits,
                                         temperature=self.hp["temperature"])
        return {"dist_inter": self.hp["beta"] * inter, "dist_intra": self.hp["gamma"] * intra}


@register
class TfKDSelf(Method):
    """Tf-KD self-training (Yuan et al. 2020): the teacher is a trained copy of the student's architecture;
    (1−α)·CE + α·m·T²·KL with PyTorch's 'mean' reduction (÷B·K), as the authors' code. Defaults are the
    authors' CIFAR-100 ResNet-18 values α 0.95, T 6, m 50 (METHODS.md §12 lists others per model)."""

    name = "tfkd_self"
    paper = "Yuan et al. Revisiting Knowledge Distillation via Label Smoothing Regularization. CVPR 2020"
    defaults = {"weight": 0.95, "temperature": 6.0, "multiplier": 50.0}
    ce_weight = 0.05

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"tfkd_self": losses.tfkd_self(batch.student_logits, batch.teacher_logits,
                                              temperature=self.hp["temperature"],
                                              multiplier=self.hp["multiplier"])}


@register
class TfKDVirtual(Method):
    """Tf-KD with a virtual teacher (Yuan et al. 2020): KL from softmax(p_d/τ) of a smoothed one-hot
    (correct class a = 0.99); no network teacher. Defaults: the authors' CIFAR-100 ResNet-18 values
    α 0.1, τ 20, m 100, i.e. CE weight 0.9 (METHODS.md §12).

    `calibrate=A` (0 = off, the authors' fixed τ) replaces τ by the temperature at which the signal's
    confidence q_y equals the target accuracy A (seed 002: a better-calibrated signal; kdlab.experiments.calibration).
    """

    name = "tfkd_virtual"
    paper = "Yuan et al. Revisiting Knowledge Distillation via Label Smoothing Regularization. CVPR 2020"
    defaults = {"weight": 0.1, "temperature": 20.0, "multiplier": 100.0, "correct_prob": 0.99, "calibrate": 0.0}
    ce_weight = 0.9
    uses_teacher_logits = False
    needs_teacher = False

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not 0.0 <= self.hp["calibrate"] < 1.0:
            raise KdlabError(f"method.tfkd_virtual.calibrate={self.hp['calibrate']} must be a target accuracy in "
                             f"(1/K, 1), or 0 for the fixed temperature; e.g. calibrate=0.9")

    def build(self, ctx: BuildContext) -> None:
        if ctx.num_classes:
            self.signal_temperature(ctx.num_classes)  # a target below chance fails here, before training

    def signal_temperature(self, num_classes: int) -> float:
        """τ of the virtual teacher: the fixed one, or the one calibrated to the target accuracy."""
        if not self.hp["calibrate"]:
            return self.hp["temperature"]
        return calibrated_temperature(num_classes, self.hp["calibrate"], self.hp["correct_prob"])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"tfkd_virtual": losses.tfkd_virtual(batch.student_logits, batch.targets,
                                                    correct_prob=self.hp["correct_prob"],
                                                    temperature=self.signal_temperature(batch.student_logits.shape[1]),
                                                    multiplier=self.hp["multiplier"])}
