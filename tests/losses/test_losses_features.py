"""Feature losses vs independent float64 loop references written from the formulas in docs/methods.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.losses import features as kf

# ---------------------------------------------------------------------------------------- reference helpers


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def pool_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Adaptive average pool with PyTorch's bin rule: [floor(i*H/o), ceil((i+1)*H/o))."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def smaller_ref(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    oh, ow = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return pool_ref(a, oh, ow), pool_ref(b, oh, ow)


def phi(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def Phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def close(value: torch.Tensor, ref: float, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert value.dim() == 0
    assert value.dtype == torch.float32
    assert abs(float(value) - ref) <= atol + rtol * abs(ref), (float(value), ref)


# ---------------------------------------------------------------------------------------- references


def fitnet_ref(s: np.ndarray, t: np.ndarray) -> float:
    acc = 0.0
    for idx in np.ndindex(*s.shape):
        acc += (s[idx] - t[idx]) ** 2
    return acc / s.size


def at_ref(ss: list[np.ndarray], ts: list[np.ndarray], p: float = 2) -> float:
    total = 0.0
    for s, t in zip(ss, ts):
        s, t = smaller_ref(s, t)
        b, _, h, w = s.shape
        stage = 0.0
        for n in range(b):
            maps = []
            for f in (s[n], t[n]):
                a = [
                    sum(abs(f[c, y, x]) ** p for c in range(f.shape[0])) / f.shape[0]
                    for y in range(h)
                    for x in range(w)
                ]
                norm = math.sqrt(sum(v * v for v in a))
                maps.append([v / norm for v in a])
            stage += sum((u - v) ** 2 for u, v in zip(*maps))
        total += stage / (b * h * w)
    return total


def nst_ref(ss: list[np.ndarray], ts: list[np.ndarray]) -> float:
    total = 0.0
    for s, t in zip(ss, ts):
        s, t = smaller_ref(s, t)
        b = s.shape[0]
        stage = 0.0
        for n in range(b):
            sv = [s[n, c].ravel() / np.linalg.norm(s[n, c]) for c in range(s.shape[1])]
            tv = [t[n, c].ravel() / np.linalg.norm(t[n, c]) for c in range(t.shape[1])]

            def k(u: np.ndarray, v: np.ndarray) -> float:
                return float(sum(ui * vi for ui, vi in zip(u, v))) ** 2

            tt = sum(k(u, v) for u in tv for v in tv) / len(tv) ** 2
            s_s = sum(k(u, v) for u in sv for v in sv) / len(sv) ** 2
            st = sum(k(u, v) for u in sv for v in tv) / (len(sv) * len(tv))
            stage += tt + s_s - 2 * st
        total += stage / b
    return total


def vid_ref(
    mus: list[np.ndarray], ts: list[np.ndarray], alphas: list[np.ndarray], eps: float = 1e-5
) -> float:
    total = 0.0
    for mu, t, alpha in zip(mus, ts, alphas):
        mu, t = smaller_ref(mu, t)
        acc = 0.0
        for n, c, y, x in np.ndindex(*mu.shape):
            var = math.log1p(math.exp(alpha[c])) + eps
            acc += 0.5 * ((mu[n, c, y, x] - t[n, c, y, x]) ** 2 / var + math.log(var))
        total += acc / mu.size
    return total


def margin_ref(gamma: float, beta: float) -> float:
    s, m = abs(gamma), beta
    if Phi(-m / s) > 0.001:
        return m - s * phi(m / s) / Phi(-m / s)
    return -3 * s


def od_ref(ss: list[np.ndarray], ts: list[np.ndarray], margins: list[np.ndarray]) -> float:
    total, n_stages = 0.0, len(ss)
    for i, (s, t, mg) in enumerate(zip(ss, ts, margins)):
        t = pool_ref(t, s.shape[2], s.shape[3])
        acc = 0.0
        for n, c, y, x in np.ndindex(*s.shape):
            tt = max(t[n, c, y, x], mg[c])
            sv = s[n, c, y, x]
            if sv > tt or tt > 0:
                acc += (sv - tt) ** 2
        total += acc / 2 ** (n_stages - 1 - i)
    return total / ss[0].shape[0]


def ab_ref(ss: list[np.ndarray], ts: list[np.ndarray], mu: float = 1.0) -> float:
    total, n_stages = 0.0, len(ss)
    for i, (s, t) in enumerate(zip(ss, ts)):
        acc = 0.0
        for idx in np.ndindex(*s.shape):
            sv, tv = s[idx], t[idx]
            if sv > -mu and tv <= 0:
                acc += (sv + mu) ** 2
            if sv <= mu and tv > 0:
                acc += (sv - mu) ** 2
        total += acc * 2.0 ** (i - n_stages + 1)
    return total / ss[0].shape[0]


def fsp_matrix_ref(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    f1, f2 = smaller_ref(f1, f2)
    b, c1, h, w = f1.shape
    g = np.zeros((b, c1, f2.shape[1]))
    for n in range(b):
        for a in range(c1):
            for bb in range(f2.shape[1]):
                g[n, a, bb] = sum(f1[n, a, y, x] * f2[n, bb, y, x] for y in range(h) for x in range(w)) / (
                    h * w
                )
    return g


def ft_ref(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    acc, d = 0.0, s[0].size
    for n in range(b):
        sv, tv = s[n].ravel(), t[n].ravel()
        sn, tn = math.sqrt(sum(v * v for v in sv)), math.sqrt(sum(v * v for v in tv))
        acc += sum(abs(u / sn - v / tn) for u, v in zip(sv, tv))
    return acc / (b * d)


def kdsvd_ref(ss: list[np.ndarray], ts: list[np.ndarray], k: int = 1) -> float:
    """Per-sample numpy SVD, teacher sign fixed by its largest-|entry|, alignment and RBF by loops."""
    b = ss[0].shape[0]
    total = 0.0
    prev = None
    for s, t in zip(ss, ts):
        c = s.shape[1]
        cur = []
        for n in range(b):
            xt = t[n].reshape(c, -1).T
            xs = s[n].reshape(c, -1).T
            _, sv_t, vt_t = np.linalg.svd(xt, full_matrices=False)
            _, _, vt_s = np.linalg.svd(xs, full_matrices=False)
            v_t = vt_t.T[:, :k].copy()
            v_s = vt_s.T[:, : min(k + 3, vt_s.shape[0])]
            sig = sv_t[:k] / np.linalg.norm(sv_t[:k])
            vs_al = np.zeros_like(v_t)
            for j in range(k):
                big = int(np.argmax(np.abs(v_t[:, j])))
                v_t[:, j] *= np.sign(v_t[big, j])
                cos = [float(v_s[:, i] @ v_t[:, j]) for i in range(v_s.shape[1])]
                i_star = int(np.argmax(np.abs(cos)))
                vs_al[:, j] = np.sign(cos[i_star]) * v_s[:, i_star]
            cur.append((vs_al * sig, v_t * sig))
        if prev is not None:
            for n in range(b):
                (a_s, a_t), (p_s, p_t) = cur[n], prev[n]
                for i in range(a_s.shape[0]):
                    for j in range(p_s.shape[0]):
                        for kk in range(k):
                            r_s = math.exp(-((a_s[i, kk] - p_s[j, kk]) ** 2) / 8)
                            r_t = math.exp(-((a_t[i, kk] - p_t[j, kk]) ** 2) / 8)
                            total += (r_s - r_t) ** 2
        prev = cur
    return total / b


def kdsvd_torch64(ss: list[torch.Tensor], ts: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    """Float64 autograd reference via torch.linalg.svd (RepDistiller's matrix), for gradient checks."""
    total = ss[0].sum() * 0
    prev = None
    for s, t in zip(ss, ts):
        vs = torch.linalg.svd(s.flatten(2).transpose(1, 2), full_matrices=False)[2].transpose(1, 2)[
            ..., : k + 3
        ]
        _, st, vt = torch.linalg.svd(t.detach().flatten(2).transpose(1, 2), full_matrices=False)
        vt = vt.transpose(1, 2)[..., :k]
        st = F.normalize(st[:, :k], dim=1)
        vt = vt * torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))
        cos = (vs.transpose(1, 2) @ vt).detach()
        pick = cos.abs().argmax(1, keepdim=True)
        vs = vs.gather(2, pick.expand(-1, vs.shape[1], -1)) * torch.sign(cos.gather(1, pick))
        vs, vt = vs * st.unsqueeze(1), vt * st.unsqueeze(1)
        if prev is not None:
            rs = torch.exp(-((vs.unsqueeze(2) - prev[0].unsqueeze(1)) ** 2) / 8)
            rt = torch.exp(-((vt.unsqueeze(2) - prev[1].unsqueeze(1)) ** 2) / 8)
            total = total + ((rs - rt) ** 2).sum()
        prev = (vs, vt)
    return total / ss[0].shape[0]


