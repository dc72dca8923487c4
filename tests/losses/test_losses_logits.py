"""Tests for kdlab.losses.logits against independent float64 references written from docs/methods.md.

The references below use plain Python loops over samples and classes with ``math`` (no torch ops), so
they share no code with the vectorised implementations they check.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses.logits import (
    average_teacher_probs,
    dist,
    dist_terms,
    dkd,
    dkd_terms,
    dkd_warmup,
    dml,
    dml_ensemble,
    kd,
    kd_from_probs,
    logit_standardize,
    logit_standardized_kd,
    pearson,
    srd,
    srd_dist,
    srd_terms,
    tfkd_self,
    tfkd_virtual,
    virtual_teacher_probs,
)

# ---------------------------------------------------------------------------------------------------------
# independent float64 references (lists of lists, math only)


def rand(seed: int, *shape: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


def labels(seed: int, b: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (b,), generator=g)


def r_softmax(row: list[float], temp: float = 1.0) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    s = sum(e)
    return [x / s for x in e]


def r_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def r_entropy(p: list[float]) -> float:
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def r_kd(s: list[list[float]], t: list[list[float]], temp: float) -> float:
    total = 0.0
    for i in range(len(s)):
        total += r_kl(r_softmax(t[i], temp), r_softmax(s[i], temp))
    return temp**2 * total / len(s)


def r_kd_probs(s: list[list[float]], q: list[list[float]], temp: float) -> float:
    return temp**2 * sum(r_kl(q[i], r_softmax(s[i], temp)) for i in range(len(s))) / len(s)


def r_dkd_terms(s, t, y, temp):
    """Per-sample (TCKD, NCKD), each times T^2, straight from the definitions (docs/methods.md#dkd)."""
    tckd, nckd = [], []
    for i in range(len(s)):
        ps, pt = r_softmax(s[i], temp), r_softmax(t[i], temp)
        yi = y[i]
        bs = [ps[yi], sum(ps[k] for k in range(len(ps)) if k != yi)]
        bt = [pt[yi], sum(pt[k] for k in range(len(pt)) if k != yi)]
        hs = [ps[k] / bs[1] for k in range(len(ps)) if k != yi]
        ht = [pt[k] / bt[1] for k in range(len(pt)) if k != yi]
        tckd.append(temp**2 * r_kl(bt, bs))
        nckd.append(temp**2 * r_kl(ht, hs))
    return tckd, nckd


def r_pearson(u: list[float], v: list[float], eps: float = 1e-8) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    num = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    nu = math.sqrt(sum((a - mu) ** 2 for a in u))
    nv = math.sqrt(sum((b - mv) ** 2 for b in v))
    return num / (nu * nv + eps)


def r_dist_terms(s, t, temp):
    ys = [r_softmax(row, temp) for row in s]
    yt = [r_softmax(row, temp) for row in t]
    b, k = len(ys), len(ys[0])
    inter = 1 - sum(r_pearson(ys[i], yt[i]) for i in range(b)) / b
    intra = 1 - sum(r_pearson([ys[i][c] for i in range(b)], [yt[i][c] for i in range(b)]) for c in range(k)) / k
    return temp**2 * inter, temp**2 * intra


def r_standardize(row: list[float], eps: float = 1e-7) -> list[float]:
    k = len(row)
    mean = sum(row) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))  # unbiased
    return [(v - mean) / (std + eps) for v in row]


def r_virtual(y: int, k: int, a: float, tau: float) -> list[float]:
    pd = [a if c == y else (1 - a) / (k - 1) for c in range(k)]
    return r_softmax(pd, tau)


def r_mse(x: list[list[float]], z: list[list[float]]) -> float:
    n = sum(len(r) for r in x)
    return sum((a - b) ** 2 for rx, rz in zip(x, z, strict=True) for a, b in zip(rx, rz, strict=True)) / n


def r_gap(f: list) -> list[list[float]]:
    """Global average pool of a nested (B, C, H, W) list."""
    out = []
    for sample in f:
        row = []
        for ch in sample:
            vals = [v for line in ch for v in line]
            row.append(sum(vals) / len(vals))
        out.append(row)
    return out


def close(value: torch.Tensor, ref: float, rel: float = 1e-9, abs_: float = 1e-12) -> None:
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(ref, rel=rel, abs=abs_)


# ---------------------------------------------------------------------------------------------------------
# KD


