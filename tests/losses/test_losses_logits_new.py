"""NKD, WSLD, SDD and CTKD losses (kdlab.losses.logits) against independent float64 references and the official
code's numbers.

The references are plain Python loops over samples, cells and classes with ``math`` (no torch ops), written from
the formulas in docs/methods.md. The "official" values were computed once, outside this repository, by running
the authors' loss code unchanged (``.cuda()`` calls dropped, float64) on the inputs built by ``grid`` and
``regions`` below; each test names the file it comes from.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses.logits import (
    ctkd,
    ctkd_strength,
    dkd_terms,
    kd,
    nkd,
    nkd_terms,
    reverse_gradient,
    sdd,
    sdd_pool,
    sdd_weights,
    wsld,
    wsld_weights,
)

# ---------------------------------------------------------------------------------------------------------
# inputs (deterministic formulas, no random generator) and references


def grid(b: int, k: int, a: float, c: float, fn=math.sin, scale: float = 3.0) -> torch.Tensor:
    return torch.tensor([[scale * fn(a * i + c * j + 0.1) for j in range(k)] for i in range(b)], dtype=torch.float64)


def regions(b: int, n: int, k: int, a: float, c: float, fn=math.sin) -> torch.Tensor:
    """(B, N, K) region logits; the official code's layout is the (B, K, N) transpose."""
    return torch.tensor([[[3.0 * fn(a * i + c * j + 0.37 * r + 0.1) for j in range(k)] for r in range(n)]
                         for i in range(b)], dtype=torch.float64)


S, T, Y = grid(4, 6, 1.3, 0.7), grid(4, 6, 0.9, 1.1, fn=math.cos), torch.tensor([0, 3, 5, 2])
RS, RT, RY = regions(3, 5, 4, 1.1, 0.6), regions(3, 5, 4, 0.8, 1.7, fn=math.cos), torch.tensor([1, 0, 3])


def r_softmax(row: list[float], temp: float = 1.0) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    total = sum(e)
    return [x / total for x in e]


def r_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def r_cross_entropy(p: list[float], q: list[float]) -> float:
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q, strict=True))


def r_nkd_row(s: list[float], t: list[float], y: int, temp: float) -> tuple[float, float]:
    """(target term, non-target term without γ) of one sample, from the paper's definitions."""
    ps, pt = r_softmax(s), r_softmax(t)
    target = -pt[y] * math.log(ps[y])
    s_other = [v for c, v in enumerate(s) if c != y]
    t_other = [v for c, v in enumerate(t) if c != y]
    non = temp**2 * r_cross_entropy(r_softmax(t_other, temp), r_softmax(s_other, temp))
    return target, non


def r_wsld(s, t, y, temp: float) -> float:
    total = 0.0
    for si, ti, yi in zip(s, t, y, strict=True):
        ce_s = -math.log(r_softmax(si)[yi])
        ce_t = -math.log(r_softmax(ti)[yi])
        w = 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))
        total += w * r_cross_entropy(r_softmax(ti, temp), r_softmax(si, temp))
    return temp**2 * total / len(s)


def r_dkd_row(s, t, y, temp, alpha, beta):
    ps, pt = r_softmax(s, temp), r_softmax(t, temp)
    bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
    hs = [p / bs[1] for c, p in enumerate(ps) if c != y]
    ht = [p / bt[1] for c, p in enumerate(pt) if c != y]
    return temp**2 * (alpha * r_kl(bt, bs) + beta * r_kl(ht, hs))


def r_sdd(rs, rt, y, temp, row_loss, complementary=2.0) -> float:
    """Σ over samples and cells of weight x per-cell loss / (B N); weights from the teacher's argmax."""
    total, count = 0.0, 0
    for i in range(len(rs)):
        right = [max(range(len(cell)), key=cell.__getitem__) == y[i] for cell in rt[i]]
        for r in range(len(rs[i])):
            weight = complementary if right[r] != right[0] else 1.0
            total += weight * row_loss(rs[i][r], rt[i][r], y[i])
            count += 1
    return total / count


