"""DeiT's distillation-token loss and OFA-KD's loss against float64 implementations of the formulas, hand-computed
values and their misuse errors."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab import losses


def _softmax64(z: torch.Tensor, t: float) -> list[list[float]]:
    rows = []
    for row in z.double().tolist():
        m = max(v / t for v in row)
        e = [math.exp(v / t - m) for v in row]
        rows.append([v / sum(e) for v in e])
    return rows


def _deit_ref(zd, zt, mode, tau, reduction):
    b, k = zd.shape
    if mode == "hard":
        ps = _softmax64(zd, 1.0)
        labels = zt.double().argmax(1).tolist()
        return -sum(math.log(ps[i][labels[i]]) for i in range(b)) / b
    ps, pt = _softmax64(zd, tau), _softmax64(zt, tau)
    total = sum(pt[i][j] * (math.log(pt[i][j]) - math.log(ps[i][j])) for i in range(b) for j in range(k))
    return tau**2 * total / (b * k if reduction == "mean" else b)


def _ofa_ref(zs, zt, y, eps, tau):
    b, k = zs.shape
    ps, pt = _softmax64(zs, tau), _softmax64(zt, tau)
    total = 0.0
    for i in range(b):
        for j in range(k):
            e = 1.0 if j == int(y[i]) else 0.0
            total -= ((pt[i][j] + e) ** eps - e) * math.log(ps[i][j])
    return total / b


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3, torch.tensor([0, 3, 6, 2, 2])


@pytest.mark.parametrize("mode, tau, reduction", [("hard", 1.0, "mean"), ("soft", 1.0, "mean"), ("soft", 3.0, "mean"),
                                                   ("soft", 2.0, "batchmean")])
def test_deit_matches_float64_reference(logits, mode, tau, reduction):
    zd, zt, _ = logits
    got = losses.deit(zd.double(), zt.double(), mode=mode, temperature=tau, reduction=reduction)
    assert got.item() == pytest.approx(_deit_ref(zd, zt, mode, tau, reduction), rel=1e-10)


def test_deit_soft_mean_is_batchmean_over_classes_and_equals_kd_scaled(logits):
    zd, zt, _ = logits
    mean = losses.deit(zd, zt, mode="soft", temperature=2.0)
    batchmean = losses.deit(zd, zt, mode="soft", temperature=2.0, reduction="batchmean")
    torch.testing.assert_close(mean * zd.shape[1], batchmean)
    torch.testing.assert_close(batchmean, losses.kd(zd, zt, temperature=2.0))
    assert losses.deit(zt, zt, mode="soft").item() == pytest.approx(0.0, abs=1e-7)


def test_deit_hard_is_cross_entropy_to_the_teacher_argmax(logits):
    zd, zt, _ = logits
    expected = torch.nn.functional.cross_entropy(zd, zt.argmax(1))
    torch.testing.assert_close(losses.deit(zd, zt, mode="hard"), expected)
    zd.requires_grad_(True)
    losses.deit(zd, zt.requires_grad_(True), mode="soft").backward()
    assert zt.grad is None and zd.grad is not None  # the teacher is a constant


@pytest.mark.parametrize("eps, tau", [(1.0, 1.0), (1.5, 1.0), (2.0, 4.0), (0.5, 2.0)])
def test_ofa_matches_float64_reference(logits, eps, tau):
    zs, zt, y = logits
    got = losses.ofa(zs.double(), zt.double(), y, eps=eps, temperature=tau)
    assert got.item() == pytest.approx(_ofa_ref(zs, zt, y, eps, tau), rel=1e-10)


def test_ofa_hand_computed_values_and_eps_one_is_soft_target_cross_entropy(logits):
    # Two classes, uniform teacher and student, target 0: weights (1.5^ε - 1, 0.5^ε), log p = -ln 2 for both.
    zero = torch.zeros(1, 2)
    target = torch.tensor([0])
    assert losses.ofa(zero, zero, target, eps=1.0).item() == pytest.approx(math.log(2))
    assert losses.ofa(zero, zero, target, eps=2.0).item() == pytest.approx((1.25 + 0.25) * math.log(2))
    zs, zt, y = logits
    soft_ce = -(torch.softmax(zt / 2, 1) * torch.log_softmax(zs / 2, 1)).sum(1).mean()
    torch.testing.assert_close(losses.ofa(zs, zt, y, eps=1.0, temperature=2.0), soft_ce)


def test_ofa_is_finite_for_saturated_logits():
    zs = torch.tensor([[200.0, -200.0, 0.0]])
    zt = torch.tensor([[-50.0, 50.0, 0.0]])
    assert torch.isfinite(losses.ofa(zs, zt, torch.tensor([1]), eps=1.5))


def test_misuse_raises_value_error(logits):
    zs, zt, y = logits
    with pytest.raises(ValueError, match="mode"):
        losses.deit(zs, zt, mode="medium")
    with pytest.raises(ValueError, match="reduction"):
        losses.deit(zs, zt, mode="soft", reduction="sum")
    with pytest.raises(ValueError, match="temperature"):
        losses.deit(zs, zt, mode="soft", temperature=0)
    with pytest.raises(ValueError, match="eps"):
        losses.ofa(zs, zt, y, eps=0)
    with pytest.raises(ValueError, match="same shape"):
        losses.ofa(zs, zt[:, :3], y)
    with pytest.raises(ValueError, match="target"):
        losses.ofa(zs, zt, y.float())
