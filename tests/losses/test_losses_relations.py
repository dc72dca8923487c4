"""Relation losses (RKD, SP, PKT, CC, MHGD, SVD blocks) against float64 loop references from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses.relations import (
    align_singular_vectors,
    cc,
    mhgd,
    pkt,
    rkd,
    rkd_angle,
    rkd_distance,
    sp,
    svd_compress,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


# ------------------------------------------------------------------------------------------ references


def _ref_dist(e: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    b = len(e)
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if i != j:
                d[i, j] = math.sqrt(max(float(e[i] @ e[i] + e[j] @ e[j] - 2 * e[i] @ e[j]), eps))
    pos = [d[i, j] for i in range(b) for j in range(b) if d[i, j] > 0]
    return d / (sum(pos) / len(pos))


def _ref_rkd_distance(s: np.ndarray, t: np.ndarray) -> float:
    ds, dt = _ref_dist(s), _ref_dist(t)
    b = len(s)
    return sum(_huber(ds[i, j], dt[i, j]) for i in range(b) for j in range(b)) / b**2


def _ref_angles(e: np.ndarray) -> np.ndarray:
    b = len(e)
    a = np.zeros((b, b, b))
    for i in range(b):
        for j in range(b):
            for k in range(b):
                u, v = e[j] - e[i], e[k] - e[i]
                nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                a[i, j, k] = 0.0 if nu < 1e-12 or nv < 1e-12 else float(u @ v) / (nu * nv)
    return a


def _ref_rkd_angle(s: np.ndarray, t: np.ndarray) -> float:
    a_s, a_t = _ref_angles(s), _ref_angles(t)
    return float(np.mean([_huber(x, y) for x, y in zip(a_s.ravel(), a_t.ravel(), strict=True)]))


def _ref_sp_layer(s: np.ndarray, t: np.ndarray) -> float:
    b = len(s)
    qs, qt = s.reshape(b, -1), t.reshape(b, -1)
    total = 0.0
    gs, gt = qs @ qs.T, qt @ qt.T
    for i in range(b):
        rs, rt = gs[i] / np.linalg.norm(gs[i]), gt[i] / np.linalg.norm(gt[i])
        for j in range(b):
            total += (rt[j] - rs[j]) ** 2
    return total / b**2


def _ref_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def cond(x: np.ndarray) -> np.ndarray:
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        b = len(x)
        m = np.array([[(float(x[i] @ x[j]) + 1) / 2 for j in range(b)] for i in range(b)])
        return np.array([[m[i, j] / m[i].sum() for j in range(b)] for i in range(b)])

    p, q = cond(s), cond(t)
    b = len(s)
    return (
        sum(q[i, j] * math.log((q[i, j] + eps) / (p[i, j] + eps)) for i in range(b) for j in range(b)) / b**2
    )


def _ref_cc_paper(s: np.ndarray, t: np.ndarray, gamma: float = 0.4, order: int = 2) -> float:
    def corr(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        b = len(x)
        c = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                sim = float(x[i] @ x[j])
                c[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim**p
                    for p in range(order + 1)
                )
        return c

    cs, ct = corr(s), corr(t)
    return float(((cs - ct) ** 2).sum() / len(s) ** 2)


def _ref_mhgd(gs_levels: list[np.ndarray], gt_levels: list[np.ndarray]) -> float:
    total = 0.0
    for gs, gt in zip(gs_levels, gt_levels, strict=True):
        h, b, _ = gs.shape
        for hh in range(h):
            for i in range(b):
                ps = np.exp(np.tanh(gs[hh, i]))
                ps /= ps.sum()
                pt = np.exp(np.tanh(gt[hh, i]))
                pt /= pt.sum()
                total += sum(ps[j] * (math.log(ps[j]) - math.log(pt[j])) for j in range(b))
    return total


# ------------------------------------------------------------------------------------------------ RKD


def test_rkd_terms_match_loop_reference_with_different_dims():
    s, t = _rand(6, 5, seed=1), _rand(6, 9, seed=2) * 3.0
    sn, tn = s.double().numpy(), t.double().numpy()
    assert rkd_distance(s.double(), t.double()).item() == pytest.approx(_ref_rkd_distance(sn, tn), rel=1e-9)
    assert rkd_angle(s.double(), t.double()).item() == pytest.approx(_ref_rkd_angle(sn, tn), rel=1e-9)
    total = rkd(s.double(), t.double()).item()
    assert total == pytest.approx(25 * _ref_rkd_distance(sn, tn) + 50 * _ref_rkd_angle(sn, tn), rel=1e-9)
    assert rkd(s, t).dtype == torch.float32


def test_rkd_large_distances_use_linear_part_of_huber():
    # scale differences above 1 after normalisation exercise the |d| - 0.5 branch
    s = torch.tensor([[0.0], [1.0], [2.0], [30.0]], dtype=torch.float64)
    t = torch.tensor([[0.0], [10.0], [20.0], [21.0]], dtype=torch.float64)
    assert rkd_distance(s, t).item() == pytest.approx(_ref_rkd_distance(s.numpy(), t.numpy()), rel=1e-9)


def test_rkd_zero_for_identical_and_scale_invariant():
    s, t = _rand(8, 6, seed=3), _rand(8, 4, seed=4)
    assert rkd(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    ref = rkd(s.double(), t.double()).item()
    assert rkd(3.0 * s.double(), 0.25 * t.double()).item() == pytest.approx(ref, rel=1e-9)


def test_rkd_flattens_4d_and_handles_degenerate_triples():
    s4, t4 = _rand(5, 2, 3, 3, seed=5), _rand(5, 4, 2, 2, seed=6)
    assert rkd(s4, t4).item() == pytest.approx(rkd(s4.flatten(1), t4.flatten(1)).item(), rel=1e-6)
    s = _rand(5, 3, seed=7).double()
    s[3] = s[1]  # duplicate sample -> zero-length edges
    t = _rand(5, 3, seed=8).double()
    assert rkd_angle(s, t).item() == pytest.approx(_ref_rkd_angle(s.numpy(), t.numpy()), rel=1e-9)
    assert rkd_distance(s, t).item() == pytest.approx(_ref_rkd_distance(s.numpy(), t.numpy()), rel=1e-9)


def test_rkd_gradient_reaches_student_only():
    s, t = _rand(6, 5, seed=9).requires_grad_(), _rand(6, 7, seed=10).requires_grad_()
    rkd(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_rkd_batch_mismatch_raises():
    with pytest.raises(ValueError, match="batch"):
        rkd(_rand(4, 3), _rand(5, 3))


def test_rkd_under_autocast_runs_in_float32():
    s, t = _rand(6, 5, seed=11), _rand(6, 7, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rkd(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(rkd(s, t).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------- SP


def test_sp_matches_reference_with_different_shapes_summed_over_layers():
    s1, t1 = _rand(5, 3, 4, 4, seed=13), _rand(5, 8, 2, 2, seed=14)
    s2, t2 = _rand(5, 6, 2, 2, seed=15), _rand(5, 2, 5, 5, seed=16)
    got = sp([s1.double(), s2.double()], [t1.double(), t2.double()]).item()
    ref = _ref_sp_layer(s1.double().numpy(), t1.double().numpy()) + _ref_sp_layer(
        s2.double().numpy(), t2.double().numpy()
    )
    assert got == pytest.approx(ref, rel=1e-9)
    assert sp(s1, t1).item() == pytest.approx(_ref_sp_layer(s1.numpy(), t1.numpy()), rel=1e-5)
    assert sp([s1], [s1.clone()]).item() == pytest.approx(0.0, abs=1e-7)


def test_sp_layer_count_mismatch_raises():
    with pytest.raises(ValueError, match="sp"):
        sp([_rand(2, 3, 2, 2)], [_rand(2, 3, 2, 2), _rand(2, 3, 2, 2)])


# ------------------------------------------------------------------------------------------------ PKT


def test_pkt_matches_reference_zero_when_identical_and_nonnegative():
    s, t = _rand(7, 5, seed=17), _rand(7, 11, seed=18)
    assert pkt(s.double(), t.double()).item() == pytest.approx(
        _ref_pkt(s.double().numpy(), t.double().numpy()), rel=1e-9
    )
    assert pkt(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)
    for seed in range(5):
        a, b = _rand(6, 4, seed=100 + seed), _rand(6, 3, seed=200 + seed)
        assert pkt(a, b).item() >= 0.0


def test_pkt_zero_row_gives_finite_loss():
    s = _rand(4, 3, seed=19)
    s[2] = 0.0
    out = pkt(s, _rand(4, 3, seed=20))
    assert torch.isfinite(out)


# ------------------------------------------------------------------------------------------------- CC


def test_cc_paper_matches_taylor_reference_with_different_dims():
    s, t = _rand(6, 4, seed=21), _rand(6, 9, seed=22)
    got = cc(s.double(), t.double()).item()
    assert got == pytest.approx(_ref_cc_paper(s.double().numpy(), t.double().numpy()), rel=1e-9)
    got3 = cc(s.double(), t.double(), gamma=0.7, order=3).item()
    ref3 = _ref_cc_paper(s.double().numpy(), t.double().numpy(), gamma=0.7, order=3)
    assert got3 == pytest.approx(ref3, rel=1e-9)
    assert cc(s, s.clone()).item() == pytest.approx(0.0, abs=1e-9)


def test_cc_repdistiller_variant_consecutive_product():
    s, t = _rand(5, 4, seed=23).double(), _rand(5, 4, seed=24).double()
    d = (s - t).abs().numpy()
    ref = sum(float(d[i] @ d[i + 1]) for i in range(4)) / 4
    assert cc(s, t, variant="repdistiller").item() == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="dim"):
        cc(_rand(5, 4), _rand(5, 6), variant="repdistiller")
    with pytest.raises(ValueError, match="variant"):
        cc(s, t, variant="nope")


def test_cc_teacher_embedding_keeps_gradient():
    s, t = _rand(5, 4, seed=25).requires_grad_(), _rand(5, 4, seed=26).requires_grad_()
    cc(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- MHGD


def test_mhgd_matches_reference_and_kl_direction_matters():
    gs = [_rand(3, 5, 5, seed=27) * 2, _rand(2, 5, 5, seed=28)]
    gt = [_rand(3, 5, 5, seed=29) * 2, _rand(2, 5, 5, seed=30)]
    ref = _ref_mhgd([g.double().numpy() for g in gs], [g.double().numpy() for g in gt])
    got = mhgd([g.double() for g in gs], [g.double() for g in gt]).item()
    assert got == pytest.approx(ref, rel=1e-9)
    swapped = mhgd([g.double() for g in gt], [g.double() for g in gs]).item()
    assert abs(swapped - got) > 1e-3  # KL(p_s || p_t) is not symmetric; the student comes first
    assert mhgd(gs[0], gs[0].clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_mhgd_shape_mismatch_raises_and_teacher_gets_no_grad():
    with pytest.raises(ValueError, match="H, B, B"):
        mhgd(_rand(2, 4, 4), _rand(2, 5, 5))
    gs, gt = _rand(2, 4, 4, seed=31).requires_grad_(), _rand(2, 4, 4, seed=32).requires_grad_()
    mhgd(gs, gt).backward()
    assert gs.grad.abs().sum() > 0 and gt.grad is None


# ------------------------------------------------------------------------------------- SVD blocks


def test_svd_compress_matches_numpy_up_to_sign_and_fixes_sign():
    f = _rand(3, 6, 4, 4, seed=33).double()
    vecs, vals = svd_compress(f, k=2, with_values=True)
    assert vecs.shape == (3, 2, 6) and vals.shape == (3, 2)
    for b in range(3):
        x = f[b].reshape(6, 16).T.numpy()  # (HW, C)
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        for j in range(2):
            v = vecs[b, j].numpy()
            assert abs(float(v @ vt[j])) == pytest.approx(1.0, abs=1e-9)
            assert v[np.argmax(np.abs(v))] > 0
        np.testing.assert_allclose(vals[b].numpy(), sv[:2] / np.linalg.norm(sv[:2]), rtol=1e-9)
    # features and -features have the same singular vectors up to sign -> identical after the sign fix
    torch.testing.assert_close(svd_compress(-f, k=2), vecs)
    torch.testing.assert_close(svd_compress(2.5 * f, k=2), vecs)


def test_svd_compress_pads_missing_vectors_and_keeps_gradient_finite():
    f = torch.zeros(2, 4, 1, 1)
    f[:, 0] = 1.0  # rank 1, HW = 1 < k
    vecs = svd_compress(f, k=4)
    assert vecs.shape == (2, 4, 4)
    assert torch.equal(vecs[:, 1:], torch.zeros(2, 3, 4))
    degenerate = torch.zeros(2, 8, 2, 2)
    degenerate[:, 0] = 1.0
    degenerate.requires_grad_()
    (svd_compress(degenerate, k=2) * _rand(1, 2, 8, seed=34)).sum().backward()
    assert torch.isfinite(degenerate.grad).all()
    with pytest.raises(ValueError, match="k must be"):
        svd_compress(f, k=0)


class _NoGrad(torch.autograd.Function):
    """Identity whose backward returns None: the gradient reaching its input is undefined."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def test_svd_compress_hook_passes_an_undefined_gradient_through():
    f = _rand(2, 4, 3, 3, seed=36).requires_grad_()
    vecs = svd_compress(f * 1.0, k=1)
    # The only path from the loss to the hooked tensor is undefined, so autograd calls the hook with None;
    # the direct term keeps the backward meaningful.
    (_NoGrad.apply(vecs).sum() + f.sum()).backward()
    assert torch.equal(f.grad, torch.ones_like(f))
    # One output of several: the gradient of the other output's path is simply absent.
    g = _rand(2, 4, 3, 3, seed=37).requires_grad_()
    vecs, vals = svd_compress(g, k=2, with_values=True)
    (grad,) = torch.autograd.grad(_NoGrad.apply(vecs).sum() + vals.sum(), g)
    assert torch.isfinite(grad).all()