@pytest.mark.parametrize("b,k,temp", [(4, 5, 1.0), (8, 10, 4.0), (6, 7, 2.5)])
def test_kd_matches_reference(b, k, temp):
    s, t = rand(0, b, k), rand(1, b, k)
    close(kd(s, t, temperature=temp), r_kd(s.tolist(), t.tolist(), temp))


def test_kd_default_temperature_is_4():
    s, t = rand(2, 5, 6), rand(3, 5, 6)
    close(kd(s, t), r_kd(s.tolist(), t.tolist(), 4.0))


def test_kd_hand_value_two_classes():
    # teacher softmax([T ln 3, 0] / T) = [3/4, 1/4]; student uniform.
    # T^2 * KL = 16 * (0.75 ln 1.5 + 0.25 ln 0.5) = 2.0929925750...
    temp = 4.0
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[temp * math.log(3.0), 0.0]], dtype=torch.float64)
    close(kd(s, t, temperature=temp), 2.0929925750581915)
    # batch-mean: repeating the sample does not change the value
    close(kd(s.repeat(3, 1), t.repeat(3, 1), temperature=temp), 2.0929925750581915)


def test_kd_zero_for_identical_logits_and_gradient_only_to_student():
    t = rand(4, 6, 8)
    assert float(kd(t.clone(), t)) == pytest.approx(0.0, abs=1e-12)

    s = rand(5, 6, 8).requires_grad_()
    t_frozen = rand(6, 6, 8)  # no requires_grad
    kd(s, t_frozen).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # gradient of T^2 KL wrt z_s is T (softmax(z_s/T) - softmax(z_t/T)) / B
    expected = 4.0 * (F.softmax(s.detach() / 4, 1) - F.softmax(t_frozen / 4, 1)) / 6
    torch.testing.assert_close(s.grad, expected)

    # a teacher tensor that does require grad is treated as a constant target
    s2 = rand(5, 6, 8).requires_grad_()
    t2 = rand(6, 6, 8).requires_grad_()
    kd(s2, t2).backward()
    assert t2.grad is None
    torch.testing.assert_close(s2.grad, expected)


def test_kd_from_probs_equals_kd_and_reference():
    s, t = rand(7, 5, 9), rand(8, 5, 9)
    for temp in (1.0, 4.0):
        q = F.softmax(t / temp, dim=1)
        torch.testing.assert_close(kd_from_probs(s, q, temperature=temp), kd(s, t, temperature=temp))
        close(kd_from_probs(s, q, temperature=temp), r_kd_probs(s.tolist(), q.tolist(), temp))
    # exact zeros in the target distribution contribute 0 (0 log 0 = 0), not NaN
    q = torch.zeros(5, 9, dtype=torch.float64)
    q[:, 0] = 1.0
    val = kd_from_probs(s, q, temperature=1.0)
    close(val, r_kd_probs(s.tolist(), q.tolist(), 1.0))


def test_average_teacher_probs():
    t1, t2 = rand(9, 4, 6), rand(10, 4, 6)
    # one teacher == softmax(t / T)
    torch.testing.assert_close(average_teacher_probs([t1], temperature=3.0), F.softmax(t1 / 3.0, dim=1))
    # unnormalised weights [1, 3] -> [0.25, 0.75]
    got = average_teacher_probs([t1, t2], weights=[1.0, 3.0], temperature=2.0).tolist()
    for i in range(4):
        p1, p2 = r_softmax(t1[i].tolist(), 2.0), r_softmax(t2[i].tolist(), 2.0)
        for c in range(6):
            assert got[i][c] == pytest.approx(0.25 * p1[c] + 0.75 * p2[c], rel=1e-12)
    # default weights are equal
    eq = average_teacher_probs([t1, t2])
    torch.testing.assert_close(eq, 0.5 * (F.softmax(t1, 1) + F.softmax(t2, 1)))
    with pytest.raises(ValueError):
        average_teacher_probs([t1, t2], weights=[1.0])
    with pytest.raises(ValueError):
        average_teacher_probs([t1, t2], weights=[-1.0, 2.0])
    with pytest.raises(ValueError):
        average_teacher_probs([t1, rand(11, 4, 7)])
    with pytest.raises(ValueError):
        average_teacher_probs([])


# ---------------------------------------------------------------------------------------------------------
# DKD


