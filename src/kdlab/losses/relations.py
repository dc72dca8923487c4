"""Relation-based distillation losses: RKD, SP, PKT, CC, MHGD (+ the SVD building blocks of KD-SVD/MHGD).

These losses compare *relations between samples of a batch* (distances, angles, Gram matrices, kernel
similarities, attention graphs) rather than features themselves, so student and teacher dimensions may
differ (except where noted). All functions are stateless, take tensors first and hyperparameters as
keywords with the authors' defaults, and compute in float32 (float64 stays float64) with autocast disabled.
Teacher-side inputs are detached inside unless the docstring says otherwise (CC: the teacher-side embedding
comes from a trainable head, see ``cc``). Equations and defaults: docs/methods.md (#rkd, #sp, #pkt, #cc,
#mhgd, #kdsvd); the reductions matter for the outer weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rkd",
    "rkd_distance",
    "rkd_angle",
    "sp",
    "pkt",
    "cc",
    "mhgd",
    "svd_compress",
    "align_singular_vectors",
]


# --------------------------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, otherwise float32 (half/bfloat16 are upcast for stability)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(t: Tensor) -> torch.autocast:
    """A context that disables autocast on ``t``'s device so matmuls really run in float32."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _flat_pair(name: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten (B, ...) student/teacher tensors to (B, D) in the compute dtype; the teacher is detached."""
    for side, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, Tensor) or t.dim() < 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name}: {side} input must be a (B, ...) tensor, got {shape}; "
                "pass batched embeddings or maps"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name}: student batch {student.shape[0]} != teacher batch {teacher.shape[0]}; "
            "feed both networks the same batch"
        )
    dtype = _compute_dtype(student, teacher)
    return student.flatten(1).to(dtype), teacher.detach().flatten(1).to(dtype)


def _as_list(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


# ------------------------------------------------------------------------------------------------- RKD


def _pairwise_distance(e: Tensor, eps: float) -> Tensor:
    """Euclidean distances sqrt(clamp(|ei|²+|ej|²-2 ei·ej, eps)) with a zero diagonal (RKD, docs/methods.md#rkd)."""
    sq = (e * e).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps)
    d = d2.sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def _normalised_distance(e: Tensor, eps: float) -> Tensor:
    """Distances divided by the mean of their strictly positive entries (0 stays 0 if none are positive)."""
    d = _pairwise_distance(e, eps)
    positive = d > 0
    mean = d.sum() / positive.sum().clamp(min=1)  # zeros add nothing to the sum
    return d / mean.clamp(min=eps)


