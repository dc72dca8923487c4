"""ICKD, PAD-L2 and CAT-KD losses, and KD-SVD's eigendecomposition routes (KD-EID), against float64 references.

References are loops over the formulas of docs/methods.md (#ickd, #pad, #catkd, #kdsvd), written
independently of kdlab.losses; "official" values were computed on the same inputs with the authors' or the
reference implementation's own functions (named at each constant), run in float64.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdlab.losses as L
from kdlab.losses import features as kf


def wave(shape: tuple[int, ...], a: float, b: float, relu: bool = False) -> torch.Tensor:
    """Deterministic, machine-independent inputs: sin(a·i + b) over the flat index i."""
    x = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * a + b).reshape(shape)
    return x.relu() if relu else x


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def close(value: torch.Tensor, ref: float, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    assert value.dim() == 0 and value.dtype == torch.float32
    assert abs(float(value) - ref) <= atol + rtol * abs(ref), (float(value), ref)


def pool_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Adaptive average pooling with PyTorch's bins [floor(i·H/o), ceil((i+1)·H/o))."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


# ---------------------------------------------------------------------------------------------- ICKD


def ickd_ref(s: np.ndarray, t: np.ndarray) -> float:
    """Σ_b Σ_ij (G~s_ij - G~t_ij)² / (C·B), G_ij = Σ_p X_ip X_jp, each row divided by its norm."""
    b, c = s.shape[:2]

    def rows(x: np.ndarray) -> list[list[float]]:
        flat = x.reshape(c, -1)
        g = [[sum(flat[i, p] * flat[j, p] for p in range(flat.shape[1])) for j in range(c)] for i in range(c)]
        out = []
        for row in g:
            norm = math.sqrt(sum(v * v for v in row))
            out.append([v / norm if norm > 0 else 0.0 for v in row])
        return out

    total = 0.0
    for n in range(b):
        gs, gt = rows(s[n]), rows(t[n])
        total += sum((gs[i][j] - gt[i][j]) ** 2 for i in range(c) for j in range(c))
    return total / (c * b)


def test_ickd_matches_reference_with_different_spatial_sizes() -> None:
    s, t = rand(3, 4, 3, 3, seed=1), rand(3, 4, 2, 5, seed=2).relu()
    value = L.ickd(s, t)
    assert float(value) > 1e-3
    close(value, ickd_ref(s.double().numpy(), t.double().numpy()))


def test_ickd_matches_the_official_batch_loss() -> None:
    # github.com/ADLab-AutoDrive/ICKD @403b8d3 Cifar100/distiller_zoo/ICKD.py, ICKDLoss.batch_loss in float64 with
    # embed_s replaced by the identity (kdlab applies the embedding in the method), on these wave() inputs.
    close(L.ickd(wave((2, 3, 2, 2), 0.37, 0.1).float(), wave((2, 3, 3, 1), 0.23, 0.7, relu=True).float()),
          1.190705207221673)
    close(L.ickd(wave((3, 4, 2, 3), 0.53, -0.2).float(), wave((3, 4, 2, 3), 0.31, 0.4, relu=True).float()),
          1.7057943708824261)


def test_ickd_properties() -> None:
    t = rand(2, 5, 3, 3, seed=3).relu()
    assert float(L.ickd(t.clone(), t)) == pytest.approx(0.0, abs=1e-7)
    # Row normalisation: invariant to a per-sample scale of either map, and a Gram row of a zero channel is 0.
    c = torch.tensor([3.0, 0.2]).view(2, 1, 1, 1)
    s = rand(2, 5, 3, 3, seed=4)
    torch.testing.assert_close(L.ickd(s * c, t), L.ickd(s, t), rtol=1e-5, atol=1e-7)
    g = L.channel_correlation(torch.cat([s[:, :4], torch.zeros(2, 1, 3, 3)], dim=1))
    assert torch.equal(g[:, 4], torch.zeros(2, 5))
    torch.testing.assert_close(g[:, :4].norm(dim=2), torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------- PAD-L2


def pad_ref(s: np.ndarray, t: np.ndarray, lv: np.ndarray, eps: float = 1e-6) -> float:
    b, d = s.shape
    total = 0.0
    for n in range(b):
        total += sum((t[n, k] - s[n, k]) ** 2 / (eps + math.exp(lv[n, k])) + lv[n, k] for k in range(d)) / d
    return total / b


def test_pad_l2_and_l2_stage_match_reference() -> None:
    s, t, lv = rand(4, 6, seed=1), rand(4, 6, seed=2).relu(), 0.7 * rand(4, 6, seed=3)
    close(L.pad_l2(s, t, lv), pad_ref(s.double().numpy(), t.double().numpy(), lv.double().numpy()))
    close(L.pad_l2(s, t, lv, eps=0.5), pad_ref(s.double().numpy(), t.double().numpy(), lv.double().numpy(), 0.5))
    mse = sum(float(v) ** 2 for v in (s - t).flatten()) / s.numel()
    close(L.embedding_l2(s, t), mse)
    # ℓ = 0 with eps = 0 is the plain L2 stage.
    close(L.pad_l2(s, t, torch.zeros_like(s), eps=0.0), mse)


def test_pad_l2_matches_torchdistill() -> None:
    # github.com/yoshitomo-matsubara/torchdistill @3e4373c torchdistill/losses/mid_level.py, PADL2Loss.forward
    # (eps 1e-6, reduction 'mean') in float64 on these wave() inputs.
    fs, ft = wave((3, 5), 0.41, 0.3).float(), wave((3, 5), 0.17, -0.5, relu=True).float()
    lv = (0.5 * wave((3, 5), 0.29, 1.1)).float()
    close(L.pad_l2(fs, ft, lv), 2.0602120593700626)


def test_pad_l2_gradients_reach_student_and_variance() -> None:
    s, lv = rand(3, 4, seed=1).requires_grad_(), rand(3, 4, seed=2).requires_grad_()
    t = rand(3, 4, seed=3).requires_grad_()
    L.pad_l2(s, t, lv).backward()
    assert s.grad.abs().sum() > 0 and lv.grad.abs().sum() > 0 and t.grad is None
    # d/dℓ of (δ²e^-ℓ + ℓ)/(B·D) at eps = 0: (1 - δ² e^-ℓ)/(B·D)
    lv.grad = None
    L.pad_l2(s, t, lv, eps=0.0).backward()
    delta = (t - s).detach()
    torch.testing.assert_close(lv.grad, (1 - delta**2 * torch.exp(-lv.detach())) / 12)


# ---------------------------------------------------------------------------------------------- CAT-KD


def cat_ref(s: np.ndarray, t: np.ndarray, r: int, normalize: bool) -> float:
    ps, pt = pool_ref(s, r, r), pool_ref(t, r, r)
    b, k = ps.shape[:2]
    total = 0.0
    for n in range(b):
        for c in range(k):
            a, z = ps[n, c].ravel(), pt[n, c].ravel()
            if normalize:
                a, z = a / np.sqrt((a * a).sum()), z / np.sqrt((z * z).sum())
            total += sum((u - v) ** 2 for u, v in zip(a, z))
    return total / (b * k * r * r)


@pytest.mark.parametrize("r, normalize", [(2, False), (2, True), (4, True), (1, False)])
def test_catkd_matches_reference(r: int, normalize: bool) -> None:
    s, t = rand(2, 5, 8, 8, seed=1), rand(2, 5, 6, 6, seed=2)
    close(L.catkd(s, t, resolution=r, normalize=normalize),
          cat_ref(s.double().numpy(), t.double().numpy(), r, normalize))


def test_catkd_matches_the_official_cat_loss() -> None:
    # github.com/GzyAftermath/CAT-KD @4467073 mdistiller/distillers/CAT_KD.py, CAT_loss(CAM_s, CAM_t, r, IF_NORMALIZE)
    # in float64 on these wave() inputs.
    cs, ct = wave((2, 3, 4, 4), 0.19, 0.2).float(), wave((2, 3, 8, 8), 0.07, -0.3).float()
    close(L.catkd(cs, ct, resolution=2), 0.6689798557126876)
    close(L.catkd(cs, ct, resolution=2, normalize=True), 0.44153711169919546)
    cs, ct = wave((2, 3, 6, 6), 0.11, 0.5).float(), wave((2, 3, 4, 4), 0.13, 0.9).float()
    close(L.catkd(cs, ct, resolution=4, normalize=True), 0.13142803447345175)


def test_class_activation_maps_are_the_classifier_as_a_1x1_conv() -> None:
    f, w = rand(2, 6, 4, 3, seed=1), rand(7, 6, seed=2)
    cams = L.class_activation_maps(f, w)
    ref = np.zeros((2, 7, 4, 3))
    fn, wn = f.double().numpy(), w.double().numpy()
    for b in range(2):
        for k in range(7):
            ref[b, k] = sum(wn[k, c] * fn[b, c] for c in range(6))
    np.testing.assert_allclose(cams.double().numpy(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cams, F.conv2d(f, w.view(7, 6, 1, 1)))
    # GAP of the CAMs = classifier logits without the bias; pooling commutes with the CAMs (the method pools first).
    torch.testing.assert_close(cams.mean(dim=(2, 3)), f.mean(dim=(2, 3)) @ w.T)
    torch.testing.assert_close(F.adaptive_avg_pool2d(cams, 2), L.class_activation_maps(F.adaptive_avg_pool2d(f, 2), w))


# ---------------------------------------------------------------------------------------------- KD-SVD routes


def kdsvd_np(ss: list[np.ndarray], ts: list[np.ndarray], k: int = 1) -> float:
    """docs/methods.md#kdsvd with numpy's SVD of each sample's HW x C matrix, loops for the rest."""
    b = ss[0].shape[0]
    total, prev = 0.0, None
    for s, t in zip(ss, ts):
        c = s.shape[1]
        cur = []
        for n in range(b):
            _, sv_t, vt_t = np.linalg.svd(t[n].reshape(c, -1).T, full_matrices=False)
            _, _, vt_s = np.linalg.svd(s[n].reshape(c, -1).T, full_matrices=False)
            v_t = vt_t[:k].T.copy()
            v_s = vt_s[: min(k + 3, vt_s.shape[0])].T
            sig = sv_t[:k] / np.linalg.norm(sv_t[:k])
            al = np.zeros_like(v_t)
            for j in range(k):
                v_t[:, j] *= np.sign(v_t[int(np.argmax(np.abs(v_t[:, j]))), j])
                cos = v_s.T @ v_t[:, j]
                i = int(np.argmax(np.abs(cos)))
                al[:, j] = np.sign(cos[i]) * v_s[:, i]
            cur.append((al * sig, v_t * sig))
        if prev is not None:
            for (a_s, a_t), (p_s, p_t) in zip(cur, prev):
                for i in range(c):
                    for j in range(p_s.shape[0]):
                        for q in range(k):
                            total += (math.exp(-((a_s[i, q] - p_s[j, q]) ** 2) / 8)
                                      - math.exp(-((a_t[i, q] - p_t[j, q]) ** 2) / 8)) ** 2
        prev = cur
    return total / b