@pytest.mark.parametrize("b,k,temp,alpha,beta", [(4, 5, 4.0, 1.0, 8.0), (8, 10, 1.0, 0.5, 2.0), (5, 6, 2.0, 2.0, 6.0)])
def test_dkd_matches_reference(b, k, temp, alpha, beta):
    s, t, y = rand(12, b, k), rand(13, b, k), labels(14, b, k)
    tckd, nckd = r_dkd_terms(s.tolist(), t.tolist(), y.tolist(), temp)
    ref = alpha * sum(tckd) / b + beta * sum(nckd) / b
    close(dkd(s, t, y, alpha=alpha, beta=beta, temperature=temp), ref)
    got_t, got_n = dkd_terms(s, t, y, temperature=temp, reduction="none")
    assert got_t.tolist() == pytest.approx(tckd, rel=1e-9)
    assert got_n.tolist() == pytest.approx(nckd, rel=1e-9)


def test_dkd_equals_official_minus_1000_mask_in_normal_range():
    # mdistiller masks the target with -1000 after dividing by T; dropping the column is the same up to e^-1000
    b, k, temp = 5, 7, 4.0
    s, t, y = rand(150, b, k), rand(151, b, k), labels(152, b, k)
    mask = F.one_hot(y, k).bool()
    log_hs = F.log_softmax(s / temp - 1000.0 * mask, dim=1)
    log_ht = F.log_softmax(t / temp - 1000.0 * mask, dim=1)
    nckd = (log_ht.exp() * (log_ht - log_hs)).sum(1).mean() * temp**2
    torch.testing.assert_close(dkd_terms(s, t, y, temperature=temp)[1], nckd)


def test_dkd_defaults():
    s, t, y = rand(15, 4, 5), rand(16, 4, 5), labels(17, 4, 5)
    tckd, nckd = r_dkd_terms(s.tolist(), t.tolist(), y.tolist(), 4.0)
    close(dkd(s, t, y), (1.0 * sum(tckd) + 8.0 * sum(nckd)) / 4)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_decomposition_identity_gives_kd(temp):
    # KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t_y) KL(p̂_t || p̂_s), per sample (T^2 on every term)
    b, k = 6, 8
    s, t, y = rand(18, b, k), rand(19, b, k), labels(20, b, k)
    tckd, nckd = dkd_terms(s, t, y, temperature=temp, reduction="none")
    pt_y = F.softmax(t / temp, dim=1)[torch.arange(b), y]
    torch.testing.assert_close((tckd + (1 - pt_y) * nckd).mean(), kd(s, t, temperature=temp))
    # with a single sample, dkd(alpha=1, beta=1 - p_t_y) is exactly KD
    for i in range(b):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        got = dkd(si, ti, yi, alpha=1.0, beta=float(1 - pt_y[i]), temperature=temp)
        torch.testing.assert_close(got, kd(si, ti, temperature=temp))


def test_dkd_finite_under_extreme_logits_and_bf16():
    b, k = 4, 6
    y = torch.tensor([0, 1, 2, 3])
    s = torch.full((b, k), -1e4)
    s[torch.arange(b), (y + 1) % k] = 1e4  # student sure of a wrong class
    t = torch.full((b, k), -1e4)
    t[torch.arange(b), y] = 1e4  # teacher sure of the right one
    s.requires_grad_()
    loss = dkd(s, t, y)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(s.grad).all()
    # the reverse extremes (student certain of the target) too
    for s_ext in (t.clone().requires_grad_(), (-t).clone().requires_grad_()):
        val = dkd(s_ext, s.detach(), y)
        val.backward()
        assert torch.isfinite(val) and torch.isfinite(s_ext.grad).all()

    # bf16 inputs: computed in float32, equal to the float32 result on the same (rounded) values
    s16, t16 = rand(21, b, k).to(torch.bfloat16), rand(22, b, k).to(torch.bfloat16)
    out = dkd(s16, t16, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, dkd(s16.float(), t16.float(), y))
    ext16 = dkd(s.detach().to(torch.bfloat16), t.to(torch.bfloat16), y)
    assert torch.isfinite(ext16)