def hcl_ref(os_: list[np.ndarray], ts: list[np.ndarray]) -> float:
    """Official rule: size l in (4, 2, 1) used only if l < H; weights 1/2, 1/4, ... go to used sizes."""
    total = 0.0
    for o, t in zip(os_, ts):
        h = o.shape[2]
        num, den, w = float(np.mean((o - t) ** 2)), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            w /= 2
            num += w * float(np.mean((pool_ref(o, size, size) - pool_ref(t, size, size)) ** 2))
            den += w
        total += num / den
    return total


# ---------------------------------------------------------------------------------------- value tests


def test_fitnet_matches_reference() -> None:
    s, t = rand(2, 3, 2, 3, seed=1), rand(2, 3, 2, 3, seed=2)
    close(kf.fitnet(s, t), fitnet_ref(np64(s), np64(t)))


@pytest.mark.parametrize("p", [2, 3])
def test_at_matches_reference_with_channel_and_spatial_mismatch(p: int) -> None:
    ss = [rand(3, 2, 4, 4, seed=1), rand(3, 5, 2, 2, seed=2), rand(3, 3, 4, 4, seed=7)]
    ts = [rand(3, 6, 4, 4, seed=3), rand(3, 3, 4, 4, seed=4), rand(3, 4, 2, 2, seed=8)]
    close(kf.at(ss, ts, p=p), at_ref([np64(x) for x in ss], [np64(x) for x in ts], p=p))