def close(value: torch.Tensor, ref: float, rel: float = 1e-9) -> None:
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(ref, rel=rel, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# NKD


@pytest.mark.parametrize("temp, gamma", [(1.0, 1.5), (3.0, 3.5), (4.0, 8.0)])
def test_nkd_matches_reference(temp, gamma):
    rows = [r_nkd_row(s, t, y, temp) for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist(), strict=True)]
    target_term, non = nkd_terms(S, T, Y, temperature=temp)
    close(target_term, sum(r[0] for r in rows) / 4)
    close(non, sum(r[1] for r in rows) / 4)
    close(nkd(S, T, Y, temperature=temp, gamma=gamma), sum(r[0] + gamma * r[1] for r in rows) / 4)
    per_t, per_n = nkd_terms(S, T, Y, temperature=temp, reduction="none")
    assert per_t.tolist() == pytest.approx([r[0] for r in rows], rel=1e-9)
    assert per_n.tolist() == pytest.approx([r[1] for r in rows], rel=1e-9)


def test_nkd_equals_official_code():
    # github.com/yzd-v/cls_KD (branch 1.0) mmcls/models/dis_losses/nkd.py NKDLoss.forward on S, T, Y
    close(nkd(S, T, Y, temperature=3.0, gamma=3.5), 62.66397333668681, rel=1e-12)
    close(nkd(S, T, Y, temperature=1.0, gamma=1.5), 6.848731723699161, rel=1e-12)


def test_nkd_gradient_is_that_of_the_kl_terms():
    # The cross-entropy terms differ from KLs by teacher-only constants: equal gradients w.r.t. the student.
    s = S.clone().requires_grad_()
    nkd(s, T, Y, temperature=3.0, gamma=2.0).backward()
    s2 = S.clone().requires_grad_()
    pt_y = F.softmax(T, 1).gather(1, Y[:, None]).squeeze(1)
    target_kl = -(pt_y * F.log_softmax(s2, 1).gather(1, Y[:, None]).squeeze(1)).mean()
    _, nckd = dkd_terms(s2, T, Y, temperature=3.0)
    (target_kl + 2.0 * nckd).backward()
    torch.testing.assert_close(s.grad, s2.grad)


