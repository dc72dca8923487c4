"""Logit-based distillation losses: KD, DKD, DIST, logit-standardized KD, Tf-KD, SRD, DML, multi-teacher, NKD,
WSLD, SDD (scale-decoupled, on region logits), CTKD (learned temperature, gradient reversal) and MLKD (instance,
class and batch levels at several temperatures).

Stateless functions in the style of ``torch.nn.functional``: tensors first, hyperparameters as keywords with
the paper's / authors' defaults. Each returns a scalar tensor holding the *unweighted* loss as defined by its
method; outer weights (e.g. CE 0.1 / KD 0.9) are applied by the caller and are listed in each docstring.
Definitions, defaults and sources: docs/methods.md (the section of each method is cited per function).

Conventions shared by every function here:

* Computation runs in at least float32 (half/bfloat16 inputs are up-cast), so the losses stay finite under
  autocast and low-precision training; log-probabilities come from ``log_softmax``, never ``log(softmax)``.
  Only elementwise ops and reductions are used, which autocast never down-casts.
* Teacher-side tensors (teacher logits, teacher probabilities, teacher features, other DML peers) are
  detached: they are targets, not parameters. The one tensor that carries gradient into a frozen teacher
  module is SRD's ``cross_logits`` (docs/methods.md#srd), which is never detached.
* "Batch-mean" = sum over classes, average over the batch (KL ``'batchmean'``); Tf-KD deliberately uses the
  ``'mean'`` reduction (divide by B*K) instead (docs/methods.md#tfkd_self).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kd",
    "kd_from_probs",
    "dkd",
    "dkd_terms",
    "dkd_warmup",
    "pearson",
    "dist",
    "dist_terms",
    "logit_standardize",
    "logit_standardized_kd",
    "tfkd_self",
    "virtual_teacher_probs",
    "tfkd_virtual",
    "srd",
    "srd_terms",
    "srd_dist",
    "dml",
    "dml_ensemble",
    "average_teacher_probs",
    "nkd",
    "nkd_terms",
    "wsld",
    "wsld_weights",
    "sdd",
    "sdd_pool",
    "sdd_weights",
    "ctkd",
    "ctkd_strength",
    "reverse_gradient",
    "class_correlation",
    "batch_correlation",
    "mlkd_masks",
    "mlkd_terms",
    "MLKD_TEMPERATURES",
]


# ----------------------------------------------------------------------------------------------------------
# helpers


def _f32(x: Tensor) -> Tensor:
    """Up-cast half/bfloat16 (and integer) tensors to float32; keep float32/float64 as they are."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def _check_logits(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; pass the model's output logits"
        )
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (batch, num_classes) with batch >= 1 and num_classes >= 2, got "
            f"{tuple(x.shape)}; flatten extra dimensions before calling the loss"
        )


def _check_pair(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    _check_logits(a_name, a)
    _check_logits(b_name, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape; "
            "student and teacher must be built for the same number of classes and see the same batch"
        )


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}; use e.g. {name}=4.0")


def _check_target(target: Tensor, batch: int | None, num_classes: int) -> None:
    """Integer class indices of shape (batch,) in [0, num_classes); ``batch=None`` accepts any length."""
    if not isinstance(target, Tensor) or target.dtype not in (torch.int64, torch.int32, torch.int16,
                                                                torch.int8, torch.uint8):
        kind = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be an integer class-index tensor, got {kind}; pass the int64 labels")
    if target.dim() != 1 or (batch is not None and target.shape[0] != batch):
        want = f"({batch},) to match the logits' batch" if batch is not None else "(batch,)"
        raise ValueError(
            f"target must have shape {want}, got {tuple(target.shape)}; "
            "pass class indices, not one-hot vectors"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"target values must lie in [0, {num_classes - 1}], got range [{int(target.min())}, "
            f"{int(target.max())}]; check num_classes of the model and the dataset"
        )


def _kl_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) from log-probabilities; rows where p has exact zeros contribute 0 there."""
    p = log_p.exp()
    diff = log_p - log_q
    # 0 * (-inf - finite) must count as 0, not NaN
    return torch.where(p > 0, p * diff, torch.zeros_like(diff)).sum(dim=1)


def _kl_probs(p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) with p given as probabilities (xlogy makes 0 log 0 = 0)."""
    return (torch.special.xlogy(p, p) - p * log_q).sum(dim=1)


# ----------------------------------------------------------------------------------------------------------
# KD (Hinton et al. 2014), docs/methods.md#kd


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: T^2 * batch-mean KL(softmax(z_t/T) || softmax(z_s/T)).

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531); docs/methods.md#kd.
    The T^2 factor keeps the soft-target gradient scale independent of T. Default outer weights
    (RepDistiller / mdistiller CIFAR): 0.1 * CE + 0.9 * kd with T = 4. The teacher logits are detached.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    log_pt = F.log_softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    return _kl_logs(log_pt, log_ps).mean() * temperature**2