def test_attention_map_is_unit_norm_spatial() -> None:
    q = kf.attention_map(rand(2, 3, 3, 4, seed=5))
    assert q.shape == (2, 12)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(2))


def test_at_zero_for_identical_and_invariant_to_positive_per_sample_scale() -> None:
    f = [rand(4, 3, 4, 4, seed=1), rand(4, 5, 2, 2, seed=2)]
    assert float(kf.at(f, f)) == 0.0
    t = [rand(4, 6, 4, 4, seed=3), rand(4, 2, 2, 2, seed=4)]
    scale = torch.tensor([0.1, 2.0, 7.0, 0.5]).view(4, 1, 1, 1)
    base = kf.at(f, t)
    assert float(base) > 0
    torch.testing.assert_close(kf.at([x * scale for x in f], t), base, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kf.at(f, [x * scale for x in t]), base, rtol=1e-5, atol=1e-7)


def test_nst_matches_reference_with_mismatches() -> None:
    ss = [rand(2, 3, 2, 2, seed=1), rand(2, 4, 3, 3, seed=2)]
    ts = [rand(2, 5, 4, 4, seed=3), rand(2, 2, 3, 3, seed=4)]
    value = kf.nst(ss, ts)
    close(value, nst_ref([np64(x) for x in ss], [np64(x) for x in ts]))
    assert float(kf.nst(ts, ts)) == pytest.approx(0.0, abs=1e-6)


