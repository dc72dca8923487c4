"""The confidence of Tf-KD's virtual teacher and the temperature that calibrates it.

Tf-KD's virtual teacher (Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing
Regularization") distills q = softmax(p_d / τ) with p_d = a on the label and b = (1 - a)/(K - 1) elsewhere,
so its confidence on the label is one number per (K, a, τ):

    q_y = 1 / (1 + (K - 1)·exp(-(a - b)/τ))

Solving q_y = A for τ (a signal is calibrated when its confidence equals its accuracy) gives

    τ = (a - b) / log((K - 1)·A / (1 - A)),    valid for 1/K < A < 1 and a > 1/K.

kdlab.experiments.calibration explains the study built on these formulas.
"""

from __future__ import annotations

import math


def virtual_teacher_confidence(num_classes: int, correct_prob: float = 0.99, temperature: float = 20.0) -> float:
    """q_y, the probability Tf-KD's virtual teacher puts on the label (the same for every sample)."""
    other = (1.0 - correct_prob) / (num_classes - 1)
    exponent = min(-(correct_prob - other) / temperature, 700.0)  # exp overflows beyond ~709
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(exponent))


def calibrated_temperature(num_classes: int, target_accuracy: float, correct_prob: float = 0.99) -> float:
    """The τ at which the virtual teacher's confidence q_y equals `target_accuracy` (see the module docstring)."""
    if num_classes < 2:
        raise ValueError(f"a virtual teacher needs at least 2 classes, got {num_classes}")
    chance = 1.0 / num_classes
    if not chance < target_accuracy < 1.0:
        raise ValueError(f"target_accuracy={target_accuracy} must lie between chance ({chance:.3g} for {num_classes} "
                         f"classes) and 1")
    other = (1.0 - correct_prob) / (num_classes - 1)
    if correct_prob <= other:
        raise ValueError(f"correct_prob={correct_prob} must exceed 1/{num_classes} for the virtual teacher to "
                         f"favour the label")
    return (correct_prob - other) / math.log((num_classes - 1) * target_accuracy / (1.0 - target_accuracy))