def kd_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 4.0) -> Tensor:
    """KD against a given teacher distribution: T^2 * batch-mean KL(teacher_probs || softmax(z_s/T)).

    ``teacher_probs`` must already be temperature-scaled (e.g. ``average_teacher_probs(..., temperature=T)``
    for multi-teacher KD, or an average of peers' probabilities for DML_e). Same loss and outer weights as
    :func:`kd` (docs/methods.md#kd); ``kd_from_probs(s, softmax(t / T), T) == kd(s, t, T)``. Detached target.
    """
    _check_pair("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_temperature(temperature)
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    return _kl_probs(_f32(teacher_probs).detach(), log_ps).mean() * temperature**2


def average_teacher_probs(
    teacher_logits: Sequence[Tensor], weights: Sequence[float] | None = None, temperature: float = 1.0
) -> Tensor:
    """Weighted average of the teachers' softmax(z/T) (B, K), for multi-teacher KD via :func:`kd_from_probs`.

    Weights are normalised to sum to 1 (default: equal). Output is detached and at least float32.
    """
    if isinstance(teacher_logits, Tensor) or len(teacher_logits) == 0:
        raise ValueError(
            "teacher_logits must be a non-empty list of (batch, num_classes) tensors, one per teacher"
        )
    _check_temperature(temperature)
    for i, t in enumerate(teacher_logits):
        _check_pair("teacher_logits[0]", teacher_logits[0], f"teacher_logits[{i}]", t)
    n = len(teacher_logits)
    if weights is None:
        w = [1.0 / n] * n
    else:
        w = [float(x) for x in weights]
        if len(w) != n:
            raise ValueError(f"got {len(w)} teacher weights for {n} teachers; pass one weight per teacher")
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"teacher weights must be >= 0 with a positive sum, got {w}")
        total = sum(w)
        w = [x / total for x in w]
    out = None
    for wi, t in zip(w, teacher_logits, strict=True):
        p = wi * F.softmax(_f32(t).detach() / temperature, dim=1)
        out = p if out is None else out + p
    assert out is not None
    return out


# ----------------------------------------------------------------------------------------------------------
# DKD (Zhao et al. 2022), docs/methods.md#dkd


def _non_target_columns(target: Tensor, num_classes: int, device: torch.device) -> Tensor:
    """(B, K-1) column indices of each row's non-target classes, in class order (static shape)."""
    y = target.to(device).long().unsqueeze(1)
    cols = torch.arange(num_classes - 1, device=device).unsqueeze(0)
    return cols + (cols >= y).long()


def _check_target_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float,
                        reduction: str) -> tuple[int, int]:
    """(B, K) of a pair of (B, K) logits with their targets, for the losses split into target/non-target terms."""
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    b, k = student_logits.shape
    _check_target(target, b, k)
    if reduction not in ("batchmean", "none"):
        raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")
    return b, k