def test_vid_matches_reference_and_init_round_trip() -> None:
    alpha0 = kf.vid_init_log_scale(5.0, eps=1e-5)
    assert F.softplus(torch.tensor(alpha0, dtype=torch.float64)).item() + 1e-5 == pytest.approx(
        5.0, rel=1e-12
    )
    assert math.log1p(math.exp(kf.vid_init_log_scale(0.3, eps=0.01))) + 0.01 == pytest.approx(0.3, rel=1e-12)
    mus = [rand(2, 3, 4, 4, seed=1), rand(2, 2, 2, 2, seed=2)]
    ts = [rand(2, 3, 2, 2, seed=3), rand(2, 2, 4, 4, seed=4)]
    alphas = [torch.full((3,), alpha0) + rand(3, seed=5), rand(2, seed=6)]
    close(
        kf.vid(mus, ts, alphas),
        vid_ref([np64(x) for x in mus], [np64(x) for x in ts], [np64(a) for a in alphas]),
    )


def test_vid_init_rejects_variance_below_eps() -> None:
    with pytest.raises(ValueError):
        kf.vid_init_log_scale(1e-6, eps=1e-5)


def test_od_margin_closed_form_both_branches() -> None:
    # (gamma, beta): includes negative gamma (|gamma| used), Phi(-3) = 0.00135 (> 0.001, mean branch),
    # Phi(-3.2) = 0.00069 and Phi(-4) (both -3s branch).
    pairs = [
        (1.0, 0.0),
        (1.0, -1.0),
        (2.0, 0.5),
        (-2.0, 1.0),
        (1.0, 3.0),
        (1.0, 3.2),
        (0.5, 2.0),
        (0.3, -0.2),
    ]
    gamma = torch.tensor([g for g, _ in pairs])
    beta = torch.tensor([b for _, b in pairs])
    margins = kf.od_margin(gamma, beta)
    assert margins.shape == (len(pairs),) and margins.dtype == torch.float32
    for got, (g, b) in zip(margins.tolist(), pairs):
        assert got == pytest.approx(margin_ref(g, b), rel=1e-5, abs=1e-6)
    assert margins[5].item() == pytest.approx(-3.0) and margins[6].item() == pytest.approx(-1.5)
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    assert torch.isfinite(kf.od_margin(torch.zeros(2), torch.tensor([-1.0, 1.0]))).all()


def test_od_matches_reference_with_teacher_pooling() -> None:
    ss = [rand(2, 3, 2, 2, seed=1), rand(2, 4, 2, 2, seed=2), rand(2, 2, 3, 3, seed=9)]
    ts = [rand(2, 3, 4, 4, seed=3), rand(2, 4, 2, 2, seed=4), rand(2, 2, 3, 3, seed=10)]
    margins = [kf.od_margin(rand(c, seed=5 + c).abs() + 0.2, rand(c, seed=11 + c)) for c in (3, 4, 2)]
    value = kf.od(ss, ts, margins)
    close(value, od_ref([np64(x) for x in ss], [np64(x) for x in ts], [np64(m) for m in margins]))


def test_ab_matches_reference() -> None:
    ss = [rand(3, 2, 4, 4, seed=1), rand(3, 4, 2, 2, seed=2), rand(3, 3, 2, 2, seed=3)]
    ts = [rand(3, 2, 4, 4, seed=4), rand(3, 4, 2, 2, seed=5), rand(3, 3, 2, 2, seed=6)]
    for margin in (1.0, 0.5):
        close(kf.ab(ss, ts, margin=margin), ab_ref([np64(x) for x in ss], [np64(x) for x in ts], margin))