def test_align_picks_largest_abs_cosine_and_flips_sign():
    teacher = svd_compress(_rand(4, 6, 3, 3, seed=35), k=1)  # (4, 1, 6)
    others = svd_compress(_rand(4, 6, 3, 3, seed=36), k=3)
    # hide the teacher vector (sign-flipped, slightly perturbed) at a different slot per sample
    student = torch.cat([others, torch.zeros(4, 1, 6)], dim=1)
    for b in range(4):
        slot = b % 4
        student = student.clone()
        student[b, slot] = -(teacher[b, 0] + 0.01 * _rand(6, seed=37 + b))
    aligned = align_singular_vectors(student, teacher)
    assert aligned.shape == (4, 1, 6)
    for b in range(4):
        torch.testing.assert_close(aligned[b, 0], -student[b, b % 4])
        assert float(aligned[b, 0] @ teacher[b, 0]) > 0.9
    # sign invariance: flipping the student vectors does not change the aligned result
    torch.testing.assert_close(align_singular_vectors(-student, teacher), aligned)


def test_align_requires_equal_channels_and_passes_gradient():
    with pytest.raises(ValueError, match="channels"):
        align_singular_vectors(_rand(2, 4, 5), _rand(2, 1, 6))
    s = _rand(2, 4, 5, seed=38).requires_grad_()
    align_singular_vectors(s, _rand(2, 1, 5, seed=39)).sum().backward()
    assert (s.grad.abs().sum(dim=2) > 0).sum() == 2  # exactly one chosen vector per sample