def test_dkd_bad_target():
    s, t = rand(23, 4, 5), rand(24, 4, 5)
    with pytest.raises(ValueError, match="target"):
        dkd(s, t, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="target"):
        dkd(s, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target"):
        dkd(s, t, F.one_hot(torch.tensor([0, 1, 2, 3]), 5))
    with pytest.raises(ValueError, match="target"):
        dkd(s, t, torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_dkd_warmup():
    assert dkd_warmup(1) == pytest.approx(0.05)
    assert dkd_warmup(10) == pytest.approx(0.5)
    assert dkd_warmup(20) == 1.0
    assert dkd_warmup(240) == 1.0
    assert dkd_warmup(1, warmup=1) == 1.0
    assert dkd_warmup(3, warmup=0) == 1.0
    with pytest.raises(ValueError):
        dkd_warmup(-1)


# ---------------------------------------------------------------------------------------------------------
# DIST


@pytest.mark.parametrize("b,k,temp,beta,gamma", [(4, 5, 1.0, 1.0, 1.0), (8, 10, 4.0, 2.0, 0.5), (6, 7, 2.0, 1.0, 3.0)])
def test_dist_matches_reference(b, k, temp, beta, gamma):
    s, t = rand(25, b, k), rand(26, b, k)
    inter, intra = r_dist_terms(s.tolist(), t.tolist(), temp)
    got_inter, got_intra = dist_terms(s, t, temperature=temp)
    close(got_inter, inter)
    close(got_intra, intra)
    close(dist(s, t, beta=beta, gamma=gamma, temperature=temp), beta * inter + gamma * intra)


def test_dist_defaults_and_zero_for_identical():
    s, t = rand(27, 5, 6), rand(28, 5, 6)
    inter, intra = r_dist_terms(s.tolist(), t.tolist(), 1.0)
    close(dist(s, t), inter + intra)
    for temp in (1.0, 4.0):
        # 0 up to the eps = 1e-8 in Pearson's denominator: 1 - |x|^2 / (|x|^2 + eps) with |x|^2 ~ 1e-2
        same = float(dist(t.clone(), t, temperature=temp))
        assert 0.0 <= same < 1e-4
        assert float(dist(s, t, temperature=temp)) > 1000 * same


def test_pearson_reference_and_affine_invariance():
    ys = F.softmax(rand(29, 6, 8), dim=1)
    yt = F.softmax(rand(30, 6, 8), dim=1)
    rows = pearson(ys, yt, dim=1).tolist()
    cols = pearson(ys, yt, dim=0).tolist()
    for i in range(6):
        assert rows[i] == pytest.approx(r_pearson(ys[i].tolist(), yt[i].tolist()), rel=1e-9)
    for c in range(8):
        assert cols[c] == pytest.approx(r_pearson(ys[:, c].tolist(), yt[:, c].tolist()), rel=1e-9)
    for a, b in ((2.5, 0.3), (0.1, -4.0)):
        for dim in (0, 1):
            torch.testing.assert_close(pearson(a * ys + b, yt, dim=dim), pearson(ys, yt, dim=dim),
                                       rtol=1e-5, atol=1e-6)
    # a negative scale flips the sign
    torch.testing.assert_close(pearson(-ys, yt), -pearson(ys, yt))


def test_dist_gradient_only_to_student():
    s = rand(31, 6, 5).requires_grad_()
    t = rand(32, 6, 5).requires_grad_()
    dist(s, t, temperature=4.0).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def _degenerate_batches():
    """(student, teacher) logits whose centred rows or columns are zero (up to the rounding of the mean)."""
    one = (rand(33, 1, 5), rand(34, 1, 5))  # batch of 1: every column is constant
    row_s, row_t = rand(35, 1, 5), rand(36, 1, 5)
    same = (row_s.expand(2, 5).clone(), row_t.expand(2, 5).clone())  # collapsed batch on both sides
    half = (row_s.expand(2, 5).clone(), rand(37, 2, 5))  # duplicated student rows only
    flat = (torch.zeros(3, 5), rand(38, 3, 5))  # constant rows: zero centred rows
    return {"batch of 1": one, "identical rows": same, "student rows identical": half, "constant rows": flat}


# A float64 mean of equal entries may be off by an ulp (~4e-16 for logits of size 3), which leaves a "zero"
# centred vector of norm <= ~1e-15 and rho <= 1e-15 * |y - ȳ| (<= 10) / eps (1e-8) ~ 1e-6 (times tau^2 <= 16
# on softmax outputs, whose ulp is 10x smaller); the pure-Python reference rounds its own way.
DEGENERATE_ABS = 2e-6


@pytest.mark.parametrize("case", list(_degenerate_batches()))
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dist_value_and_gradient_finite_on_degenerate_batches(case, temp):
    s, t = _degenerate_batches()[case]
    inter, intra = r_dist_terms(s.tolist(), t.tolist(), temp)
    for fn in (lambda a, b: dist(a, b, temperature=temp), lambda a, b: sum(dist_terms(a, b, temperature=temp))):
        x = s.clone().requires_grad_()
        value = fn(x, t)
        close(value, inter + intra, rel=1e-9, abs_=DEGENERATE_ABS)
        value.backward()
        assert torch.isfinite(x.grad).all(), case


@pytest.mark.parametrize("case", list(_degenerate_batches()))
@pytest.mark.parametrize("softmax", [False, True])
def test_srd_dist_value_and_gradient_finite_on_degenerate_batches(case, softmax):
    cross, tl = _degenerate_batches()[case]
    b = cross.shape[0]
    fs, ft = rand(39, b, 3, 2, 2).requires_grad_(), rand(40, b, 3, 2, 2)
    cross = cross.clone().requires_grad_()
    value = srd_dist(fs, ft, cross, tl, softmax=softmax)
    c, t = cross.tolist(), tl.tolist()
    ref_sr = sum(r_dist_terms(c, t, 1.0) if softmax else r_pearson_terms(c, t))
    close(value, r_mse(r_gap(fs.tolist()), r_gap(ft.tolist())) + ref_sr, rel=1e-9, abs_=DEGENERATE_ABS)
    value.backward()
    assert torch.isfinite(cross.grad).all() and torch.isfinite(fs.grad).all(), case


def test_pearson_gradient_finite_at_zero_centred_vectors_and_matches_float64_elsewhere():
    x = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    y = rand(41, 2, 4)
    p = pearson(x, y, dim=1)
    assert torch.equal(p.detach(), torch.zeros(2, dtype=torch.float64))
    p.sum().backward()
    assert torch.isfinite(x.grad).all()
    # elsewhere autograd's gradient agrees with float64 finite differences
    x = rand(42, 3, 6).requires_grad_()
    y = rand(43, 3, 6)
    assert torch.autograd.gradcheck(lambda a: pearson(a, y, dim=1), (x,))
    assert torch.autograd.gradcheck(lambda a: pearson(a, y, dim=0), (x,))


# ---------------------------------------------------------------------------------------------------------
# Logit standardization


def test_logit_standardize_reference():
    z = rand(33, 5, 7)
    got = logit_standardize(z).tolist()
    for i in range(5):
        assert got[i] == pytest.approx(r_standardize(z[i].tolist()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("temp", [2.0, 3.0])
def test_logit_standardized_kd_reference(temp):
    s, t = rand(34, 6, 9), rand(35, 6, 9)
    zs = [r_standardize(r) for r in s.tolist()]
    zt = [r_standardize(r) for r in t.tolist()]
    close(logit_standardized_kd(s, t, temperature=temp), r_kd(zs, zt, temp))


def test_logit_standardized_kd_default_temperature_and_invariance():
    s, t = rand(36, 4, 6), rand(37, 4, 6)
    zs = [r_standardize(r) for r in s.tolist()]
    zt = [r_standardize(r) for r in t.tolist()]
    close(logit_standardized_kd(s, t), r_kd(zs, zt, 2.0))
    base = logit_standardized_kd(s, t)
    scale = torch.tensor([[0.5], [3.0], [10.0], [1.7]], dtype=torch.float64)
    shift = torch.tensor([[-2.0], [4.0], [0.0], [100.0]], dtype=torch.float64)
    torch.testing.assert_close(logit_standardized_kd(s * scale + shift, t), base, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logit_standardized_kd(s, t * scale + shift), base, rtol=1e-6, atol=1e-9)
    # plain KD is not invariant, so the check above is not vacuous
    assert abs(float(kd(s * scale + shift, t, temperature=2.0) - kd(s, t, temperature=2.0))) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# Tf-KD


@pytest.mark.parametrize("b,k,temp,m", [(4, 5, 6.0, 50.0), (8, 10, 20.0, 1.0), (5, 7, 1.0, 2.0)])
def test_tfkd_self_matches_reference_mean_reduction(b, k, temp, m):
    s, t = rand(38, b, k), rand(39, b, k)
    total = sum(r_kl(r_softmax(t[i].tolist(), temp), r_softmax(s[i].tolist(), temp)) for i in range(b))
    ref = m * temp**2 * total / (b * k)  # 'mean' reduction divides by B*K
    close(tfkd_self(s, t, temp, multiplier=m), ref)
    # i.e. the batch-mean KD divided by K
    torch.testing.assert_close(tfkd_self(s, t, temperature=temp), kd(s, t, temperature=temp) / k)


def test_virtual_teacher_probs():
    y = torch.tensor([3, 0, 99])
    q = virtual_teacher_probs(y, 100, correct_prob=0.99, temperature=20.0)
    assert q.shape == (3, 100) and q.dtype == torch.float32
    # docs/methods.md#tfkd_virtual worked value: q_y ≈ 0.0105 vs uniform 0.01
    assert float(q[0, 3]) == pytest.approx(0.0105, abs=5e-5)
    torch.testing.assert_close(q.sum(1), torch.ones(3))
    q64 = virtual_teacher_probs(labels(40, 6, 7), 7, correct_prob=0.9, temperature=10.0, dtype=torch.float64)
    for i, yi in enumerate(labels(40, 6, 7).tolist()):
        assert q64[i].tolist() == pytest.approx(r_virtual(yi, 7, 0.9, 10.0), rel=1e-12)
    with pytest.raises(ValueError):
        virtual_teacher_probs(torch.tensor([5]), 5)


def test_tfkd_virtual_hand_value_two_classes():
    # K=2, y=0, a=0.99: p_d = [0.99, 0.01], q = softmax(p_d/20) = [sigmoid(0.049), 1 - sigmoid(0.049)];
    # student logits 0 -> untempered softmax [0.5, 0.5]; 'mean' reduction divides by B*K = 2:
    # (q0 ln(2 q0) + q1 ln(2 q1)) / 2 with q0 = 0.51224754957 -> 1.50017474504e-4
    s = torch.zeros(1, 2, dtype=torch.float64)
    close(tfkd_virtual(s, torch.tensor([0])), 1.5001747450412925e-4, rel=1e-9)
    close(tfkd_virtual(s, torch.tensor([0]), multiplier=100.0), 1.5001747450412925e-2, rel=1e-9)


@pytest.mark.parametrize("b,k,a,tau,m", [(4, 5, 0.99, 20.0, 1.0), (8, 10, 0.9, 40.0, 100.0), (6, 6, 0.99, 10.0, 50.0)])
def test_tfkd_virtual_matches_reference(b, k, a, tau, m):
    s, y = rand(41, b, k), labels(42, b, k)
    total = 0.0
    for i in range(b):
        q = r_virtual(int(y[i]), k, a, tau)
        total += r_kl(q, r_softmax(s[i].tolist(), 1.0))  # student NOT tempered, no tau^2
    close(tfkd_virtual(s, y, correct_prob=a, temperature=tau, multiplier=m), m * total / (b * k))


# ---------------------------------------------------------------------------------------------------------
# SRD and SRDwithDIST


def _srd_inputs(seed: int, four_d: bool = True):
    b, c, k = 4, 3, 5
    fs = rand(seed, b, c, 2, 3) if four_d else rand(seed, b, c)
    ft = rand(seed + 1, b, c, 2, 3) if four_d else rand(seed + 1, b, c)
    cross = rand(seed + 2, b, k)
    tl = rand(seed + 3, b, k)
    return fs, ft, cross, tl


@pytest.mark.parametrize("four_d", [True, False])
def test_srd_terms_match_reference(four_d):
    fs, ft, cross, tl = _srd_inputs(43, four_d)
    pooled_s = r_gap(fs.tolist()) if four_d else fs.tolist()
    pooled_t = r_gap(ft.tolist()) if four_d else ft.tolist()
    ref_fm = r_mse(pooled_s, pooled_t)
    ref_sr = r_mse(cross.tolist(), tl.tolist())
    fm, sr = srd_terms(fs, ft, cross, tl)
    close(fm, ref_fm)
    close(sr, ref_sr)
    close(srd(fs, ft, cross, tl), ref_fm + ref_sr)
    close(srd(fs, ft, cross, tl, feature_weight=10.0), 10.0 * ref_fm + ref_sr)


def test_srd_gradients_and_errors():
    fs, ft, cross, tl = _srd_inputs(47)
    for x in (fs, ft, cross, tl):
        x.requires_grad_()
    srd(fs, ft, cross, tl).backward()
    assert fs.grad.abs().sum() > 0 and cross.grad.abs().sum() > 0
    assert ft.grad is None and tl.grad is None
    with pytest.raises(ValueError, match="connector"):
        srd(rand(1, 4, 2, 2, 3), rand(2, 4, 3, 2, 3), cross.detach(), tl.detach())
    with pytest.raises(ValueError):
        srd(fs.detach(), ft.detach(), rand(3, 4, 6), tl.detach())


def r_pearson_terms(s, t):
    """(1 - mean row correlation, 1 - mean column correlation) of raw matrices: no softmax, no tau^2."""
    b, k = len(s), len(s[0])
    inter = 1 - sum(r_pearson(s[i], t[i]) for i in range(b)) / b
    intra = 1 - sum(r_pearson([s[i][c] for i in range(b)], [t[i][c] for i in range(b)]) for c in range(k)) / k
    return inter, intra


@pytest.mark.parametrize("temp,beta,gamma,w", [(1.0, 1.0, 1.0, 1.0), (4.0, 2.0, 0.5, 10.0)])
def test_srd_dist_softmax_variant_matches_reference(temp, beta, gamma, w):
    fs, ft, cross, tl = _srd_inputs(51)
    ref_fm = r_mse(r_gap(fs.tolist()), r_gap(ft.tolist()))
    inter, intra = r_dist_terms(cross.tolist(), tl.tolist(), temp)
    got = srd_dist(fs, ft, cross, tl, feature_weight=w, beta=beta, gamma=gamma, temperature=temp, softmax=True)
    close(got, w * ref_fm + beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,w", [(1.0, 1.0, 1.0), (2.0, 0.5, 10.0)])
def test_srd_dist_default_is_authors_raw_logit_pearson(beta, gamma, w):
    # SRDwithDIST's authors apply DIST's Pearson terms to the raw logits: no softmax, no temperature, no tau^2.
    fs, ft, cross, tl = _srd_inputs(53)
    ref_fm = r_mse(r_gap(fs.tolist()), r_gap(ft.tolist()))
    inter, intra = r_pearson_terms(cross.tolist(), tl.tolist())
    ref = w * ref_fm + beta * inter + gamma * intra
    close(srd_dist(fs, ft, cross, tl, feature_weight=w, beta=beta, gamma=gamma), ref)
    # differs from the softmax variant on the same inputs
    soft = srd_dist(fs, ft, cross, tl, feature_weight=w, beta=beta, gamma=gamma, softmax=True)
    assert abs(float(soft) - ref) > 1e-3
    # Pearson is invariant to a positive scale of the logits, so a temperature would do nothing: refused
    with pytest.raises(ValueError, match="softmax=True"):
        srd_dist(fs, ft, cross, tl, temperature=4.0)


def test_srd_dist_raw_gradient_reaches_cross_logits_not_teacher():
    fs, ft, cross, tl = _srd_inputs(55)
    for x in (fs, cross, tl):
        x.requires_grad_()
    srd_dist(fs, ft, cross, tl).backward()
    assert cross.grad.abs().sum() > 0 and fs.grad.abs().sum() > 0 and tl.grad is None


# ---------------------------------------------------------------------------------------------------------
# DML


def r_dml(peers: list[list[list[float]]], k: int, temp: float) -> float:
    others = [p for i, p in enumerate(peers) if i != k]
    return sum(r_kd(peers[k], o, temp) for o in others) / len(others)


def r_dml_ensemble(peers: list[list[list[float]]], k: int, temp: float) -> float:
    others = [p for i, p in enumerate(peers) if i != k]
    b = len(peers[k])
    total = 0.0
    for i in range(b):
        probs = [r_softmax(o[i], temp) for o in others]
        avg = [sum(p[c] for p in probs) / len(probs) for c in range(len(probs[0]))]
        total += r_kl(avg, r_softmax(peers[k][i], temp))
    return temp**2 * total / b


@pytest.mark.parametrize("m,temp", [(2, 1.0), (3, 1.0), (4, 2.0)])
def test_dml_matches_reference(m, temp):
    peers = [rand(60 + j, 5, 6) for j in range(m)]
    lists = [p.tolist() for p in peers]
    for k in range(m):
        close(dml(peers, k, temperature=temp), r_dml(lists, k, temp))
        close(dml_ensemble(peers, k, temperature=temp), r_dml_ensemble(lists, k, temp))
    close(dml(peers, -1, temperature=temp), r_dml(lists, m - 1, temp))


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dml_and_dml_ensemble_have_the_same_gradient(m, temp):
    peers = [rand(70 + j, 6, 7).requires_grad_() for j in range(m)]
    for k in range(m):
        g_dml = torch.autograd.grad(dml(peers, k, temperature=temp), peers[k])[0]
        g_ens = torch.autograd.grad(dml_ensemble(peers, k, temperature=temp), peers[k])[0]
        torch.testing.assert_close(g_dml, g_ens, rtol=1e-10, atol=1e-13)
        # both equal T (p_k - mean of the other peers' p_l) / B
        others = [F.softmax(p.detach() / temp, 1) for i, p in enumerate(peers) if i != k]
        expected = temp * (F.softmax(peers[k].detach() / temp, 1) - sum(others) / len(others)) / 6
        torch.testing.assert_close(g_dml, expected, rtol=1e-10, atol=1e-13)


def test_dml_values_equal_for_two_peers_and_differ_by_entropy_gap_for_three():
    two = [rand(80, 5, 6), rand(81, 5, 6)]
    torch.testing.assert_close(dml(two, 0), dml_ensemble(two, 0))
    three = [rand(82 + j, 5, 6) for j in range(3)]
    gap = float(dml(three, 0) - dml_ensemble(three, 0))
    # dml - dml_e = batch-mean of H(mean_l p_l) - mean_l H(p_l) >= 0 (entropy is concave)
    ref = 0.0
    for i in range(5):
        probs = [r_softmax(three[j][i].tolist()) for j in (1, 2)]
        avg = [(probs[0][c] + probs[1][c]) / 2 for c in range(6)]
        ref += r_entropy(avg) - (r_entropy(probs[0]) + r_entropy(probs[1])) / 2
    assert gap == pytest.approx(ref / 5, rel=1e-9)
    assert gap > 0


def test_dml_other_peers_get_no_gradient_and_errors():
    peers = [rand(90 + j, 4, 5).requires_grad_() for j in range(3)]
    dml(peers, 1).backward()
    assert peers[0].grad is None and peers[2].grad is None and peers[1].grad is not None
    with pytest.raises(ValueError):
        dml([rand(1, 4, 5)], 0)
    with pytest.raises(ValueError):
        dml([rand(1, 4, 5), rand(2, 4, 5)], 2)
    with pytest.raises(ValueError):
        dml_ensemble([rand(1, 4, 5), rand(2, 4, 6)], 0)


# ---------------------------------------------------------------------------------------------------------
# shared behaviour: validation, precision


def test_shape_and_hyperparameter_errors_are_kdlab_errors():
    s, t = rand(100, 4, 5), rand(101, 4, 6)
    for fn in (kd, dist, logit_standardized_kd, kd_from_probs):
        with pytest.raises(ValueError, match="same shape"):
            fn(s, t)
    with pytest.raises(ValueError, match="same shape"):
        tfkd_self(s, t, 4.0)
    with pytest.raises(ValueError, match="num_classes"):
        kd(rand(1, 4, 5, 2), rand(2, 4, 5, 2))
    with pytest.raises(ValueError, match="temperature"):
        kd(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        dkd(s, s, torch.zeros(4, dtype=torch.long), temperature=-1.0)
    with pytest.raises(ValueError):
        logit_standardize(rand(1, 4, 1))


def test_low_precision_inputs_and_autocast_compute_in_float32():
    s, t = rand(102, 8, 10).float(), rand(103, 8, 10).float()
    y = labels(104, 8, 10)
    fns = {
        "kd": lambda a, b: kd(a, b),
        "dkd": lambda a, b: dkd(a, b, y),
        "dist": lambda a, b: dist(a, b, temperature=4.0),
        "lskd": lambda a, b: logit_standardized_kd(a, b),
        "tfkd_self": lambda a, b: tfkd_self(a, b, 20.0),
        "tfkd_virtual": lambda a, b: tfkd_virtual(a, y),
    }
    for name, fn in fns.items():
        for dtype in (torch.float16, torch.bfloat16):
            a, b = s.to(dtype), t.to(dtype)
            out = fn(a, b)
            assert out.dtype == torch.float32, name
            torch.testing.assert_close(out, fn(a.float(), b.float()), msg=name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(s.to(torch.bfloat16), t.to(torch.bfloat16))
        assert out.dtype == torch.float32 and torch.isfinite(out), name