def test_fsp_matrix_and_loss_match_reference() -> None:
    s_pairs = [
        (rand(2, 3, 4, 4, seed=1), rand(2, 2, 2, 2, seed=2)),
        (rand(2, 2, 2, 2, seed=3), rand(2, 4, 2, 2, seed=4)),
    ]
    t_pairs = [
        (rand(2, 3, 4, 4, seed=5), rand(2, 2, 4, 4, seed=6)),
        (rand(2, 2, 3, 3, seed=7), rand(2, 4, 3, 3, seed=8)),
    ]
    g = kf.fsp_matrix(*s_pairs[0])
    assert g.shape == (2, 3, 2)
    np.testing.assert_allclose(
        g.double().numpy(), fsp_matrix_ref(*map(np64, s_pairs[0])), rtol=1e-5, atol=1e-6
    )
    ref = 0.0
    for (s1, s2), (t1, t2) in zip(s_pairs, t_pairs):
        ref += float(np.mean((fsp_matrix_ref(np64(s1), np64(s2)) - fsp_matrix_ref(np64(t1), np64(t2))) ** 2))
    close(kf.fsp(s_pairs, t_pairs), ref)


def test_fsp_channel_mismatch_raises() -> None:
    s_pairs = [(rand(2, 3, 2, 2), rand(2, 2, 2, 2))]
    t_pairs = [(rand(2, 4, 2, 2), rand(2, 2, 2, 2))]
    with pytest.raises(ValueError, match="connector"):
        kf.fsp(s_pairs, t_pairs)


def test_ft_authors_form_and_paraphraser_l1() -> None:
    s, t = rand(3, 2, 3, 3, seed=1), rand(3, 2, 3, 3, seed=2)
    close(kf.ft(s, t), ft_ref(np64(s), np64(t)))
    # Flatten-and-normalise form: invariant to per-sample positive scale, unlike a channel-collapsed map.
    scale = torch.tensor([3.0, 0.2, 5.0]).view(3, 1, 1, 1)
    torch.testing.assert_close(kf.ft(s * scale, t), kf.ft(s, t))
    close(kf.paraphraser_reconstruction(s, t), float(np.mean(np.abs(np64(s) - np64(t)))))


def test_hcl_matches_official_level_rule() -> None:
    shapes = [(2, 3, 8, 8), (2, 2, 4, 4), (2, 3, 2, 2), (2, 4, 1, 1), (2, 2, 5, 5)]
    outs = [rand(*sh, seed=i) for i, sh in enumerate(shapes)]
    ts = [rand(*sh, seed=10 + i) for i, sh in enumerate(shapes)]
    close(kf.reviewkd_hcl(outs, ts), hcl_ref([np64(x) for x in outs], [np64(x) for x in ts]))
    # A 1x1 level is plain MSE.
    close(kf.reviewkd_hcl(outs[3:4], ts[3:4]), float(np.mean((np64(outs[3]) - np64(ts[3])) ** 2)))


# ---------------------------------------------------------------------------------------- KD-SVD


def kdsvd_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    ss = [rand(3, 4, 3, 3, seed=1), rand(3, 5, 2, 3, seed=2), rand(3, 3, 2, 2, seed=3)]
    ts = [rand(3, 4, 4, 4, seed=4), rand(3, 5, 3, 3, seed=5), rand(3, 3, 2, 2, seed=6)]
    return ss, ts


def test_kdsvd_matches_reference() -> None:
    ss, ts = kdsvd_inputs()
    value = kf.kdsvd(ss, ts)
    assert float(value) > 1e-4
    close(value, kdsvd_ref([np64(x) for x in ss], [np64(x) for x in ts]), rtol=1e-3, atol=1e-6)
    ts_relu = [x.relu() + 0.01 for x in ts]
    close(
        kf.kdsvd(ss, ts_relu, k=2),
        kdsvd_ref([np64(x) for x in ss], [np64(x) for x in ts_relu], k=2),
        rtol=1e-3,
        atol=1e-6,
    )


def test_kdsvd_zero_when_student_equals_teacher() -> None:
    _, ts = kdsvd_inputs()
    assert float(kf.kdsvd([x.clone() for x in ts], ts)) == pytest.approx(0.0, abs=1e-10)


