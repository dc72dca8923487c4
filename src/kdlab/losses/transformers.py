"""Losses for transformer students and heterogeneous pairs: DeiT's distillation-token loss and OFA-KD's loss.

* ``deit``: Touvron et al., "Training data-efficient image transformers & distillation through attention",
  ICML 2021 (arXiv:2012.12877); github.com/facebookresearch/deit ``losses.py`` (``DistillationLoss``).
  docs/methods.md#deit.
* ``ofa``: Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
  Distillation", NeurIPS 2023; github.com/Hao840/OFAKD ``distillers/ofa.py``
  (``ofa_loss``). docs/methods.md#ofa.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.logits import _check_pair, _check_target, _check_temperature, _f32

__all__ = ["deit", "ofa"]

DEIT_MODES = ("hard", "soft")
DEIT_REDUCTIONS = ("mean", "batchmean")


def deit(distill_logits: Tensor, teacher_logits: Tensor, mode: str = "hard", temperature: float = 1.0,
         reduction: str = "mean") -> Tensor:
    """The distillation-token term of DeiT, unweighted (the method applies α; CE on the class head is apart).

    hard: cross-entropy of the distillation head's logits against the teacher's argmax class,
    mean over the batch. soft: τ²·KL(σ_τ(z_t) ‖ σ_τ(z_dist)) summed over the batch and the classes and divided by
    B·K (``reduction='mean'``: the official code's ``kl_div(..., reduction='sum') / outputs_kd.numel()``, which
    the maintainers kept in facebookresearch/deit issue #61) or by B (``'batchmean'``, as ``kdlab.losses.kd``).
    The teacher logits are detached.
    """
    _check_pair("distill_logits", distill_logits, "teacher_logits", teacher_logits)
    if mode not in DEIT_MODES:
        raise ValueError(f"mode must be one of {', '.join(DEIT_MODES)}, got {mode!r}")
    teacher = _f32(teacher_logits).detach()
    student = _f32(distill_logits)
    if mode == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    _check_temperature(temperature)
    if reduction not in DEIT_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(DEIT_REDUCTIONS)}, got {reduction!r}")
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    total = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True) * temperature**2
    return total / (student.numel() if reduction == "mean" else student.shape[0])


def ofa(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, eps: float = 1.0,
        temperature: float = 1.0) -> Tensor:
    """OFA-KD's loss for one branch: -(1/B) Σ_b Σ_k [(p_t + e_y)^ε − e_y]_bk · log p_s,bk.

    p = softmax(z/τ) of the student branch and the teacher, e_y the one-hot target. The target class is
    weighted by (1 + p_t,y)^ε − 1, the others by p_t,k^ε; ε = 1 is soft-target cross-entropy (KD without τ²),
    ε > 1 enhances the target. No τ² factor, no renormalisation, as ``ofa_loss`` of github.com/Hao840/OFAKD;
    ``log_softmax`` stands for its ``log(softmax(.))`` (equal, but finite for saturated logits). Detached teacher.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    _check_target(target, student_logits.shape[0], student_logits.shape[1])
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}; use e.g. eps=1.0")
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    p_t = F.softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    mask = F.one_hot(target.long(), student_logits.shape[1]).to(p_t.dtype)
    weight = (p_t + mask).pow(eps) - mask
    return -(weight * log_ps).sum(dim=1).mean()