def test_nkd_teacher_detached_and_bad_input():
    t = T.clone().requires_grad_()
    s = S.clone().requires_grad_()
    nkd(s, t, Y).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target"):
        nkd(S, T, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="same shape"):
        nkd(S, T[:, :5], Y)
    with pytest.raises(ValueError, match="temperature"):
        nkd(S, T, Y, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        nkd_terms(S, T, Y, reduction="sum")


def test_nkd_finite_in_bf16_and_under_extreme_logits():
    out = nkd(S.to(torch.bfloat16), T.to(torch.bfloat16), Y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    s = torch.full((4, 6), -1e4)
    s[torch.arange(4), (Y + 1) % 6] = 1e4
    s.requires_grad_()
    loss = nkd(s, -s.detach(), Y, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------------------------------------
# WSLD


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_wsld_matches_reference(temp):
    close(wsld(S, T, Y, temperature=temp), r_wsld(S.tolist(), T.tolist(), Y.tolist(), temp))


def test_wsld_equals_official_code():
    # github.com/bellymonster/Weighted-Soft-Label-Distillation knowledge_distiller.py WSLDistiller.forward,
    # soft term (T ** 2) * mean(focal_weight * softmax_loss), num_classes 6
    close(wsld(S, T, Y, temperature=2.0), 7.676448157168299, rel=1e-12)
    close(wsld(S, T, Y, temperature=4.0), 24.58493879522309, rel=1e-12)


def test_wsld_weights_are_constants_in_zero_one():
    s = S.clone().requires_grad_()
    w = wsld_weights(s, T, Y)
    assert not w.requires_grad and ((w >= 0) & (w < 1)).all()
    # a student exactly as good as the teacher on a sample: 1 - e^-1; much better: near 0
    assert float(wsld_weights(T, T, Y)[0]) == pytest.approx(1 - math.exp(-1), rel=1e-6)
    sure = F.one_hot(Y, 6).double() * 30
    assert float(wsld_weights(sure, T, Y).max()) < 1e-6
    # the gradient is the weighted soft cross-entropy's with w held fixed
    wsld(s, T, Y, temperature=4.0).backward()
    expected = 16 * w[:, None] * (F.softmax(S / 4, 1) - F.softmax(T / 4, 1)) / 4 / 4
    torch.testing.assert_close(s.grad, expected)


def test_wsld_bad_input():
    with pytest.raises(ValueError, match="target"):
        wsld(S, T, Y[:3])
    with pytest.raises(ValueError, match="temperature"):
        wsld(S, T, Y, temperature=-1.0)


# ---------------------------------------------------------------------------------------------------------
# SDD


def test_sdd_pool_cells_match_loop_averages():
    fmap = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8).sin()
    cells = sdd_pool(fmap, [1, 2, 4])
    assert cells.shape == (2, 21, 3)
    nested = fmap.tolist()
    for b in range(2):
        n = 0
        for s in (1, 2, 4):
            size = 8 // s
            for gy in range(s):
                for gx in range(s):
                    for c in range(3):
                        vals = [nested[b][c][y][x] for y in range(gy * size, (gy + 1) * size)
                                for x in range(gx * size, (gx + 1) * size)]
                        assert float(cells[b, n, c]) == pytest.approx(sum(vals) / len(vals), rel=1e-12, abs=1e-12)
                    n += 1


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_sdd_pool_equals_the_official_nested_pooling_on_cifar_map_sizes(size):
    # The authors pool a 4x4 grid and the coarser grids from it (SDD-CVPR2024 mdistiller/models/cifar/utils.py SPP);
    # kdlab pools each grid from the map, the same on every CIFAR map size (1, 2, 4 or 8 wide).
    fmap = torch.linspace(-2, 3, 2 * 5 * size * size, dtype=torch.float64).reshape(2, 5, size, size).cos()
    g4 = F.adaptive_avg_pool2d(fmap, 4)
    nested = torch.cat([F.adaptive_avg_pool2d(g4, 1).flatten(2), F.adaptive_avg_pool2d(g4, 2).flatten(2),
                        g4.flatten(2)], dim=2).transpose(1, 2)
    torch.testing.assert_close(sdd_pool(fmap, [1, 2, 4]), nested)
    torch.testing.assert_close(sdd_pool(fmap, [1, 2]), nested[:, :5])


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_sdd_kd_matches_reference(temp):
    def kd_row(s, t, _y):
        return temp**2 * r_kl(r_softmax(t, temp), r_softmax(s, temp))

    ref = r_sdd(RS.tolist(), RT.tolist(), RY.tolist(), temp, kd_row)
    close(sdd(RS, RT, RY, temperature=temp), ref)


@pytest.mark.parametrize("temp, alpha, beta", [(4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_sdd_dkd_and_nkd_match_reference(temp, alpha, beta):
    def dkd_row(s, t, y):
        return r_dkd_row(s, t, y, temp, alpha, beta)

    def nkd_row(s, t, y):
        target, non = r_nkd_row(s, t, y, temp)
        return target + beta * non

    close(sdd(RS, RT, RY, temperature=temp, base="dkd", alpha=alpha, beta=beta),
          r_sdd(RS.tolist(), RT.tolist(), RY.tolist(), temp, dkd_row))
    close(sdd(RS, RT, RY, temperature=temp, base="nkd", gamma=beta),
          r_sdd(RS.tolist(), RT.tolist(), RY.tolist(), temp, nkd_row))


def test_sdd_equals_official_code():
    # github.com/shicaiwei123/SDD-CVPR2024 mdistiller/distillers/KD.py sdd_kd_loss and SDD_DKD.py multi_dkd on the
    # (B, K, N) transposes of RS, RT with labels RY; the teacher's argmax per cell is [[0,0,3,3,3],[3,3,3,3,2],
    # [3,2,2,2,2]], so only sample 2's local cells are complementary (its global prediction is right).
    close(sdd(RS, RT, RY, temperature=4.0), 5.880541560047371, rel=1e-12)
    close(sdd(RS, RT, RY, temperature=4.0, base="dkd", alpha=1.0, beta=8.0), 46.15587064364319, rel=1e-12)
    close(sdd(RS, RT, RY, temperature=2.0, base="dkd", alpha=1.0, beta=2.0), 10.527638134825475, rel=1e-12)
    assert sdd_weights(RT, RY).tolist() == [[1.0] * 5, [1.0] * 5, [1.0, 2.0, 2.0, 2.0, 2.0]]


def test_sdd_with_one_cell_is_the_base_loss():
    s, t = RS[:, :1], RT[:, :1]
    close(sdd(s, t, RY, temperature=4.0), float(kd(s[:, 0], t[:, 0], temperature=4.0)), rel=1e-12)
    tckd, nckd = dkd_terms(s[:, 0], t[:, 0], RY, temperature=4.0)
    close(sdd(s, t, RY, base="dkd", alpha=1.0, beta=8.0), float(tckd + 8 * nckd), rel=1e-12)
    close(sdd(s, t, RY, base="nkd", gamma=3.5), float(nkd(s[:, 0], t[:, 0], RY, temperature=4.0, gamma=3.5)),
          rel=1e-12)


def test_sdd_weights_both_kinds_of_complementary_cells():
    # sample 0: global right, a local cell wrong; sample 1: global wrong, a local cell right
    t = torch.zeros(2, 3, 4)
    t[0, 0, 1] = t[0, 1, 1] = t[0, 2, 2] = 1.0  # label 1: global right, cell 2 wrong
    t[1, 0, 0] = t[1, 1, 0] = t[1, 2, 3] = 1.0  # label 3: global wrong, cell 2 right
    w = sdd_weights(t, torch.tensor([1, 3]), complementary_weight=2.5)
    assert w.tolist() == [[1.0, 1.0, 2.5], [1.0, 1.0, 2.5]]


def test_sdd_gradient_reaches_student_cells_only_and_bad_input():
    s = RS.clone().requires_grad_()
    t = RT.clone().requires_grad_()
    sdd(s, t, RY).backward()
    assert t.grad is None and (s.grad.abs().sum(dim=2) > 0).all()
    with pytest.raises(ValueError, match="same shape"):
        sdd(RS, RT[:, :3], RY)
    with pytest.raises(ValueError, match="regions"):
        sdd(RS[:, 0], RT[:, 0], RY)
    with pytest.raises(ValueError, match="base"):
        sdd(RS, RT, RY, base="crd")
    with pytest.raises(ValueError, match="target"):
        sdd(RS, RT, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="scales"):
        sdd_pool(torch.zeros(1, 2, 4, 4), [2, 4])
    with pytest.raises(ValueError, match="feature map"):
        sdd_pool(torch.zeros(2, 4), [1])


# ---------------------------------------------------------------------------------------------------------
# CTKD


def test_ctkd_with_a_constant_temperature_is_kd_and_per_sample_matches_reference():
    for temp in (1.0, 4.0, 15.6):
        torch.testing.assert_close(ctkd(S, T, torch.tensor(temp)), kd(S, T, temperature=temp))
    temps = [2.0, 5.0, 11.0, 20.0]
    ref = sum(tau**2 * r_kl(r_softmax(t, tau), r_softmax(s, tau))
              for s, t, tau in zip(S.tolist(), T.tolist(), temps, strict=True)) / 4
    close(ctkd(S, T, torch.tensor(temps, dtype=torch.float64)), ref)


def test_ctkd_temperature_gradient_runs_through_softmax_and_t_squared():
    # d/dT of mean_i T^2 KL_T: finite differences of the reference, in float64
    temp = torch.tensor([6.0], dtype=torch.float64, requires_grad=True)
    ctkd(S, T, temp).backward()

    def f(tau: float) -> float:
        return sum(tau**2 * r_kl(r_softmax(t, tau), r_softmax(s, tau)) for s, t in zip(S.tolist(), T.tolist(),
                                                                                      strict=True)) / 4

    h = 1e-5
    assert float(temp.grad) == pytest.approx((f(6.0 + h) - f(6.0 - h)) / (2 * h), rel=1e-6)


def test_reverse_gradient_negates_and_scales_the_gradient():
    x = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert x.grad.tolist() == [-0.5, -0.75]
    with pytest.raises(ValueError, match="strength"):
        reverse_gradient(x, -1.0)


def test_ctkd_curriculum_is_the_official_cosine_decay_with_the_sign_moved_to_the_reversal():
    # github.com/zhengli97/CTKD train_student.py CosineDecay(max_value=0, min_value=-1, num_loops=10).get_value(e)
    official = {1: -0.02447174185242318, 5: -0.5, 10: -1.0, 20: -1.0}
    for epoch, value in official.items():
        assert ctkd_strength(epoch, 10) == pytest.approx(-value, rel=1e-12, abs=1e-15)
    assert ctkd_strength(0, 10) == 0.0
    assert ctkd_strength(3, 0) == 1.0  # no curriculum: full strength
    assert ctkd_strength(5, 10, max_strength=0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ctkd_strength(-1)


@pytest.mark.parametrize("epoch, official_grad", [(1, -3.653230073991386e-05), (5, -0.0007464180719178446),
                                                  (10, -0.0014928361438356892)])
def test_global_temperature_step_equals_official_code(epoch, official_grad):
    # github.com/zhengli97/CTKD: models/temp_global.py Global_T (θ = 1) and GradientReversalFunction (gradient x λ),
    # helper/loops.py T = 1 + 20 sigmoid(θ), distiller_zoo/KD.py DistillKL, λ = CosineDecay(0, -1, 10)(epoch);
    # on S, T: loss 5.17404074110998, T 15.621171572600097, ∂loss/∂S[0, 0] -0.16190120498156604, θ.grad as given.
    theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
    temp = 1 + 20 * torch.sigmoid(reverse_gradient(theta, ctkd_strength(epoch, 10)))
    s = S.clone().requires_grad_()
    loss = ctkd(s, T, temp)
    loss.backward()
    assert float(temp.detach()) == pytest.approx(15.621171572600097, rel=1e-12)
    close(loss, 5.17404074110998, rel=1e-12)
    assert float(s.grad[0, 0]) == pytest.approx(-0.16190120498156604, rel=1e-10)
    assert float(theta.grad) == pytest.approx(official_grad, rel=1e-9)
    # the reversed gradient is minus λ times the plain one: SGD moves θ to raise the distillation loss
    theta2 = torch.ones(1, dtype=torch.float64, requires_grad=True)
    ctkd(S, T, 1 + 20 * torch.sigmoid(theta2)).backward()
    assert float(theta.grad) == pytest.approx(-ctkd_strength(epoch, 10) * float(theta2.grad), rel=1e-12)


def test_ctkd_bad_temperature():
    with pytest.raises(ValueError, match="> 0"):
        ctkd(S, T, torch.tensor([1.0, 0.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="one per sample"):
        ctkd(S, T, torch.ones(3))
    with pytest.raises(ValueError, match="tensor"):
        ctkd(S, T, 4.0)