def test_kdsvd_invariant_to_singular_vector_signs_and_student_rescaling() -> None:
    """V is fixed up to sign by X -> cX (c != 0) and by a permutation of spatial positions."""
    ss, ts = kdsvd_inputs()
    base = kf.kdsvd(ss, ts)
    c = torch.tensor([-1.0, 2.5, -0.3]).view(3, 1, 1, 1)
    torch.testing.assert_close(kf.kdsvd([x * c for x in ss], ts), base, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(kf.kdsvd(ss, [-x for x in ts]), base, rtol=1e-4, atol=1e-7)
    perm = [
        x.flatten(2)[
            ..., torch.randperm(x.shape[2] * x.shape[3], generator=torch.Generator().manual_seed(0))
        ].view_as(x)
        for x in ss
    ]
    torch.testing.assert_close(kf.kdsvd(perm, ts), base, rtol=1e-4, atol=1e-7)


def test_kdsvd_finite_on_rank_deficient_input() -> None:
    # rank-1, all-zero and constant maps: many equal singular values
    ss = [
        (rand(2, 4, 1, 1, seed=1) * rand(2, 1, 3, 3, seed=2)),
        torch.zeros(2, 5, 2, 2),
        rand(2, 3, 1, 1, seed=3).expand(2, 3, 2, 2).contiguous(),
    ]
    ts = [
        rand(2, 4, 1, 1, seed=4) * rand(2, 1, 3, 3, seed=5),
        torch.zeros(2, 5, 2, 2),
        torch.ones(2, 3, 2, 2),
    ]
    ss = [x.requires_grad_() for x in ss]
    value = kf.kdsvd(ss, ts)
    assert torch.isfinite(value)
    value.backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in ss)


def test_kdsvd_gradient_matches_float64_svd_autograd() -> None:
    ss, ts = kdsvd_inputs()
    s32 = [x.clone().requires_grad_() for x in ss]
    s64 = [x.double().requires_grad_() for x in ss]
    kf.kdsvd(s32, ts).backward()
    kdsvd_torch64(s64, [x.double() for x in ts]).backward()
    for a, b in zip(s32, s64):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=2e-3, atol=1e-6)


def test_top_eigh_backward_gradcheck() -> None:
    x = rand(2, 6, 4, seed=3).double().requires_grad_()

    def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gram = x.transpose(1, 2) @ x
        vals, vecs = kf._TopEigh.apply(gram, 2)
        return vals, vecs * torch.sign(vecs[:, :1, :])  # fix the sign so finite differences are stable

    assert torch.autograd.gradcheck(f, (x,))


def test_kdsvd_channel_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="channels"):
        kf.kdsvd([rand(2, 3, 2, 2), rand(2, 4, 2, 2)], [rand(2, 3, 2, 2), rand(2, 5, 2, 2)])


# ---------------------------------------------------------------------------------------- shared behaviour


