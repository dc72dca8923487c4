"""Distillation objectives built from methods: DistillationLoss (one or several teachers), the teacher-output
cache, and the mutual-learning cohort."""

from kdlab.distillation.loss import DistillationLoss, mix_weights

__all__ = ["DistillationLoss", "mix_weights"]