def _reduced(first: Tensor, second: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    """Per-sample terms, or their batch means."""
    return (first.mean(), second.mean()) if reduction == "batchmean" else (first, second)


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> tuple[Tensor, Tensor]:
    """DKD's (TCKD, NCKD), each T^2 * KL, batch-mean (``reduction="batchmean"``) or per sample (``"none"``).

    Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022, arXiv:2203.08679); docs/methods.md#dkd.
    TCKD = KL(b_t || b_s) with b = [p_y, 1 - p_y], p = softmax(z/T); NCKD = KL(p̂_t || p̂_s) with
    p̂ = softmax over the non-target classes of z/T. Per sample, KL(p_t||p_s) = TCKD + (1 - p_t_y) * NCKD.

    Numerics (deviation from the official code, same values in normal ranges): the binary log-probabilities
    are computed exactly as log p_y = lse_y - lse_all and log(1 - p_y) = lse_{k != y} - lse_all
    (lse = logsumexp of z/T), so they can never be log(0) -> no -inf/NaN under extreme logits or fp16/bf16
    inputs; and the non-target softmax drops the target column of z/T instead of subtracting 1000 from it
    (the official mask, applied after dividing by T, equals this up to e^-1000 but fails once |z/T| > ~1000).
    """
    b, k = _check_target_terms(student_logits, teacher_logits, target, temperature, reduction)
    zs = _f32(student_logits) / temperature
    zt = _f32(teacher_logits).detach() / temperature
    y = target.to(zs.device).long().unsqueeze(1)  # (B, 1)
    other = _non_target_columns(target, k, zs.device)  # (B, K-1), static shape, no boolean indexing

    def binary_and_nontarget(z: Tensor) -> tuple[Tensor, Tensor]:
        lse_all = torch.logsumexp(z, dim=1)
        z_target = z.gather(1, y).squeeze(1)  # (B,)
        z_other = z.gather(1, other)  # (B, K-1)
        lse_other = torch.logsumexp(z_other, dim=1)
        log_b = torch.stack([z_target - lse_all, lse_other - lse_all], dim=1)  # (B, 2)
        log_hat = F.log_softmax(z_other, dim=1)  # (B, K-1)
        return log_b, log_hat

    log_bs, log_hat_s = binary_and_nontarget(zs)
    log_bt, log_hat_t = binary_and_nontarget(zt)
    tckd = _kl_logs(log_bt, log_bs) * temperature**2
    nckd = _kl_logs(log_hat_t, log_hat_s) * temperature**2
    return _reduced(tckd, nckd, reduction)


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD (see :func:`dkd_terms`); docs/methods.md#dkd.

    Defaults are mdistiller's CIFAR-100 ones (official): alpha 1, beta 8 (2 for res56->res20 and
    res110->res32, 6 for the wrn40-2 / vgg13 pairs), T 4, CE weight 1. The method multiplies this loss by
    the warm-up factor :func:`dkd_warmup` (``min(epoch / 20, 1)``), which is *not* applied here.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature=temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int | float, warmup: int | float = 20) -> float:
    """DKD/ReviewKD linear warm-up factor min(epoch / warmup, 1), 1-indexed epoch (docs/methods.md#dkd, #reviewkd).

    ``warmup <= 0`` disables the warm-up (factor 1).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (1-indexed training epochs), got {epoch}")
    if warmup <= 0:
        return 1.0
    return float(min(epoch / warmup, 1.0))


# ----------------------------------------------------------------------------------------------------------
# DIST (Huang et al. 2022), docs/methods.md#dist


def pearson(x: Tensor, y: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of x and y along ``dim``: <x-x̄, y-ȳ> / (|x-x̄| |y-ȳ| + eps) (DIST's ρ, docs/methods.md#dist).

    Finite gradient also where a centred vector is zero (a batch of 1, identical rows): the norms come
    from ``vector_norm``, whose backward is 0 at the origin, as in the official DIST code (``Tensor.norm``;
    github.com/hunto/DIST_KD); ``sqrt(sum(x²))`` would give inf·0 = NaN there.
    """
    if x.shape != y.shape:
        raise ValueError(f"pearson needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = _f32(x)
    y = _f32(y)
    xc = x - x.mean(dim=dim, keepdim=True)
    yc = y - y.mean(dim=dim, keepdim=True)
    num = (xc * yc).sum(dim=dim)
    den = torch.linalg.vector_norm(xc, dim=dim) * torch.linalg.vector_norm(yc, dim=dim) + eps
    return num / den


def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """DIST's (L_inter, L_intra), each including tau^2, on Y = softmax(z / tau); docs/methods.md#dist.

    L_inter = tau^2 (1 - mean_i ρ(Y^s_i,:, Y^t_i,:)) correlates each sample's class vector (rows);
    L_intra = tau^2 (1 - mean_c ρ(Y^s_:,c, Y^t_:,c)) correlates each class across the batch (columns).
    With a batch of 1 the column correlation is 0 by the eps convention, so L_intra = tau^2 (no gradient).
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    ys = F.softmax(_f32(student_logits) / temperature, dim=1)
    yt = F.softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    t2 = temperature**2
    inter = t2 * (1.0 - pearson(ys, yt, dim=1).mean())
    intra = t2 * (1.0 - pearson(ys, yt, dim=0).mean())
    return inter, intra


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST: beta * L_inter + gamma * L_intra (tau^2 inside; see :func:`dist_terms`).

    Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022, arXiv:2205.10536);
    docs/methods.md#dist. The loss-module defaults are beta = gamma = 1, tau = 1 (ImageNet); the official CIFAR
    config uses tau = 4 with outer weights CE 1 and ``kd_loss_weight`` 2 (effective beta = gamma = 2).
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature=temperature)
    return beta * inter + gamma * intra


# ----------------------------------------------------------------------------------------------------------
# Logit standardization (Sun et al. 2024), docs/methods.md#lskd


def logit_standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample Z-score over classes: (z - mean) / (std + eps), unbiased std (K - 1) as the official code.

    docs/methods.md#lskd.
    """
    _check_logits("logits", logits)
    z = _f32(logits)
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def logit_standardized_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0
) -> Tensor:
    """KD on Z-scored logits: T^2 * batch-mean KL(softmax(Z(z_t)/T) || softmax(Z(z_s)/T)).

    Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024, arXiv:2403.01427);
    docs/methods.md#lskd. The T^2 factor is kept. Official defaults: base T 2, outer weights CE 0.1 / KD 9.
    Do not standardize the logits fed to the CE term.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    return kd(logit_standardize(student_logits), logit_standardize(teacher_logits.detach()),
              temperature=temperature)


# ----------------------------------------------------------------------------------------------------------
# Tf-KD (Yuan et al. 2020), docs/methods.md#tfkd_self, #tfkd_virtual


def tfkd_self(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, multiplier: float = 1.0
) -> Tensor:
    """Tf-KD self-training term: m * T^2 * KLDiv_mean(softmax(z_t/T) || softmax(z_s/T)).

    Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization" (CVPR 2020);
    docs/methods.md#tfkd_self. KLDiv_mean is PyTorch's default ``'mean'`` reduction (sum / (B*K)), kept on purpose
    because the authors' hyperparameters are tied to it. The caller mixes (1 - alpha) * CE + alpha * this;
    CIFAR-100 (alpha, T, m): ResNet18 (0.95, 6, 50), MobileNetV2 (0.95, 20, 1), ShuffleNetV2 (0.95, 20, 1).
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    log_pt = F.log_softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    numel = student_logits.shape[0] * student_logits.shape[1]
    return multiplier * temperature**2 * _kl_logs(log_pt, log_ps).sum() / numel