def _cases() -> dict[str, tuple]:
    m = [kf.od_margin(torch.ones(3), torch.zeros(3)), kf.od_margin(torch.ones(2), -torch.ones(2))]
    return {
        "fitnet": (kf.fitnet, lambda: (rand(2, 3, 2, 2, seed=1),), lambda: (rand(2, 3, 2, 2, seed=2),), {}),
        "at": (
            kf.at,
            lambda: ([rand(2, 3, 4, 4, seed=1), rand(2, 2, 2, 2, seed=2)],),
            lambda: ([rand(2, 4, 2, 2, seed=3), rand(2, 5, 2, 2, seed=4)],),
            {},
        ),
        "nst": (kf.nst, lambda: ([rand(2, 3, 4, 4, seed=1)],), lambda: ([rand(2, 4, 2, 2, seed=3)],), {}),
        "vid": (
            kf.vid,
            lambda: ([rand(2, 3, 2, 2, seed=1)],),
            lambda: ([rand(2, 3, 2, 2, seed=3)],),
            {"log_scale_params": [torch.zeros(3, requires_grad=True)]},
        ),
        "od": (
            kf.od,
            lambda: ([rand(2, 3, 2, 2, seed=1), rand(2, 2, 2, 2, seed=2)],),
            lambda: ([rand(2, 3, 4, 4, seed=3), rand(2, 2, 2, 2, seed=4)],),
            {"margins": m},
        ),
        "ab": (kf.ab, lambda: ([rand(2, 3, 2, 2, seed=1)],), lambda: ([rand(2, 3, 2, 2, seed=3)],), {}),
        "fsp": (
            kf.fsp,
            lambda: ([(rand(2, 3, 4, 4, seed=1), rand(2, 2, 2, 2, seed=2))],),
            lambda: ([(rand(2, 3, 4, 4, seed=3), rand(2, 2, 2, 2, seed=4))],),
            {},
        ),
        "ft": (kf.ft, lambda: (rand(2, 3, 2, 2, seed=1),), lambda: (rand(2, 3, 2, 2, seed=2),), {}),
        "paraphraser": (
            kf.paraphraser_reconstruction,
            lambda: (rand(2, 3, 2, 2, seed=1),),
            lambda: (rand(2, 3, 2, 2, seed=2),),
            {},
        ),
        "kdsvd": (
            kf.kdsvd,
            lambda: ([rand(2, 4, 3, 3, seed=1), rand(2, 3, 2, 2, seed=2)],),
            lambda: ([rand(2, 4, 3, 3, seed=3), rand(2, 3, 2, 2, seed=4)],),
            {},
        ),
        "hcl": (
            kf.reviewkd_hcl,
            lambda: ([rand(2, 3, 8, 8, seed=1), rand(2, 3, 1, 1, seed=2)],),
            lambda: ([rand(2, 3, 8, 8, seed=3), rand(2, 3, 1, 1, seed=4)],),
            {},
        ),
    }


def _leaves(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in _leaves(o)]
    return []


def _with_grad(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad_()
    if isinstance(obj, tuple):
        return tuple(_with_grad(o) for o in obj)
    if isinstance(obj, list):
        return [_with_grad(o) for o in obj]
    return obj


@pytest.mark.parametrize("name", list(_cases()))
def test_gradients_reach_student_not_teacher(name: str) -> None:
    fn, make_s, make_t, kwargs = _cases()[name]
    student = _with_grad(make_s()[0])
    teacher = _with_grad(make_t()[0])
    loss = fn(student, teacher, **kwargs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [x.grad for x in _leaves(student)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert all(x.grad is None for x in _leaves(teacher))
    if name == "vid":
        assert kwargs["log_scale_params"][0].grad is not None


def test_float32_under_autocast() -> None:
    ss, ts = [rand(2, 3, 4, 4, seed=1)], [rand(2, 4, 4, 4, seed=2)]
    ref = kf.nst(ss, ts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = kf.nst(ss, ts)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref)


def test_user_shape_errors_are_kdlab_errors() -> None:
    with pytest.raises(ValueError, match="regressor"):
        kf.fitnet(rand(2, 3, 2, 2), rand(2, 4, 2, 2))
    with pytest.raises(ValueError, match="stages"):
        kf.at([rand(2, 3, 2, 2)], [rand(2, 3, 2, 2), rand(2, 3, 2, 2)])
    with pytest.raises(ValueError, match="batch"):
        kf.nst([rand(2, 3, 2, 2)], [rand(3, 3, 2, 2)])
    with pytest.raises(ValueError, match="connector"):
        kf.od([rand(2, 3, 2, 2)], [rand(2, 4, 2, 2)], [torch.zeros(4)])
    with pytest.raises(ValueError, match="channels"):
        kf.vid([rand(2, 3, 2, 2)], [rand(2, 3, 2, 2)], [torch.zeros(2)])