def _angles(e: Tensor) -> Tensor:
    """(B, B, B) cosines of the angle at vertex i between e_j - e_i and e_k - e_i; degenerate gives 0."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[i, j] = e_j - e_i
    unit = F.normalize(diff, p=2, dim=2)  # zero vectors stay zero
    return unit @ unit.transpose(1, 2)


def rkd_distance(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-12) -> Tensor:
    """RKD distance term L_D (Park et al., CVPR 2019; docs/methods.md#rkd).

    Pairwise distances (squared distance clamped at ``eps``, zero diagonal) are normalised by the mean of
    their positive entries, then compared with smooth-L1 (δ = 1) averaged over all B² entries. Inputs
    (B, ...) are flattened; dimensions may differ. Unweighted; ``rkd`` applies the weight 25.
    """
    s, t = _flat_pair("rkd_distance", student_embedding, teacher_embedding)
    with _no_autocast(s):
        with torch.no_grad():
            t_d = _normalised_distance(t, eps)
        s_d = _normalised_distance(s, eps)
        return F.smooth_l1_loss(s_d, t_d, reduction="mean", beta=1.0)


def rkd_angle(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """RKD angle term L_A (Park et al., CVPR 2019; docs/methods.md#rkd).

    Cosines of all B³ triangle angles (vertex first), smooth-L1 (δ = 1) averaged over B³ entries;
    triples with coinciding points contribute a cosine of 0. Costs O(B³ + B²D) memory. Unweighted;
    ``rkd`` applies the weight 50.
    """
    s, t = _flat_pair("rkd_angle", student_embedding, teacher_embedding)
    with _no_autocast(s):
        with torch.no_grad():
            t_a = _angles(t)
        s_a = _angles(s)
        return F.smooth_l1_loss(s_a, t_a, reduction="mean", beta=1.0)


def rkd(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
) -> Tensor:
    """Relational KD: ``distance_weight * L_D + angle_weight * L_A`` (docs/methods.md#rkd).

    Defaults 25/50 are the CIFAR weights of RepDistiller and mdistiller (the metric-learning code uses 1/2);
    the default outer weight of the method is 1. Embeddings are used as given (not L2-normalised).
    """
    loss = student_embedding.new_zeros((), dtype=_compute_dtype(student_embedding, teacher_embedding))
    if distance_weight:
        loss = loss + distance_weight * rkd_distance(student_embedding, teacher_embedding, eps=eps)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle(student_embedding, teacher_embedding)
    return loss


# -------------------------------------------------------------------------------------------------- SP


def sp(student_features: Tensor | Sequence[Tensor], teacher_features: Tensor | Sequence[Tensor]) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019; docs/methods.md#sp).

    Per layer: Q = map flattened to (B, CHW), G = QQᵀ with rows L2-normalised, loss ‖G̃_t − G̃_s‖_F² / B²;
    summed over layers. Channel and spatial sizes may differ between student and teacher. A single tensor
    is treated as a one-layer list. Default outer weight γ = 3000 (RepDistiller/mdistiller, on ``f3``).
    """
    s_list, t_list = _as_list(student_features), _as_list(teacher_features)
    if len(s_list) != len(t_list) or not s_list:
        raise ValueError(
            f"sp: got {len(s_list)} student and {len(t_list)} teacher feature maps; "
            "pass matching, non-empty lists"
        )
    total = None
    for s_map, t_map in zip(s_list, t_list, strict=True):
        s, t = _flat_pair("sp", s_map, t_map)
        b = s.shape[0]
        with _no_autocast(s):
            with torch.no_grad():
                g_t = F.normalize(t @ t.t(), p=2, dim=1)
            g_s = F.normalize(s @ s.t(), p=2, dim=1)
            layer = (g_t - g_s).pow(2).sum() / (b * b)
        total = layer if total is None else total + layer
    return total


# ------------------------------------------------------------------------------------------------- PKT


def _pkt_conditional(x: Tensor, eps: float) -> Tensor:
    """Row-stochastic matrix from cosine similarities mapped to [0, 1], diagonal included (PKT, docs/methods.md#pkt)."""
    x = x / (x.norm(p=2, dim=1, keepdim=True) + eps)
    x = torch.nan_to_num(x, nan=0.0)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018; docs/methods.md#pkt).

    Rows are L2-normalised (x / (‖x‖ + eps), NaN → 0), cosine matrices mapped by (S + 1) / 2 and
    row-normalised (diagonal included) into P (student) and Q (teacher); the loss is
    mean_{ij} Q_ij log((Q_ij + eps) / (P_ij + eps)) over all B² entries (= batch-mean KL / B).
    Dimensions may differ. Default outer weight 30000 (RepDistiller/mdistiller), large because of the 1/B².
    """
    s, t = _flat_pair("pkt", student_embedding, teacher_embedding)
    with _no_autocast(s):
        with torch.no_grad():
            q = _pkt_conditional(t, eps)
        p = _pkt_conditional(s, eps)
        return (q * torch.log((q + eps) / (p + eps))).mean()


# -------------------------------------------------------------------------------------------------- CC


def _rbf_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    """Gaussian-RBF correlation via its order-P Taylor expansion on L2-normalised rows (CC, docs/methods.md#cc)."""
    e = F.normalize(e, p=2, dim=1)
    sim = e @ e.t()
    corr = torch.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + (math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)) * sim.pow(p)
    return corr


def cc(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    variant: str = "paper",
    gamma: float = 0.4,
    order: int = 2,
) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019; docs/methods.md#cc).

    Inputs are the 128-d outputs of the method's two *trainable* linear embeddings, so the teacher side is
    **not** detached here (RepDistiller trains both heads); pass ``teacher.detach()`` to freeze it.

    * ``variant='paper'``: C_ij = e^{-2γ} Σ_{p≤P} (2γ)^p / p! (ê_iᵀ ê_j)^p on L2-normalised rows; loss =
      mean squared difference over the B² entries, ‖C_s − C_t‖_F² / B² (AberHu's MSE). Chosen over
      torchdistill's unsquared ‖·‖_F / B² because the squared form is smooth at C_s = C_t (the norm's
      gradient is undefined there and has unit size arbitrarily close to it) and is the usual "MSE between
      correlation matrices". Dimensions may differ.
    * ``variant='repdistiller'``: Δ = |e_s − e_t|, loss = mean_i Σ_d Δ_{i,d} Δ_{i+1,d} over consecutive
      samples (as shipped in RepDistiller; not the paper's matrix loss). Requires equal dimensions and
      B ≥ 2 (returns 0 for B = 1).

    Default outer weight: 0.02 in RepDistiller (its own variant); AberHu uses 100 for the paper variant.
    """
    if variant not in ("paper", "repdistiller"):
        raise ValueError(f"cc: unknown variant '{variant}'; use 'paper' or 'repdistiller'")
    if order < 0:
        raise ValueError(f"cc: order must be >= 0, got {order}; use the default 2")
    s, _ = _flat_pair("cc", student_embedding, teacher_embedding)
    t = teacher_embedding.flatten(1).to(s.dtype)  # not detached: the teacher head is trainable (docs/methods.md#cc)
    with _no_autocast(s):
        if variant == "paper":
            return (_rbf_correlation(s, gamma, order) - _rbf_correlation(t, gamma, order)).pow(2).mean()
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"cc(variant='repdistiller'): student dim {s.shape[1]} != teacher dim {t.shape[1]}; "
                "embed both to the same size (128) or use variant='paper'"
            )
        delta = (s - t).abs()
        if delta.shape[0] < 2:
            return delta.sum() * 0.0
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------------ MHGD


def mhgd(student_graphs: Tensor | Sequence[Tensor], teacher_graphs: Tensor | Sequence[Tensor]) -> Tensor:
    """Multi-head graph distillation loss (Lee & Song, BMVC 2019; docs/methods.md#mhgd).

    Each level holds attention graphs shaped (H, B, B) (a single tensor is one level). With
    p_s = softmax(tanh G_s) and p_t = softmax(tanh G_t) over the last axis, the loss is
    Σ_levels Σ_{h,i} KL(p_s ‖ p_t) = Σ p_s (log p_s − log p_t): **student distribution first**, as in the
    official TF code, and a sum (not a mean). Default outer weight 1 (the official code instead clips the
    distillation gradient to the CE gradient's norm).
    """
    s_list, t_list = _as_list(student_graphs), _as_list(teacher_graphs)
    if len(s_list) != len(t_list) or not s_list:
        raise ValueError(
            f"mhgd: got {len(s_list)} student and {len(t_list)} teacher graph levels; pass matching lists"
        )
    total = None
    for g_s, g_t in zip(s_list, t_list, strict=True):
        if g_s.shape != g_t.shape or g_s.dim() != 3:
            raise ValueError(
                f"mhgd: graphs must both be (H, B, B), got student {tuple(g_s.shape)} and teacher "
                f"{tuple(g_t.shape)}; apply the same attention heads to both networks"
            )
        dtype = _compute_dtype(g_s, g_t)
        with _no_autocast(g_s):
            log_p_t = F.log_softmax(torch.tanh(g_t.detach().to(dtype)), dim=-1)
            log_p_s = F.log_softmax(torch.tanh(g_s.to(dtype)), dim=-1)
            level = (log_p_s.exp() * (log_p_s - log_p_t)).sum()
        total = level if total is None else total + level
    return total


# --------------------------------------------------------------------------------- SVD building blocks


def _zero_nonfinite_grad(grad: Tensor | None) -> Tensor | None:
    # autograd calls tensor hooks with None when the gradient is undefined (e.g. a Function returning None)
    if grad is None:
        return None
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def svd_compress(features: Tensor, k: int = 1, with_values: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per-sample top-``k`` right singular vectors of a feature map (KD-SVD / MHGD; docs/methods.md#kdsvd, #mhgd).

    ``features`` is (B, C, H, W) (reshaped per sample to an HW × C matrix) or already (B, N, C). Returns
    (B, k, C) unit vectors over C, each with its sign fixed so its largest-|x| entry is positive (SVD signs
    are arbitrary). NaN/Inf are replaced by 0, including in the gradient reaching ``features`` (SVD backward
    is ill-conditioned for near-equal singular values; the official code zeroes NaNs too). If k exceeds
    min(N, C) the missing vectors are zero. With ``with_values=True`` also returns the singular values
    (B, k) L2-normalised over k (KD-SVD step 4 scales the vectors by the teacher's).
    """
    if k < 1:
        raise ValueError(
            f"svd_compress: k must be >= 1, got {k}; use k=1 for the teacher, k+3 for the student"
        )
    if features.dim() == 4:
        x = features.flatten(2).transpose(1, 2)  # (B, HW, C)
    elif features.dim() == 3:
        x = features
    else:
        raise ValueError(
            f"svd_compress: expected (B, C, H, W) or (B, N, C) features, got {tuple(features.shape)}; "
            "pass convolutional feature maps"
        )
    x = x.to(_compute_dtype(x))
    if x.requires_grad:
        x.register_hook(_zero_nonfinite_grad)
    with _no_autocast(x):
        _, sv, vh = torch.linalg.svd(x, full_matrices=False)
        r = min(k, vh.shape[1])
        v = torch.nan_to_num(vh[:, :r], nan=0.0, posinf=0.0, neginf=0.0)
        sv = torch.nan_to_num(sv[:, :r], nan=0.0, posinf=0.0, neginf=0.0)
        if r < k:
            v = torch.cat([v, v.new_zeros(v.shape[0], k - r, v.shape[2])], dim=1)
            sv = torch.cat([sv, sv.new_zeros(sv.shape[0], k - r)], dim=1)
        v = F.normalize(v, p=2, dim=2)
        with torch.no_grad():
            peak = v.abs().argmax(dim=2, keepdim=True)
            sign = torch.where(v.gather(2, peak) < 0, -1.0, 1.0).to(v.dtype)
        v = v * sign
    if with_values:
        return v, F.normalize(sv, p=2, dim=1)
    return v


def align_singular_vectors(student_vecs: Tensor, teacher_vecs: Tensor) -> Tensor:
    """Match each teacher singular vector with a student one (KD-SVD step 2; docs/methods.md#kdsvd, #mhgd).

    ``student_vecs`` (B, m, C) (m = k + 3 by convention), ``teacher_vecs`` (B, k, C). For every teacher
    vector, picks the student vector with the largest |cosine| and flips its sign when the cosine is
    negative. Returns (B, k, C) in the teacher's order; gradient flows to the chosen student vectors only.
    Channels must match (the alignment is an inner product over C).
    """
    if student_vecs.dim() != 3 or teacher_vecs.dim() != 3:
        raise ValueError(
            f"align_singular_vectors: expected (B, m, C) and (B, k, C), got {tuple(student_vecs.shape)} and "
            f"{tuple(teacher_vecs.shape)}; pass svd_compress outputs"
        )
    if student_vecs.shape[0] != teacher_vecs.shape[0]:
        raise ValueError(
            f"align_singular_vectors: student batch {student_vecs.shape[0]} != teacher batch "
            f"{teacher_vecs.shape[0]}; feed both networks the same batch"
        )
    if student_vecs.shape[2] != teacher_vecs.shape[2]:
        raise ValueError(
            f"align_singular_vectors: student has {student_vecs.shape[2]} channels, teacher "
            f"{teacher_vecs.shape[2]}; KD-SVD/MHGD need equal channels per stage (add a 1x1 conv connector)"
        )
    dtype = _compute_dtype(student_vecs, teacher_vecs)
    s = student_vecs.to(dtype)
    t = teacher_vecs.detach().to(dtype)
    with _no_autocast(s), torch.no_grad():
        cos = F.normalize(t, p=2, dim=2) @ F.normalize(s, p=2, dim=2).transpose(1, 2)  # (B, k, m)
        best = cos.abs().argmax(dim=2, keepdim=True)  # (B, k, 1)
        sign = torch.where(cos.gather(2, best) < 0, -1.0, 1.0).to(dtype)
    chosen = s.gather(1, best.expand(-1, -1, s.shape[2]))
    return chosen * sign