def virtual_teacher_probs(
    target: Tensor,
    num_classes: int,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Tf-KD virtual teacher q = softmax(p_d / tau), p_d = a on the label and (1 - a)/(K - 1) elsewhere.

    As the authors' code (docs/methods.md#tfkd_virtual): softmax of the smoothed *probability* vector, a = 0.99
    hard-coded there; q is nearly uniform (K=100, tau=20: q_y ≈ 0.0105). Returns (B, K) of ``dtype``, no gradient.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= correct_prob <= 1.0:
        raise ValueError(f"correct_prob must be in [0, 1], got {correct_prob}; the authors use 0.99")
    _check_temperature(temperature)
    _check_target(target, None, num_classes)
    b = target.shape[0]
    pd = torch.full((b, num_classes), (1.0 - correct_prob) / (num_classes - 1), dtype=dtype,
                    device=target.device)
    pd[torch.arange(b, device=target.device), target.long()] = correct_prob
    return F.softmax(pd / temperature, dim=1)


def tfkd_virtual(
    student_logits: Tensor,
    target: Tensor,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    multiplier: float = 1.0,
) -> Tensor:
    """Tf-KD virtual-teacher (reg) term: m * KLDiv_mean(q || softmax(z_s)), q = :func:`virtual_teacher_probs`.

    docs/methods.md#tfkd_virtual: the student is *not* tempered and there is no tau^2 factor (authors' code,
    github.com/yuanli2333/Teacher-free-Knowledge-Distillation/issues/24);
    ``'mean'`` reduction = sum / (B*K). The caller mixes (1 - alpha) * CE + alpha * this; CIFAR-100
    (alpha, tau, m): ResNet18 (0.1, 20, 100), MobileNetV2 (0.95, 40, 1), ShuffleNetV2 (0.95, 10, 1).
    """
    _check_logits("student_logits", student_logits)
    b, k = student_logits.shape
    _check_target(target, b, k)
    zs = _f32(student_logits)
    q = virtual_teacher_probs(target, k, correct_prob=correct_prob, temperature=temperature, dtype=zs.dtype)
    log_ps = F.log_softmax(zs, dim=1)
    return multiplier * _kl_probs(q.to(zs.device), log_ps).sum() / (b * k)


# ----------------------------------------------------------------------------------------------------------
# SRD (Yang et al. 2021) and SRDwithDIST, docs/methods.md#srd, #srd_dist


def _pool(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (2, 4):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be (B, C, H, W) or pooled (B, C), got {shape}")
    x = _f32(x)
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x


def _srd_fm(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    fs = _pool(student_features, "student_features")
    ft = _pool(teacher_features, "teacher_features").detach()
    if fs.shape != ft.shape:
        raise ValueError(
            f"pooled student features {tuple(fs.shape)} do not match pooled teacher features "
            f"{tuple(ft.shape)}; "
            "pass the student features through the SRD connector (1x1 conv to the teacher's channels) first"
        )
    return F.mse_loss(fs, ft)


def srd_terms(
    student_features: Tensor, teacher_features: Tensor, cross_logits: Tensor, teacher_logits: Tensor
) -> tuple[Tensor, Tensor]:
    """SRD's (L_FM, L_SR): MSE of pooled features, MSE of cross-network vs teacher logits.

    Yang, Martinez, Bulat, Tzimiropoulos, "Knowledge Distillation via Softmax Regression Representation
    Learning" (ICLR 2021; "SRD" in arXiv:2205.06701); docs/methods.md#srd.
    ``student_features``: the student's last feature map *after* the connector (1x1 conv + BN + ReLU to the
    teacher's channels), (B, C_t, H, W) or already pooled (B, C_t); 4-D inputs are global-average-pooled.
    ``cross_logits``: the teacher's frozen classifier applied to the pooled transformed student feature,
    computed by the caller with gradient enabled (not detached here). Teacher features/logits are detached.
    L_FM = mean over B*C_t of squared differences; L_SR = mean over B*K.
    """
    _check_pair("cross_logits", cross_logits, "teacher_logits", teacher_logits)
    fm = _srd_fm(student_features, teacher_features)
    sr = F.mse_loss(_f32(cross_logits), _f32(teacher_logits).detach())
    return fm, sr


def srd(
    student_features: Tensor,
    teacher_features: Tensor,
    cross_logits: Tensor,
    teacher_logits: Tensor,
    feature_weight: float = 1.0,
) -> Tensor:
    """SRD loss feature_weight * L_FM + L_SR (see :func:`srd_terms`); docs/methods.md#srd.

    Official totals: SRD_ossl L_CE + 1 * (s * L_FM + L_SR) with s = 1 (``srd``) or 10 (``srdv2``, and for a
    ShuffleV1 student); KD_SRRL ImageNet L_CE + L_FM + 1 * L_SR. No KD term by default.
    """
    fm, sr = srd_terms(student_features, teacher_features, cross_logits, teacher_logits)
    return feature_weight * fm + sr


def srd_dist(
    student_features: Tensor,
    teacher_features: Tensor,
    cross_logits: Tensor,
    teacher_logits: Tensor,
    feature_weight: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    softmax: bool = False,
) -> Tensor:
    """"SRDwithDIST": feature_weight * L_FM + beta * L_inter + gamma * L_intra on the raw logits.

    SRD with the MSE softmax-regression term replaced by DIST's Pearson terms between the cross-network
    logits and the teacher logits, relaxing exact matching to matching relative rankings; as its authors
    define it (github.com/chitraz/KnowledgeDistillationForModelCompression, ``DISTV2`` in
    ``scripts/KD_methods.py``: "do not do softmax"), on the *raw* logits, without temperature or tau^2:
    L_inter = 1 - mean_i ρ(z^c_i,:, z^t_i,:), L_intra = 1 - mean_c ρ(z^c_:,c, z^t_:,c).
    ``softmax=True`` uses :func:`dist` instead (softmax(z / temperature), tau^2 inside, as DIST; Huang et
    al. 2022); ``temperature`` applies only then. The FM term is SRD's pooled-feature MSE (:func:`srd_terms`);
    that repo's own FM on full maps is a deviation not reproduced here.
    """
    _check_pair("cross_logits", cross_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    fm = _srd_fm(student_features, teacher_features)
    if softmax:
        sr = dist(cross_logits, teacher_logits, beta=beta, gamma=gamma, temperature=temperature)
    else:
        if temperature != 1.0:
            raise ValueError(
                f"srd_dist: temperature={temperature} has no effect on raw logits (Pearson is scale-invariant); "
                "set softmax=True to use it, or leave temperature at 1"
            )
        zc = _f32(cross_logits)
        zt = _f32(teacher_logits).detach()
        sr = beta * (1.0 - pearson(zc, zt, dim=1).mean()) + gamma * (1.0 - pearson(zc, zt, dim=0).mean())
    return feature_weight * fm + sr


# ----------------------------------------------------------------------------------------------------------
# DML (Zhang et al. 2018), docs/methods.md#dml


def _check_peers(logits: Sequence[Tensor], index: int) -> int:
    if isinstance(logits, Tensor) or len(logits) < 2:
        raise ValueError(
            "DML needs a list of at least 2 peers' logits, one (batch, num_classes) tensor per peer"
        )
    m = len(logits)
    if not -m <= index < m:
        raise ValueError(f"peer index {index} out of range for {m} peers; use 0..{m - 1}")
    for i, z in enumerate(logits):
        _check_pair("logits[0]", logits[0], f"logits[{i}]", z)
    return index % m


def dml(logits: Sequence[Tensor], index: int, temperature: float = 1.0) -> Tensor:
    """DML mimicry loss of peer ``index``: mean over peers l != index of T^2 * batch-mean KL(p_l || p_index).

    Zhang et al., "Deep Mutual Learning" (CVPR 2018, arXiv:1706.00384); docs/methods.md#dml. The other peers'
    p_l are detached (each peer's optimizer updates only itself); CE is not included (total: CE + 1 * this,
    T = 1). The official TF code sums instead of averaging over peers (same for 2 peers). T^2 follows KD's
    convention and is 1 at the authors' T = 1.
    """
    k = _check_peers(logits, index)
    _check_temperature(temperature)
    others = [kd(logits[k], z, temperature=temperature) for i, z in enumerate(logits) if i != k]
    return torch.stack(others).mean()


def dml_ensemble(logits: Sequence[Tensor], index: int, temperature: float = 1.0) -> Tensor:
    """DML_e: T^2 * batch-mean KL(mean_{l != index} p_l || p_index), the other peers' average as one teacher.

    Its gradient w.r.t. ``logits[index]`` equals that of :func:`dml` (both are T (p_index - mean_l p_l) / B);
    the values are equal for 2 peers, while for more ``dml - dml_ensemble`` = T^2 * batch-mean of
    H(mean_l p_l) - mean_l H(p_l) >= 0 (entropy is concave). From P. Čuk's MSc thesis
    (github.com/PiaCuk/distillistic); docs/methods.md#dml_e.
    Other peers are detached.
    """
    k = _check_peers(logits, index)
    _check_temperature(temperature)
    others = [z for i, z in enumerate(logits) if i != k]
    target = average_teacher_probs(others, temperature=temperature)
    return kd_from_probs(logits[k], target, temperature=temperature)


# ----------------------------------------------------------------------------------------------------------
# helpers of the target / non-target split shared by NKD and SDD (docs/methods.md#nkd, #sdd)


# ----------------------------------------------------------------------------------------------------------
# NKD (Yang et al. 2023), docs/methods.md#nkd


def nkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> tuple[Tensor, Tensor]:
    """NKD's (target term, normalised non-target term) before γ, batch-mean or per sample (``"none"``).

    Yang, Zeng, Yuan, Li, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels" (ICCV 2023, arXiv:2303.13005); docs/methods.md#nkd.
    target term = -p^t_y log p^s_y with p = softmax(z) at temperature 1 (p^t_y a constant);
    non-target term = -T^2 Σ_{k≠y} p̂^t_k log p̂^s_k with p̂ = softmax of z/T over the non-target classes.
    Both are cross-entropies, as in the official code (github.com/yzd-v/cls_KD ``mmcls/models/dis_losses/nkd.py``):
    their gradients are those of the corresponding KLs, but the values do not reach 0 when the student
    matches the teacher.
    """
    b, k = _check_target_terms(student_logits, teacher_logits, target, temperature, reduction)
    zs = _f32(student_logits)
    zt = _f32(teacher_logits).detach()
    y = target.to(zs.device).long().unsqueeze(1)
    log_ps_y = F.log_softmax(zs, dim=1).gather(1, y).squeeze(1)
    pt_y = F.softmax(zt, dim=1).gather(1, y).squeeze(1)
    target_term = -pt_y * log_ps_y
    other = _non_target_columns(target, k, zs.device)
    log_hat_s = F.log_softmax(zs.gather(1, other) / temperature, dim=1)
    hat_t = F.softmax(zt.gather(1, other) / temperature, dim=1)
    non_target = -(hat_t * log_hat_s).sum(dim=1) * temperature**2
    return _reduced(target_term, non_target, reduction)


def nkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
) -> Tensor:
    """NKD: target term + γ · normalised non-target term (see :func:`nkd_terms`); docs/methods.md#nkd.

    The loss-module defaults (T 1, γ 1.5) are the official ImageNet ones; the official CIFAR-100 config uses
    T 3, γ 3.5. Total: CE (weight 1) + this.
    """
    target_term, non_target = nkd_terms(student_logits, teacher_logits, target, temperature=temperature)
    return target_term + gamma * non_target


# ----------------------------------------------------------------------------------------------------------
# WSLD (Zhou et al. 2021), docs/methods.md#wsld


def wsld_weights(student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
    """WSLD's per-sample weights w = 1 - exp(-max(CE_s / (CE_t + 1e-7), 0)), (B,), without gradient.

    CE_s, CE_t: the hard-label cross-entropies of the student and the teacher at temperature 1, on detached
    logits (github.com/bellymonster/Weighted-Soft-Label-Distillation ``knowledge_distiller.py``). w is near 1
    where the student is worse than the teacher on the sample and near 0 where it is already better.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    b, k = student_logits.shape
    _check_target(target, b, k)
    zs = _f32(student_logits).detach()
    y = target.to(zs.device).long()
    ce_s = F.cross_entropy(zs, y, reduction="none")
    ce_t = F.cross_entropy(_f32(teacher_logits).detach(), y, reduction="none")
    return 1.0 - torch.exp(-(ce_s / (ce_t + 1e-7)).clamp_min(0.0))


def wsld(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0) -> Tensor:
    """Weighted soft labels: T^2 * mean_i w_i * (-Σ_k softmax(z_t/T)_ik log softmax(z_s/T)_ik).

    Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective"
    (ICLR 2021, arXiv:2102.00650); docs/methods.md#wsld. w from :func:`wsld_weights` (a constant). The soft
    term is a cross-entropy (KL + the teacher's entropy), as in the official code. Outer weights: CE 1 +
    alpha * this, alpha 2.5 and T 2 (official, ImageNet), alpha 2.25 and T 4 (github.com/yzd-v/cls_KD, CIFAR-100).
    """
    _check_temperature(temperature)
    weights = wsld_weights(student_logits, teacher_logits, target)
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    pt = F.softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    soft = -(pt * log_ps).sum(dim=1)
    return temperature**2 * (weights * soft).mean()


# ----------------------------------------------------------------------------------------------------------
# SDD (Wei et al. 2024), docs/methods.md#sdd


def _check_scales(scales: Sequence[int]) -> list[int]:
    values = list(scales) if isinstance(scales, (list, tuple)) else None
    if (not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values)
            or len(set(values)) != len(values) or values[0] != 1):
        raise ValueError(f"scales must be distinct positive ints starting with 1 (the global cell), e.g. [1, 2, 4]; "
                         f"got {scales!r}")
    return values


def sdd_pool(features: Tensor, scales: Sequence[int] = (1, 2, 4)) -> Tensor:
    """Multi-scale average pooling of a (B, C, H, W) map into (B, N, C) cell vectors, N = Σ s².

    Cells are ordered by scale (``scales[0]`` must be 1: cell 0 is the global average), each scale's s x s grid
    row by row (adaptive average pooling). docs/methods.md#sdd. The official code pools the 4x4 grid and then
    the coarser grids from it; that equals this direct pooling whenever H and W are multiples of 4, or 1 or 2.
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, C, H, W) feature map, got {shape}")
    cells = [F.adaptive_avg_pool2d(features, s).flatten(2) for s in _check_scales(scales)]  # (B, C, s*s)
    return torch.cat(cells, dim=2).transpose(1, 2)


def _check_regions(student: Tensor, teacher: Tensor) -> None:
    for name, x in (("student_region_logits", student), ("teacher_region_logits", teacher)):
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be (batch, regions, num_classes) with region 0 the global logits, "
                             f"got {shape}")
    if student.shape != teacher.shape:
        raise ValueError(f"student_region_logits {tuple(student.shape)} and teacher_region_logits "
                         f"{tuple(teacher.shape)} must have the same shape (same scales, classes and batch)")


def sdd_weights(teacher_region_logits: Tensor, target: Tensor, complementary_weight: float = 2.0) -> Tensor:
    """SDD's (B, N) weights: ``complementary_weight`` for a local cell whose teacher prediction is right while
    the teacher's global prediction is wrong, or the reverse; 1 for consistent cells and the global cell.

    Correctness is the teacher's argmax against the label (docs/methods.md#sdd; github.com/shicaiwei123/SDD-CVPR2024
    ``mdistiller/distillers/KD.py`` ``sdd_kd_loss``, where the weight is 2).
    """
    if not isinstance(teacher_region_logits, Tensor) or teacher_region_logits.dim() != 3:
        raise ValueError("teacher_region_logits must be (batch, regions, num_classes)")
    b, n, k = teacher_region_logits.shape
    _check_target(target, b, k)
    if not complementary_weight >= 0:
        raise ValueError(f"complementary_weight must be >= 0, got {complementary_weight}; the authors use 2")
    correct = teacher_region_logits.detach().argmax(dim=2) == target.to(teacher_region_logits.device).long()[:, None]
    complementary = correct != correct[:, :1]  # (B, N); False for the global cell itself
    ones = torch.ones(b, n, device=teacher_region_logits.device)
    return torch.where(complementary, ones * complementary_weight, ones)


def sdd(
    student_region_logits: Tensor,
    teacher_region_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    base: str = "kd",
    alpha: float = 1.0,
    beta: float = 8.0,
    gamma: float = 8.0,
    complementary_weight: float = 2.0,
) -> Tensor:
    """Scale-decoupled distillation: Σ_{i,r} w_ir ℓ(z^s_ir, z^t_ir) / (B·N) over B samples and N cells.

    Wei et al., "Scale Decoupled Distillation" (CVPR 2024, arXiv:2403.13512); docs/methods.md#sdd. Region
    logits are (B, N, K), region 0 the global logits (the classifier on :func:`sdd_pool` cells); w from
    :func:`sdd_weights`. ℓ per cell: ``base="kd"`` T^2 KL(σ_T(z^t) || σ_T(z^s)) (SD-KD); ``"dkd"``
    α TCKD + β NCKD (SD-DKD, :func:`dkd_terms`); ``"nkd"`` target + γ non-target (SD-NKD, :func:`nkd_terms`).
    With one cell (scales [1]) this is the base loss itself.
    """
    _check_regions(student_region_logits, teacher_region_logits)
    _check_temperature(temperature)
    if base not in ("kd", "dkd", "nkd"):
        raise ValueError(f"base must be 'kd', 'dkd' or 'nkd', got {base!r}")
    b, n, k = student_region_logits.shape
    _check_target(target, b, k)
    weights = sdd_weights(teacher_region_logits, target, complementary_weight)
    zs = student_region_logits.reshape(b * n, k)
    zt = teacher_region_logits.reshape(b * n, k)
    y = target.to(zs.device).long().repeat_interleave(n)  # sample-major rows: row i*N + r
    if base == "kd":
        log_ps = F.log_softmax(_f32(zs) / temperature, dim=1)
        log_pt = F.log_softmax(_f32(zt).detach() / temperature, dim=1)
        per_row = _kl_logs(log_pt, log_ps) * temperature**2
    elif base == "dkd":
        tckd, nckd = dkd_terms(zs, zt, y, temperature=temperature, reduction="none")
        per_row = alpha * tckd + beta * nckd
    else:
        target_term, non_target = nkd_terms(zs, zt, y, temperature=temperature, reduction="none")
        per_row = target_term + gamma * non_target
    return (weights.reshape(-1) * per_row).sum() / (b * n)


# ----------------------------------------------------------------------------------------------------------
# CTKD (Li et al. 2023), docs/methods.md#ctkd


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -strength (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:  # type: ignore[override]
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float = 1.0) -> Tensor:
    """Gradient reversal: returns x; the gradient flowing back into x is multiplied by ``-strength``.

    A parameter behind it is moved by SGD to *increase* the loss (CTKD's adversarial temperature,
    docs/methods.md#ctkd). ``strength`` >= 0; 0 blocks the gradient.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"reverse_gradient needs a tensor, got {type(x).__name__}")
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}; CTKD's curriculum goes from 0 to 1")
    return _GradientReversal.apply(x, float(strength))


def ctkd_strength(epoch: int | float, epochs: int | float = 10, max_strength: float = 1.0) -> float:
    """CTKD's cosine curriculum of the reversal strength: max · (1 - cos(π·min(e, E)/E)) / 2, 1-indexed epoch e.

    docs/methods.md#ctkd. Equals minus the official ``CosineDecay(max_value=0, min_value=-1, num_loops=E)``
    value (github.com/zhengli97/CTKD ``train_student.py``), whose sign kdlab's reversal applies instead:
    about 0.02 at epoch 1 of E = 10, 1 from epoch 10 on. ``epochs <= 0``: full strength from the start.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (1-indexed training epochs), got {epoch}")
    if epochs <= 0:
        return float(max_strength)
    progress = min(float(epoch), float(epochs)) / float(epochs)
    return float(max_strength * (1.0 - math.cos(math.pi * progress)) / 2.0)


def ctkd(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor) -> Tensor:
    """KD with a learned temperature tensor: mean_i T_i^2 KL(σ_{T_i}(z^t_i) || σ_{T_i}(z^s_i)).

    Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023, arXiv:2211.16231);
    docs/methods.md#ctkd. ``temperature``: one value (0-d or (1,), a global temperature) or one per sample (B,),
    all > 0. The gradient reaches it through both softmaxes and the T^2 factor (the official code's
    ``DistillKL``); the teacher logits are detached. With a constant temperature this is :func:`kd`.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    b = student_logits.shape[0]
    if not isinstance(temperature, Tensor) or temperature.numel() not in (1, b) or temperature.dim() > 1:
        shape = tuple(temperature.shape) if isinstance(temperature, Tensor) else type(temperature).__name__
        raise ValueError(f"temperature must be a tensor of one value or one per sample ({b},), got {shape}")
    temp = _f32(temperature).reshape(-1, 1).to(student_logits.device)
    if not bool((temp.detach() > 0).all()):
        raise ValueError(f"temperature must be > 0, got min {float(temp.detach().min())}")
    log_ps = F.log_softmax(_f32(student_logits) / temp, dim=1)
    log_pt = F.log_softmax(_f32(teacher_logits).detach() / temp, dim=1)
    return (_kl_logs(log_pt, log_ps) * temp.squeeze(1) ** 2).mean()


# ----------------------------------------------------------------------------------------------------------
# MLKD (Jin et al. 2023), docs/methods.md#mlkd

# The temperatures MLKD uses next to T0 (KD.TEMPERATURE), in the official code's order
# (github.com/Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py).
MLKD_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def _gram(a: Tensor, b: Tensor) -> Tensor:
    """a @ b outside autocast, so that the Gram matrices keep the float32 (or float64) of their inputs."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a @ b


def _check_weights(weights: Tensor | None, size: int, what: str, like: Tensor) -> Tensor | None:
    if weights is None:
        return None
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (size,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be one value per {what} ({size},), got {shape}")
    return _f32(weights).detach().to(device=like.device, dtype=like.dtype)


def _kd_rows(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(σ_T(z_t) || σ_T(z_s)) per sample, (B,)."""
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    log_pt = F.log_softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    return _kl_logs(log_pt, log_ps) * temperature**2


def class_correlation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
                      weights: Tensor | None = None) -> Tensor:
    """MLKD's class-level alignment: (1/K) Σ_{a,b} w_b (G^t - G^s)²_ab with the K×K class-correlation Gram matrix
    G = Pᵀ P of the batch's probabilities P = softmax(z/T) (B×K); no T² factor.

    Jin, Wang, Lin, "Multi-Level Logit Distillation" (CVPR 2023); docs/methods.md#mlkd. ``weights`` (K,), one per
    class (column b), default 1: then this is the official ``cc_loss`` (github.com/Jin-Ying/Multi-Level-Logit-
    Distillation ``mdistiller/distillers/KD_ours.py``), ‖G^t - G^s‖²_F / K. The teacher logits are detached.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    k = student_logits.shape[1]
    ps = F.softmax(_f32(student_logits) / temperature, dim=1)
    pt = F.softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    per_class = ((_gram(pt.t(), pt) - _gram(ps.t(), ps)) ** 2).sum(dim=0)
    w = _check_weights(weights, k, "class", per_class)
    return (per_class if w is None else per_class * w).sum() / k


def batch_correlation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
                      weights: Tensor | None = None) -> Tensor:
    """MLKD's batch-level alignment: (1/B) Σ_{i,j} w_j (H^t - H^s)²_ij with the B×B sample-similarity Gram matrix
    H = P Pᵀ of the probabilities P = softmax(z/T) (B×K); no T² factor.

    docs/methods.md#mlkd. ``weights`` (B,), one per sample (column j), default 1: then this is the official
    ``bc_loss``, ‖H^t - H^s‖²_F / B. The teacher logits are detached.
    """
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_temperature(temperature)
    b = student_logits.shape[0]
    ps = F.softmax(_f32(student_logits) / temperature, dim=1)
    pt = F.softmax(_f32(teacher_logits).detach() / temperature, dim=1)
    per_sample = ((_gram(pt, pt.t()) - _gram(ps, ps.t())) ** 2).sum(dim=0)
    w = _check_weights(weights, b, "sample", per_sample)
    return (per_sample if w is None else per_sample * w).sum() / b


def mlkd_masks(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """MLKD's confidence masks of a batch: (samples (B,), classes (K,)) booleans, True where the teacher is at most
    as confident as the batch's median.

    A sample's confidence is the teacher's top probability (softmax at T 1), a class's is its probability summed
    over the batch; the median interpolates linearly between the middle values, as the official
    ``np.percentile(·, 50)`` (docs/methods.md#mlkd). Computed on the device, without a host synchronisation.
    """
    _check_logits("teacher_logits", teacher_logits)
    p = F.softmax(_f32(teacher_logits).detach(), dim=1)
    confidence, class_confidence = p.amax(dim=1), p.sum(dim=0)
    return (confidence <= torch.quantile(confidence, 0.5),
            class_confidence <= torch.quantile(class_confidence, 0.5))


def mlkd_terms(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor,
    teacher_strong: Tensor,
    temperature: float = 4.0,
    per_sample_mask: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """MLKD's (instance, class, batch) terms before the KD weight, as the official code computes them.

    Jin, Wang, Lin, "Multi-Level Logit Distillation" (CVPR 2023); github.com/Jin-Ying/Multi-Level-Logit-Distillation
    ``mdistiller/distillers/KD_ours.py``; docs/methods.md#mlkd. With 𝒯 = {T0, 3, 5, 2, 6} (T0 = ``temperature``),
    w/s the weak/strong views and m, m_c the :func:`mlkd_masks` of the teacher's weak logits:

    * instance: Σ_{T∈𝒯} mean_i(m_i KD_T,i(w)) + Σ_{T∈{T0,3,5}} KD_T(s) + KD_2(w) + KD_6(w)  (KD = T² KL, as
      :func:`kd`; the last two read the weak view, as the official code);
    * class: Σ_{T∈𝒯} :func:`class_correlation` (w, weights m_c);
    * batch: Σ_{T∈𝒯} :func:`batch_correlation` (w, weights m).

    ``per_sample_mask=False`` (the official code, whose losses are reduced before the masks multiply them): every
    m_i is the fraction of True entries of the mask, so each masked term is that fraction times the unmasked one.
    ``True``: the masks select samples and classes. The teacher logits are detached.
    """
    _check_pair("student_weak", student_weak, "teacher_weak", teacher_weak)
    _check_pair("student_strong", student_strong, "teacher_strong", teacher_strong)
    if student_weak.shape != student_strong.shape:
        raise ValueError(f"the weak {tuple(student_weak.shape)} and strong {tuple(student_strong.shape)} views must "
                         f"have the same shape: one strong view of each image of the batch")
    _check_temperature(temperature)
    b, k = student_weak.shape
    temperatures = (float(temperature), *MLKD_TEMPERATURES)
    samples, classes = mlkd_masks(teacher_weak)
    samples, classes = samples.to(_f32(student_weak).dtype), classes.to(_f32(student_weak).dtype)
    if not per_sample_mask:
        samples, classes = samples.mean().expand(b), classes.mean().expand(k)
    instance = sum((samples * _kd_rows(student_weak, teacher_weak, t)).mean() for t in temperatures)
    instance = instance + sum(_kd_rows(student_strong, teacher_strong, t).mean() for t in temperatures[:3])
    instance = instance + _kd_rows(student_weak, teacher_weak, 2.0).mean() + _kd_rows(student_weak, teacher_weak,
                                                                                       6.0).mean()
    level_class = sum(class_correlation(student_weak, teacher_weak, t, classes) for t in temperatures)
    level_batch = sum(batch_correlation(student_weak, teacher_weak, t, samples) for t in temperatures)
    return instance, level_class, level_batch
