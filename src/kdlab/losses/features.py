"""Feature-based distillation losses (FitNet, AT, NST, VID, OD, AB, FSP, FT, KD-SVD, ReviewKD HCL, ICKD,
PAD-L2, CAT-KD).

Stateless like ``torch.nn.functional``: tensors first, hyperparameters as keywords with the authors'
defaults. Every function returns an *unweighted* scalar as defined in docs/methods.md; the outer
weight (e.g. AT β = 1000) belongs to the method in ``kdlab.methods`` and is given in each docstring.

Conventions shared by all functions:

* Teacher tensors are constants: they are detached here, so gradients reach only the student side.
* Connectors (regressors, 1×1 convs, ABF) are not applied here; functions receive already-transformed
  student features where the method has a connector.
* Where the method pools (AT, NST, VID, FSP), the larger spatial map is adaptive-average-pooled to the
  smaller size; OD pools the teacher to the student's size (mdistiller).
* Arithmetic is float32 with autocast disabled, so the losses are safe inside mixed-precision training.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "fitnet",
    "attention_map",
    "at",
    "nst",
    "vid",
    "vid_init_log_scale",
    "od_margin",
    "od",
    "ab",
    "fsp_matrix",
    "fsp",
    "ft",
    "paraphraser_reconstruction",
    "kdsvd",
    "reviewkd_hcl",
    "channel_correlation",
    "ickd",
    "embedding_l2",
    "pad_l2",
    "class_activation_maps",
    "catkd",
]

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------- helpers


def _fp32(fn: _Fn) -> _Fn:
    """Run ``fn`` with every active autocast disabled, so matmuls and reductions stay in float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _teacher(t: Tensor) -> Tensor:
    """Teacher tensor as a float32 constant."""
    return t.detach().float()


def _check_4d(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{what} must be a 4-d feature map (B, C, H, W), got shape {tuple(x.shape)}; "
            f"tap a convolutional stage output"
        )


def _check_batch(s: Tensor, t: Tensor, what: str) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{what}: student batch {s.shape[0]} != teacher batch {t.shape[0]}; "
            f"feed the same images to both networks"
        )


def _check_same_shape(s: Tensor, t: Tensor, what: str, fix: str) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{what}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}; {fix}")