def few_positions() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stages with fewer positions than channels (HW < C), where the positions route is taken."""
    ss = [rand(3, 6, 2, 2, seed=1).relu() + 0.05, rand(3, 9, 2, 1, seed=2).relu() + 0.05, rand(3, 7, 1, 1, seed=3)]
    ts = [rand(3, 6, 2, 2, seed=4).relu() + 0.05, rand(3, 9, 1, 2, seed=5).relu() + 0.05, rand(3, 7, 1, 1, seed=6)]
    return ss, ts


@pytest.mark.parametrize("shape", [(3, 12, 2, 2), (2, 20, 3, 2), (2, 5, 1, 1), (2, 4, 3, 3)])
def test_both_eigendecomposition_routes_give_the_svd(shape: tuple[int, ...]) -> None:
    x = rand(*shape, seed=7).relu().double()
    n = min(3, shape[1], shape[2] * shape[3])
    _, sv, vh = torch.linalg.svd(x.flatten(2).transpose(1, 2), full_matrices=False)
    v_ref = vh.transpose(1, 2)[..., :n]
    for route in ("channels", "positions", "auto"):
        v, s = kf._right_singular(x, n, route=route)
        torch.testing.assert_close(s, sv[:, :n], rtol=1e-9, atol=1e-9)
        sign = torch.sign((v * v_ref).sum(dim=1, keepdim=True))
        torch.testing.assert_close(v * sign, v_ref, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="route"):
        kf._right_singular(x, n, route="svd")


def test_kdsvd_positions_route_equals_the_channels_route_and_the_svd(monkeypatch) -> None:
    """kdsvd computes in float32; both routes give the float64 SVD value and the same gradients."""
    ss, ts = few_positions()
    ref = kdsvd_np([x.double().numpy() for x in ss], [x.double().numpy() for x in ts])
    assert ref > 1e-4
    original = kf._right_singular
    results = {}
    for route in ("auto", "channels"):
        monkeypatch.setattr(kf, "_right_singular", functools.partial(original, route=route))
        xs = [x.clone().requires_grad_() for x in ss]
        value = kf.kdsvd(xs, ts)
        value.backward()
        results[route] = (float(value.detach()), [x.grad for x in xs])
    monkeypatch.undo()
    (v_auto, g_auto), (v_chan, g_chan) = results["auto"], results["channels"]
    assert v_auto == pytest.approx(ref, rel=1e-5) and v_chan == pytest.approx(ref, rel=1e-5)
    for a, b in zip(g_auto, g_chan):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_kdsvd_gradient_matches_float64_svd_autograd_on_few_positions() -> None:
    ss, ts = few_positions()

    def reference(xs: list[torch.Tensor]) -> torch.Tensor:  # float64 torch.linalg.svd, autograd through it
        total, prev = xs[0].sum() * 0, None
        for s, t in zip(xs, ts):
            vs = torch.linalg.svd(s.flatten(2).transpose(1, 2), full_matrices=False)[2].transpose(1, 2)
            vs = vs[..., : min(4, vs.shape[-1])]
            _, st, vt = torch.linalg.svd(t.double().flatten(2).transpose(1, 2), full_matrices=False)
            vt, st = vt.transpose(1, 2)[..., :1], F.normalize(st[:, :1], dim=1)
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
        return total / xs[0].shape[0]

    # the last stage is 1x1: its one singular vector is the map itself (SVD's gradient is defined there)
    s32 = [x.clone().requires_grad_() for x in ss]
    s64 = [x.double().requires_grad_() for x in ss]
    kf.kdsvd(s32, ts).backward()
    reference(s64).backward()
    for a, b in zip(s32, s64):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=2e-3, atol=1e-6)


def test_kdsvd_large_width_small_maps_is_fast_and_finite() -> None:
    """512 channels on 1x1 and 2x2 maps (a VGG teacher on small images): 1x1 and 4x4 Gram matrices."""
    ss = [rand(8, 512, 2, 2, seed=1).relu().requires_grad_(), rand(8, 512, 1, 1, seed=2).relu().requires_grad_()]
    ts = [rand(8, 512, 2, 2, seed=3).relu(), rand(8, 512, 1, 1, seed=4).relu()]
    value = kf.kdsvd(ss, ts)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(x.grad).all() for x in ss)


# ---------------------------------------------------------------------------------------------- shared


def test_misuse_raises_value_error() -> None:
    with pytest.raises(ValueError, match="ickd: student has 3 channels, teacher 4"):
        L.ickd(rand(2, 3, 2, 2), rand(2, 4, 2, 2))
    with pytest.raises(ValueError, match="4-d feature map"):
        L.ickd(rand(2, 3), rand(2, 3))
    with pytest.raises(ValueError, match="batch"):
        L.ickd(rand(2, 3, 2, 2), rand(3, 3, 2, 2))
    with pytest.raises(ValueError, match="same D"):
        L.pad_l2(rand(2, 3), rand(2, 4), rand(2, 3))
    with pytest.raises(ValueError, match="log-variance"):
        L.pad_l2(rand(2, 3), rand(2, 3), rand(2, 4))
    with pytest.raises(ValueError, match="eps"):
        L.pad_l2(rand(2, 3), rand(2, 3), rand(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="same D"):
        L.embedding_l2(rand(2, 3, 1, 1), rand(2, 3, 1, 1))
    with pytest.raises(ValueError, match="class maps"):
        L.catkd(rand(2, 3, 2, 2), rand(2, 4, 2, 2))
    with pytest.raises(ValueError, match="resolution"):
        L.catkd(rand(2, 3, 2, 2), rand(2, 3, 2, 2), resolution=0)
    with pytest.raises(ValueError, match="classifier weight"):
        L.class_activation_maps(rand(2, 3, 2, 2), rand(5, 4))


@pytest.mark.parametrize("name", ["ickd", "pad_l2", "catkd"])
def test_teacher_gets_no_gradient_and_float32_under_autocast(name: str) -> None:
    s = rand(2, 4, 3, 3, seed=1).requires_grad_()
    t = rand(2, 4, 3, 3, seed=2).requires_grad_()
    fn = {"ickd": lambda a, b: L.ickd(a, b), "catkd": lambda a, b: L.catkd(a, b, normalize=True),
          "pad_l2": lambda a, b: L.pad_l2(a.flatten(1), b.flatten(1), 0.1 * a.flatten(1))}[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(s.bfloat16(), t.bfloat16())
    assert value.dtype == torch.float32
    fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