def _check_lists(student: Sequence[Any], teacher: Sequence[Any], what: str) -> None:
    if len(student) == 0:
        raise ValueError(f"{what}: got no feature maps; tap at least one stage")
    if len(student) != len(teacher):
        raise ValueError(
            f"{what}: {len(student)} student maps but {len(teacher)} teacher maps; "
            f"tap the same number of stages in both networks"
        )


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pool ``x`` to ``size`` (no-op when it already has that size)."""
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def _pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller spatial size (RepDistiller, mdistiller)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return _pool_to(a, size), _pool_to(b, size)


# --------------------------------------------------------------------------------------------- FitNet


@_fp32
def fitnet(student_hint: Tensor, teacher_hint: Tensor) -> Tensor:
    """FitNet hint loss: elementwise MSE mean ``mean((r(F_s) - F_t)^2)`` (Romero et al. 2015; docs/methods.md#fitnet).

    ``student_hint`` has already been through the regressor r (ConvReg), so shapes must match.
    Default outer weight: 100 (RepDistiller ``-b 100``, mdistiller ``FEAT_WEIGHT 100``).
    """
    _check_same_shape(
        student_hint,
        teacher_hint,
        "fitnet",
        "pass the student hint through a regressor (connector) that outputs the teacher's shape",
    )
    return F.mse_loss(student_hint.float(), _teacher(teacher_hint))


# --------------------------------------------------------------------------------------------- AT


def attention_map(feature: Tensor, p: float = 2) -> Tensor:
    """Normalised attention map ``q = a/||a||_2``, ``a = vec(mean_c |F_c|^p)``, shape (B, HW).

    Zagoruyko & Komodakis 2017 (docs/methods.md#at). The paper's ``|A|^p`` is used, equal to the code's ``F^p`` for
    p = 2 and free of NaNs for fractional p. The mean vs sum over channels cancels in the normalisation.
    """
    _check_4d(feature, "attention_map feature")
    a = feature.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


@_fp32
def at(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], p: float = 2) -> Tensor:
    """Attention transfer, code form: ``sum_stages mean_{B,HW} (q_s - q_t)^2`` (docs/methods.md#at).

    Channel counts may differ; a larger spatial map is average-pooled to the smaller one before the
    attention map is taken (RepDistiller/mdistiller). Default outer weight β = 1000, p = 2.
    """
    _check_lists(student_features, teacher_features, "at")
    total = student_features[0].float().sum() * 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        _check_4d(s, "at student feature")
        _check_4d(t, "at teacher feature")
        _check_batch(s, t, "at")
        s, t = _pool_to_smaller(s.float(), _teacher(t))
        total = total + (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
    return total


# --------------------------------------------------------------------------------------------- NST


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Batch mean of ``mean_{i,j} (a_i . b_j)^2`` for per-sample channel sets a (B,Ca,N), b (B,Cb,N)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@_fp32
def nst(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Neuron selectivity transfer: polynomial-kernel MMD² (d = 2, c = 0), batch mean, sum over stages.

    Huang & Wang 2017 (docs/methods.md#nst). Each channel's spatial map is L2-normalised over positions; channel
    counts may differ; the larger map is pooled. The teacher–teacher term is kept as a constant
    (RepDistiller/mdistiller), so the value is the full MMD² (>= 0) while its gradient equals the official
    code's. Default outer weight λ = 50.
    """
    _check_lists(student_features, teacher_features, "nst")
    total = student_features[0].float().sum() * 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        _check_4d(s, "nst student feature")
        _check_4d(t, "nst teacher feature")
        _check_batch(s, t, "nst")
        s, t = _pool_to_smaller(s.float(), _teacher(t))
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)
        total = total + _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2.0 * _poly_kernel_mean(s, t)
    return total


# --------------------------------------------------------------------------------------------- VID


def vid_init_log_scale(init_variance: float = 5.0, eps: float = 1e-5) -> float:
    """α such that ``softplus(α) + eps == init_variance`` (VID initial variance 5.0, docs/methods.md#vid)."""
    if init_variance <= eps:
        raise ValueError(f"vid init_variance {init_variance} must exceed eps {eps}; use e.g. 5.0")
    return math.log(math.expm1(init_variance - eps))


@_fp32
def vid(
    student_means: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    log_scale_params: Sequence[Tensor],
    eps: float = 1e-5,
) -> Tensor:
    """Variational information distillation: Gaussian NLL of teacher given student, summed over stages.

    Ahn et al. 2019 (docs/methods.md#vid): per stage
    ``mean_{B,C,H,W} ½[(μ - t)²/σ_c² + log σ_c²]`` with ``σ_c² = softplus(α_c) + eps``, where μ is the
    student's regressor output (C_t channels) and α (shape (C_t,)) are learnable log-scale parameters,
    initialised with :func:`vid_init_log_scale`. A larger spatial map is pooled to the smaller (the method
    may instead pool the regressor input, as RepDistiller does). The constant ½·log 2π is omitted, as in
    the reference code. Default outer weight 1.0; make sure α is in the optimizer (mdistiller forgets it).
    """
    _check_lists(student_means, teacher_features, "vid")
    if len(log_scale_params) != len(teacher_features):
        raise ValueError(
            f"vid: {len(log_scale_params)} log-scale parameters for {len(teacher_features)} stages; "
            f"create one (C_t,) parameter per stage"
        )
    total = student_means[0].float().sum() * 0.0
    for mu, t, alpha in zip(student_means, teacher_features, log_scale_params, strict=True):
        _check_4d(mu, "vid student mean")
        _check_4d(t, "vid teacher feature")
        _check_batch(mu, t, "vid")
        if mu.shape[1] != t.shape[1]:
            raise ValueError(
                f"vid: student mean has {mu.shape[1]} channels, teacher {t.shape[1]}; "
                f"the VID regressor must output the teacher's channel count"
            )
        if alpha.numel() != t.shape[1]:
            raise ValueError(
                f"vid: log-scale parameter has {alpha.numel()} entries for {t.shape[1]} teacher channels; "
                f"create it with shape (C_t,)"
            )
        mu, t = _pool_to_smaller(mu.float(), _teacher(t))
        var = (F.softplus(alpha.float()) + eps).view(1, -1, 1, 1)
        total = total + (0.5 * ((mu - t).pow(2) / var + var.log())).mean()
    return total


# --------------------------------------------------------------------------------------------- OD


def od_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per-channel OD margin ``E[x | x < 0]`` for ``x ~ N(β, γ²)`` (Heo et al. 2019; docs/methods.md#od).

    ``m - s·φ(m/s)/Φ(-m/s)`` with m = β, s = |γ| when Φ(-m/s) > 0.001, else ``-3s`` (official rule).
    Computed once in float64 from the BN before the teacher's ReLU; returned as a float32 constant of
    shape (C,) on the BN's device (register it as a buffer).
    """
    if bn_weight.shape != bn_bias.shape or bn_weight.dim() != 1:
        raise ValueError(
            f"od_margin: BN weight {tuple(bn_weight.shape)} and bias {tuple(bn_bias.shape)} must be "
            f"equal 1-d; pass the teacher BatchNorm's .weight and .bias"
        )
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    z = m / s.clamp_min(1e-30)  # γ = 0 is a point mass at β: the rule still gives the right limit
    cdf = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    use_mean = cdf > 1e-3
    cond_mean = m - s * pdf / torch.where(use_mean, cdf, torch.ones_like(cdf))
    return torch.where(use_mean, cond_mean, -3.0 * s).float()


@_fp32
def od(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    margins: Sequence[Tensor],
) -> Tensor:
    """Overhaul distillation: partial L2 to the margin-clipped pre-ReLU teacher, ``/ B`` (docs/methods.md#od).

    Per stage: ``t~ = max(t, margin_c)``; sum of ``(s - t~)²`` over elements where ``s > t~`` or
    ``t~ > 0``; stage i of N weighted by ``1/2^(N-1-i)`` (deepest 1); total divided by B. ``s`` is the
    connector output (C_t channels); the teacher is pooled to the student's spatial size if they differ
    (mdistiller). The official ``1/1000`` is the outer weight: CIFAR 1e-3, ImageNet 1e-4. The teacher
    runs in train mode (BN batch statistics) in OD — a method concern, not this function's.
    """
    _check_lists(student_features, teacher_features, "od")
    if len(margins) != len(teacher_features):
        raise ValueError(
            f"od: {len(margins)} margins for {len(teacher_features)} stages; "
            f"compute one od_margin per teacher stage"
        )
    n = len(student_features)
    total = student_features[0].float().sum() * 0.0
    for i, (s, t, margin) in enumerate(zip(student_features, teacher_features, margins, strict=True)):
        _check_4d(s, "od student feature")
        _check_4d(t, "od teacher feature")
        _check_batch(s, t, "od")
        if s.shape[1] != t.shape[1] or margin.numel() != t.shape[1]:
            raise ValueError(
                f"od stage {i}: student {s.shape[1]} / teacher {t.shape[1]} / margin {margin.numel()} "
                f"channels differ; use a 1x1-conv+BN connector to the teacher's channels and one margin "
                f"per channel"
            )
        s = s.float()
        t = _pool_to(_teacher(t), (s.shape[-2], s.shape[-1]))
        t = torch.maximum(t, margin.detach().float().to(t.device).view(1, -1, 1, 1))
        mask = (s > t) | (t > 0)
        total = total + ((s - t).pow(2) * mask).sum() / 2 ** (n - 1 - i)
    return total / student_features[0].shape[0]


# --------------------------------------------------------------------------------------------- AB


@_fp32
def ab(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """Activation-boundary "alternative L2", summed over elements, stage-weighted, ``/ B`` (docs/methods.md#ab).

    Per element: ``(s + μ)²·1[s > -μ, t <= 0] + (s - μ)²·1[s <= μ, t > 0]``, with s the connector output
    and t the teacher's pre-ReLU map (same shape). Stage i of N is weighted ``2^(i-N+1)`` (deepest 1).
    The official ``3/1000`` is the outer weight, used in the initialisation stage (AB loss alone).
    """
    _check_lists(student_features, teacher_features, "ab")
    n = len(student_features)
    total = student_features[0].float().sum() * 0.0
    for i, (s, t) in enumerate(zip(student_features, teacher_features, strict=True)):
        _check_same_shape(
            s, t, f"ab stage {i}", "use a connector that maps the student to the teacher's shape"
        )
        s, t = s.float(), _teacher(t)
        pos = t > 0
        per_elem = (s + margin).pow(2) * ((s > -margin) & ~pos) + (s - margin).pow(2) * ((s <= margin) & pos)
        total = total + per_elem.sum() * 2.0 ** (i - n + 1)
    return total / student_features[0].shape[0]


# --------------------------------------------------------------------------------------------- FSP


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """FSP ("flow") matrix ``G_ab = mean_{h,w} F1_a F2_b``, shape (B, C1, C2) (Yim et al. 2017; docs/methods.md#fsp).

    The larger map of the pair is adaptive-average-pooled to the smaller spatial size (RepDistiller).
    """
    _check_4d(f1, "fsp_matrix f1")
    _check_4d(f2, "fsp_matrix f2")
    if f1.shape[0] != f2.shape[0]:
        raise ValueError(
            f"fsp_matrix: batch sizes {f1.shape[0]} and {f2.shape[0]} differ; "
            f"pair maps from the same forward pass"
        )
    a, b = _pool_to_smaller(f1.float(), f2.float())
    hw = a.shape[-2] * a.shape[-1]
    return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / hw


@_fp32
def fsp(
    student_pairs: Sequence[tuple[Tensor, Tensor]],
    teacher_pairs: Sequence[tuple[Tensor, Tensor]],
) -> Tensor:
    """FSP loss, RepDistiller form: ``sum_pairs mean_{B,a,b} (G_s - G_t)²`` (docs/methods.md#fsp).

    Student and teacher matrices must have equal channel counts (RepDistiller has no adaptor). FSP is an
    initialisation-stage loss (30 epochs, weight 1, alone); RepDistiller's ``-b`` has no effect.
    """
    _check_lists(student_pairs, teacher_pairs, "fsp")
    total = student_pairs[0][0].float().sum() * 0.0
    for k, ((s1, s2), (t1, t2)) in enumerate(zip(student_pairs, teacher_pairs, strict=True)):
        g_s = fsp_matrix(s1, s2)
        g_t = fsp_matrix(_teacher(t1), _teacher(t2))
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"fsp pair {k}: student matrix {tuple(g_s.shape[1:])} != teacher {tuple(g_t.shape[1:])} "
                f"(channels must match); use a connector to the teacher's channels or pick matching stages"
            )
        total = total + (g_s - g_t).pow(2).mean()
    return total


# --------------------------------------------------------------------------------------------- FT


@_fp32
def ft(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Factor transfer, authors' form: per-sample flattened, L2-normalised factors, mean L1 over B·D.

    Kim et al. 2018 (docs/methods.md#ft; official github.com/Jangho-Kim/Factor-Transfer-pytorch), not
    RepDistiller's AT-style variant.
    ``student_factor`` is the translator output, ``teacher_factor`` the frozen paraphraser encoding.
    Default outer weight β = 500 (official; RepDistiller uses 200 with its variant).
    """
    _check_same_shape(
        student_factor,
        teacher_factor,
        "ft",
        "make the translator output the paraphraser factor's shape (same rate k)",
    )
    s = F.normalize(student_factor.float().flatten(1), dim=1)
    t = F.normalize(_teacher(teacher_factor).flatten(1), dim=1)
    return F.l1_loss(s, t)


@_fp32
def paraphraser_reconstruction(recon: Tensor, target: Tensor) -> Tensor:
    """Paraphraser pre-training loss: mean L1 ``mean|P(F_t) - F_t|`` (official FT; RepDistiller uses MSE)."""
    _check_same_shape(
        recon, target, "paraphraser_reconstruction", "the decoder must output the input's shape"
    )
    return F.l1_loss(recon.float(), _teacher(target))


# --------------------------------------------------------------------------------------------- KD-SVD


class _TopEigh(torch.autograd.Function):
    """Top-n eigenpairs (descending) of symmetric matrices with a degeneracy-safe backward.

    The eigenvector gradient has ``1/(λ_j - λ_i)`` terms that blow up for (near-)equal eigenvalues, as in
    rank-deficient feature maps; those terms are zeroed (the official KD-SVD code also uses a truncated,
    NaN-zeroing SVD gradient; docs/methods.md#kdsvd).
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, n: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        evals, evecs = torch.linalg.eigh(a)
        evals, evecs = evals.flip(-1), evecs.flip(-1)
        ctx.n = n
        ctx.save_for_backward(evals, evecs)
        return evals[..., :n], evecs[..., :n]

    @staticmethod
    def backward(ctx: Any, g_vals: Tensor | None, g_vecs: Tensor | None) -> tuple[Tensor, None]:  # type: ignore[override]
        evals, evecs = ctx.saved_tensors
        n = ctx.n
        c = evals.shape[-1]
        inner = torch.zeros(evals.shape[:-1] + (c, c), dtype=evals.dtype, device=evals.device)
        if g_vecs is not None:
            gq = torch.zeros_like(evecs)
            gq[..., :n] = g_vecs
            diff = evals.unsqueeze(-2) - evals.unsqueeze(-1)  # [i, j] = λ_j - λ_i
            scale = evals.abs().amax(dim=-1, keepdim=True).unsqueeze(-1)
            tol = 1e-6 * scale + torch.finfo(evals.dtype).tiny
            safe = diff.abs() > tol
            f = torch.where(
                safe, 1.0 / torch.where(safe, diff, torch.ones_like(diff)), torch.zeros_like(diff)
            )
            inner = inner + f * (evecs.transpose(-2, -1) @ gq)
        if g_vals is not None:
            gl = torch.zeros_like(evals)
            gl[..., :n] = g_vals
            inner = inner + torch.diag_embed(gl)
        ga = evecs @ inner @ evecs.transpose(-2, -1)
        ga = 0.5 * (ga + ga.transpose(-2, -1))
        return torch.nan_to_num(ga, nan=0.0, posinf=0.0, neginf=0.0), None


def _right_singular(feature: Tensor, n: int, route: str = "auto") -> tuple[Tensor, Tensor]:
    """Top-n right singular vectors (B, C, n), unit over C, and singular values (B, n) of X = (HW × C).

    From the eigendecomposition of the smaller Gram matrix, as the authors' KD-EID
    (github.com/sseung0703/KD_methods_with_TF ``nets/SVP.py`` ``SVD_eid``): route ``"channels"`` takes
    the C × C matrix XᵀX, whose eigenvectors are V (σ = sqrt(λ)); route ``"positions"`` takes the HW × HW
    matrix XXᵀ, whose eigenvectors are U, and then V = XᵀU/σ. ``"auto"`` picks the smaller (positions
    when HW < C). Both give the SVD's vectors wherever σ > 0; directions of zero singular values, which an
    SVD leaves arbitrary, come out as zero vectors on the positions route. Non-finite values are zeroed
    as in RepDistiller.
    """
    x = feature.flatten(2)  # (B, C, HW) = Xᵀ
    if route == "auto":
        route = "positions" if x.shape[2] < x.shape[1] else "channels"
    if route not in ("channels", "positions"):
        raise ValueError(f"_right_singular route {route!r}; use 'auto', 'channels' or 'positions'")
    gram = x @ x.transpose(1, 2) if route == "channels" else x.transpose(1, 2) @ x
    gram = 0.5 * (gram + gram.transpose(1, 2))
    evals, evecs = _TopEigh.apply(gram, n)
    if route == "positions":
        evecs = x @ evecs  # XᵀU = Vσ: unit over C after the normalisation below
    evecs = F.normalize(torch.nan_to_num(evecs, nan=0.0, posinf=0.0, neginf=0.0), dim=1)
    sing = torch.nan_to_num(evals.clamp_min(0.0).sqrt(), nan=0.0, posinf=0.0, neginf=0.0)
    return evecs, sing


@_fp32
def kdsvd(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], k: int = 1) -> Tensor:
    """Self-supervised KD with SVD, as in RepDistiller (Lee et al. 2018; docs/methods.md#kdsvd).

    Per stage and sample, X = HW × C. Teacher: top-k right singular vectors (unit over C) and its
    singular values L2-normalised over k; student: top-(k+3) vectors. Each teacher vector is matched to
    the student vector of largest |cosine|, sign-flipped to agree; both are scaled by the teacher's
    normalised singular values. For consecutive stages, ``R_ijκ = exp(-(v^l_iκ - v^(l-1)_jκ)²/8)``; the loss
    is ``sum (R_s - R_t)²`` with non-finite entries zeroed, summed over stage pairs, divided by B.

    SVD signs are arbitrary; the student's sign is removed by the alignment and the teacher vector's sign
    is fixed so its largest-magnitude entry is positive (non-negative vectors for post-ReLU maps), which
    makes the loss independent of the SVD backend. Student and teacher channels must match per stage.
    Vectors come from a float32 eigendecomposition of the smaller of XᵀX (C × C) and XXᵀ (HW × HW), the
    KD-EID route, with a degeneracy-safe gradient. Default outer
    weight 1.0 (mdistiller), k = 1; the method clips this loss's gradient to the CE gradient's norm
    × sigmoid(epoch) (official), which is the method's job, not this function's.
    """
    _check_lists(student_features, teacher_features, "kdsvd")
    if k < 1:
        raise ValueError(f"kdsvd k={k} must be >= 1; use the default k=1")
    total = student_features[0].float().sum() * 0.0
    prev_s: Tensor | None = None
    prev_t: Tensor | None = None
    for i, (s, t) in enumerate(zip(student_features, teacher_features, strict=True)):
        _check_4d(s, "kdsvd student feature")
        _check_4d(t, "kdsvd teacher feature")
        _check_batch(s, t, "kdsvd")
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"kdsvd stage {i}: student has {s.shape[1]} channels, teacher {t.shape[1]}; KD-SVD needs "
                f"equal channels per stage: add a connector or choose stages with matching widths"
            )
        c = t.shape[1]
        rank_t = min(c, t.shape[-2] * t.shape[-1])
        rank_s = min(c, s.shape[-2] * s.shape[-1])
        if k > rank_t or k > rank_s:
            raise ValueError(f"kdsvd stage {i}: k={k} exceeds min(C, H*W)={min(rank_t, rank_s)}; lower k")
        v_t, sv_t = _right_singular(_teacher(t), k)
        v_s, _ = _right_singular(s.float(), min(k + 3, rank_s))
        sv_t = F.normalize(sv_t, dim=1)
        # Teacher sign: largest-|entry| positive.
        idx = v_t.abs().argmax(dim=1, keepdim=True)
        sign_t = torch.sign(v_t.gather(1, idx))
        v_t = v_t * torch.where(sign_t == 0, torch.ones_like(sign_t), sign_t)
        # Align: for each teacher vector the student vector of max |cosine|, signed to agree.
        cos = (v_s.transpose(1, 2) @ v_t).detach()  # (B, n_s, k)
        pick = cos.abs().argmax(dim=1, keepdim=True)  # (B, 1, k)
        sign = torch.sign(cos.gather(1, pick))
        v_s = v_s.gather(2, pick.expand(-1, c, -1)) * sign
        v_t = v_t * sv_t.unsqueeze(1)
        v_s = v_s * sv_t.unsqueeze(1)
        if prev_s is not None and prev_t is not None:
            r_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            r_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            sq = (r_s - r_t).pow(2)
            total = total + torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum()
        prev_s, prev_t = v_s, v_t
    return total / student_features[0].shape[0]


# --------------------------------------------------------------------------------------------- ReviewKD


@_fp32
def reviewkd_hcl(
    student_outputs: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    pool_sizes: Sequence[int] = (4, 2, 1),
    pool_weights: Sequence[float] = (0.5, 0.25, 0.125),
) -> Tensor:
    """ReviewKD hierarchical context loss, summed over levels (Chen et al. 2021; docs/methods.md#reviewkd).

    Per level: ``[MSE(O, F_t) + Σ w·MSE(P_l O, P_l F_t)] / (1 + Σ w)`` with P_l adaptive average pooling to
    l × l. As in the official ``hcl``, a pool size l is used only if ``l < H`` (here ``l < min(H, W)``),
    and the weights go to the *used* sizes in order: an 8×8 map uses 4, 2, 1 with ½, ¼, ⅛; a 4×4 map uses
    2, 1 with ½, ¼; a 1×1 map (the pooled embedding) uses plain MSE. ``student_outputs`` are the ABF
    outputs at the teacher's shape. Default outer weight 5.0 (CIFAR res32x4→res8x4; per pair 0.6–8,
    ImageNet 1.0), ramped by ``min(epoch/20, 1)``.
    """
    _check_lists(student_outputs, teacher_features, "reviewkd_hcl")
    if len(pool_sizes) != len(pool_weights):
        raise ValueError(
            f"reviewkd_hcl: {len(pool_sizes)} pool sizes but {len(pool_weights)} weights; "
            f"give one weight per size"
        )
    total = student_outputs[0].float().sum() * 0.0
    for i, (o, t) in enumerate(zip(student_outputs, teacher_features, strict=True)):
        _check_4d(o, "reviewkd_hcl student output")
        _check_same_shape(
            o,
            t,
            f"reviewkd_hcl level {i}",
            "the ABF output size/channels must match the "
            "teacher feature (check the shapes/out_channels lists)",
        )
        o, t = o.float(), _teacher(t)
        level = F.mse_loss(o, t)
        denom = 1.0
        used = 0
        for size in pool_sizes:
            if size >= min(o.shape[-2], o.shape[-1]):
                continue
            w = float(pool_weights[used])
            used += 1
            level = level + w * F.mse_loss(F.adaptive_avg_pool2d(o, size), F.adaptive_avg_pool2d(t, size))
            denom += w
        total = total + level / denom
    return total


# --------------------------------------------------------------------------------------------- ICKD


def channel_correlation(feature: Tensor) -> Tensor:
    """Row-normalised inter-channel Gram matrices, shape (B, C, C) (ICKD; docs/methods.md#ickd).

    Per sample, X = the map as C × HW; G = XXᵀ; each row of G divided by its L2 norm (a zero row stays 0).
    """
    _check_4d(feature, "channel_correlation feature")
    x = feature.float().flatten(2)
    return F.normalize(torch.bmm(x, x.transpose(1, 2)), dim=2)


@_fp32
def ickd(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Inter-channel correlation distillation, CIFAR form: ``sum_{b,i,j} (G~s - G~t)² / (C·B)``.

    Liu et al. 2021 (docs/methods.md#ickd; github.com/ADLab-AutoDrive/ICKD ``Cifar100/distiller_zoo/ICKD.py``).
    ``G~`` is :func:`channel_correlation`; ``student_feature`` has been through the embedding (1×1 conv + BN
    to the teacher's C channels). Spatial sizes may differ: the C × C matrices sum over positions. Default
    outer weight β = 2.5 (official README).
    """
    _check_4d(student_feature, "ickd student feature")
    _check_4d(teacher_feature, "ickd teacher feature")
    _check_batch(student_feature, teacher_feature, "ickd")
    b, c = student_feature.shape[0], student_feature.shape[1]
    if teacher_feature.shape[1] != c:
        raise ValueError(
            f"ickd: student has {c} channels, teacher {teacher_feature.shape[1]}; pass the student map "
            f"through a 1x1 conv to the teacher's channels first"
        )
    diff = channel_correlation(student_feature) - channel_correlation(_teacher(teacher_feature))
    return diff.pow(2).sum() / (c * b)


# --------------------------------------------------------------------------------------------- PAD-L2


def _check_embeddings(s: Tensor, t: Tensor, what: str) -> None:
    if s.dim() != 2 or s.shape != t.shape:
        raise ValueError(
            f"{what}: student embedding {tuple(s.shape)} and teacher embedding {tuple(t.shape)} must both be "
            f"(B, D) with the same D; tap the pooled embeddings and map the student to the teacher's width"
        )


@_fp32
def embedding_l2(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Elementwise MSE of pooled embeddings, ``mean_{B,D} (f_s - f_t)²``: PAD-L2's first (L2) stage.

    torchdistill ``ce_l2`` config (``MSELoss`` on ``avgpool``, weight 15; docs/methods.md#pad).
    """
    _check_embeddings(student_embedding, teacher_embedding, "embedding_l2")
    return F.mse_loss(student_embedding.float(), _teacher(teacher_embedding))


@_fp32
def pad_l2(student_embedding: Tensor, teacher_embedding: Tensor, log_variance: Tensor, eps: float = 1e-6) -> Tensor:
    """Prime-aware adaptive distillation with L2: ``mean_B mean_D [(f_t - f_s)²/(eps + e^ℓ) + ℓ]``.

    Zhang et al. 2020 (docs/methods.md#pad), as torchdistill's ``PADL2Loss`` (``losses/mid_level.py``).
    ``log_variance`` ℓ (B, D) is the variance branch's output on the student embedding; it keeps its
    gradient, as does the student embedding. Default outer weight 1.0.
    """
    _check_embeddings(student_embedding, teacher_embedding, "pad_l2")
    if log_variance.shape != student_embedding.shape:
        raise ValueError(
            f"pad_l2: log-variance {tuple(log_variance.shape)} must have the embeddings' shape "
            f"{tuple(student_embedding.shape)}; the variance branch maps D features to D log-variances"
        )
    if not eps >= 0:
        raise ValueError(f"pad_l2 eps={eps} must be >= 0; use the default 1e-6")
    lv = log_variance.float()
    sq = (_teacher(teacher_embedding) - student_embedding.float()).pow(2)
    return (sq / (eps + lv.exp()) + lv).mean()


# --------------------------------------------------------------------------------------------- CAT-KD


@_fp32
def class_activation_maps(feature: Tensor, classifier_weight: Tensor) -> Tensor:
    """Class activation maps ``A_k = Σ_c W_kc F_c``, shape (B, K, H, W): the classifier as a 1×1 conv, no bias.

    ``feature`` is the map that the global average pooling reduces to the classifier's input (CAT-KD;
    docs/methods.md#catkd). Pooling commutes with this map, so ``pool(A) = CAMs of pool(F)``.
    """
    _check_4d(feature, "class_activation_maps feature")
    if classifier_weight.dim() != 2 or classifier_weight.shape[1] != feature.shape[1]:
        raise ValueError(
            f"class_activation_maps: classifier weight {tuple(classifier_weight.shape)} does not fit a map with "
            f"{feature.shape[1]} channels; pass the (K, C) weight of the Linear that reads the pooled map"
        )
    return torch.einsum("bchw,kc->bkhw", feature.float(), classifier_weight.float())


@_fp32
def catkd(student_cams: Tensor, teacher_cams: Tensor, resolution: int = 2, normalize: bool = False) -> Tensor:
    """Class attention transfer: ``mean_{B,K,r,r} (φ(P_r A_s) - φ(P_r A_t))²`` (Guo et al. 2023).

    docs/methods.md#catkd; github.com/GzyAftermath/CAT-KD ``mdistiller/distillers/CAT_KD.py`` (``CAT_loss``).
    P_r is adaptive average pooling to r × r (so spatial sizes may differ); φ divides each (sample, class)
    r × r map by its L2 norm when ``normalize``, else is the identity. Default outer weight β = 15
    (res32x4→res8x4 config; 0.7–600 per pair).
    """
    _check_4d(student_cams, "catkd student CAMs")
    _check_4d(teacher_cams, "catkd teacher CAMs")
    _check_batch(student_cams, teacher_cams, "catkd")
    if student_cams.shape[1] != teacher_cams.shape[1]:
        raise ValueError(
            f"catkd: student has {student_cams.shape[1]} class maps, teacher {teacher_cams.shape[1]}; both "
            f"networks must classify the same classes"
        )
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"catkd resolution={resolution!r} must be an integer >= 1; use e.g. 2")
    s = _pool_to(student_cams.float(), (resolution, resolution))
    t = _pool_to(_teacher(teacher_cams), (resolution, resolution))
    if normalize:
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)
    return F.mse_loss(s, t)
