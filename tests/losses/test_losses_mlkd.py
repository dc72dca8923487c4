"""MLKD's pure losses (kdlab.losses.logits: class_correlation, batch_correlation, mlkd_masks, mlkd_terms) against
independent float64 references: plain Python loops over samples and classes with ``math``, written from the formulas
of docs/methods.md#mlkd and of the official code (github.com/Jin-Ying/Multi-Level-Logit-Distillation
``mdistiller/distillers/KD_ours.py``), whose median is numpy's ``percentile(·, 50)``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses.logits import MLKD_TEMPERATURES, batch_correlation, class_correlation, kd, mlkd_masks, mlkd_terms


def grid(b: int, k: int, a: float, c: float, fn=math.sin, scale: float = 3.0) -> torch.Tensor:
    return torch.tensor([[scale * fn(a * i + c * j + 0.1) for j in range(k)] for i in range(b)], dtype=torch.float64)


# weak and strong views of 6 images over 5 classes; teacher confidences and class sums are all distinct
SW, TW = grid(6, 5, 1.3, 0.7), grid(6, 5, 0.9, 1.1, fn=math.cos)
SS, TS = grid(6, 5, 0.6, 1.9), grid(6, 5, 1.7, 0.4, fn=math.cos)


def rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x]


def r_softmax(row: list[float], temp: float = 1.0) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    return [x / sum(e) for x in e]


def r_kd_rows(s, t, temp: float) -> list[float]:
    """T² KL(softmax(t/T) || softmax(s/T)) per sample."""
    out = []
    for zs, zt in zip(rows(s), rows(t), strict=True):
        p, q = r_softmax(zt, temp), r_softmax(zs, temp)
        out.append(temp**2 * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)))
    return out


def r_kd(s, t, temp: float) -> float:
    per = r_kd_rows(s, t, temp)
    return sum(per) / len(per)


def r_gram_diff(s, t, temp: float, over_classes: bool) -> list[list[float]]:
    """(G^t - G^s) with G_ab = Σ_i p_ia p_ib (classes) or H_ij = Σ_a p_ia p_ja (samples)."""
    ps = [r_softmax(r, temp) for r in rows(s)]
    pt = [r_softmax(r, temp) for r in rows(t)]
    b, k = len(ps), len(ps[0])
    if over_classes:
        return [[sum(pt[i][a] * pt[i][c] - ps[i][a] * ps[i][c] for i in range(b)) for c in range(k)]
                for a in range(k)]
    return [[sum(pt[i][a] * pt[j][a] - ps[i][a] * ps[j][a] for a in range(k)) for j in range(b)] for i in range(b)]


def r_cc(s, t, temp: float, w=None) -> float:
    d = r_gram_diff(s, t, temp, over_classes=True)
    k = len(d)
    w = w or [1.0] * k
    return sum(w[c] * d[a][c] ** 2 for a in range(k) for c in range(k)) / k


def r_bc(s, t, temp: float, w=None) -> float:
    d = r_gram_diff(s, t, temp, over_classes=False)
    b = len(d)
    w = w or [1.0] * b
    return sum(w[j] * d[i][j] ** 2 for i in range(b) for j in range(b)) / b


def r_median(values: list[float]) -> float:
    """Linear interpolation between the middle order statistics."""
    v = sorted(values)
    pos = 0.5 * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def r_masks(t) -> tuple[list[bool], list[bool]]:
    probs = [r_softmax(r) for r in rows(t)]
    conf = [max(p) for p in probs]
    cls = [sum(p[a] for p in probs) for a in range(len(probs[0]))]
    return [c <= r_median(conf) for c in conf], [c <= r_median(cls) for c in cls]


def official_terms(sw, tw, ss, ts, t0: float = 4.0) -> tuple[float, float, float]:
    """The official forward_train's loss_kd / loss_cc / loss_bc divided by KD_WEIGHT: each reduced loss times the
    mean of its boolean mask (np.percentile medians), the strong-view KD at T 2 and 6 on the weak logits."""
    pw = torch.softmax(tw, dim=1).numpy()
    conf, cls = pw.max(axis=1), pw.sum(axis=0)
    mask = float(np.mean(conf <= np.percentile(conf, 50)))
    class_mask = float(np.mean(cls <= np.percentile(cls, 50)))
    temps = [t0, 3.0, 5.0, 2.0, 6.0]
    loss_kd = sum(r_kd(sw, tw, t) * mask for t in temps)
    loss_kd += r_kd(ss, ts, t0) + r_kd(ss, ts, 3.0) + r_kd(ss, ts, 5.0) + r_kd(sw, tw, 2.0) + r_kd(sw, tw, 6.0)
    loss_cc = sum(r_cc(sw, tw, t) * class_mask for t in temps)
    loss_bc = sum(r_bc(sw, tw, t) * mask for t in temps)
    return loss_kd, loss_cc, loss_bc


# ---------------------------------------------------------------------------------------------------------
# the building blocks


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_class_and_batch_correlation_match_the_loop_references(temp):
    assert float(class_correlation(SW, TW, temp)) == pytest.approx(r_cc(SW, TW, temp), rel=1e-12)
    assert float(batch_correlation(SW, TW, temp)) == pytest.approx(r_bc(SW, TW, temp), rel=1e-12)
    wc, wb = [0.0, 1.0, 0.5, 1.0, 2.0], [1.0, 0.0, 0.0, 1.0, 1.0, 0.5]
    assert float(class_correlation(SW, TW, temp, torch.tensor(wc, dtype=torch.float64))) == \
        pytest.approx(r_cc(SW, TW, temp, wc), rel=1e-12)
    assert float(batch_correlation(SW, TW, temp, torch.tensor(wb, dtype=torch.float64))) == \
        pytest.approx(r_bc(SW, TW, temp, wb), rel=1e-12)


def test_correlations_vanish_for_equal_logits_and_have_no_t_squared_factor():
    assert float(class_correlation(TW, TW)) == 0.0 and float(batch_correlation(TW, TW)) == 0.0
    # softmax(z/T) at T = 2 is softmax((z/2)/1): only the probabilities matter, not T² (unlike kd)
    assert float(class_correlation(SW, TW, 2.0)) == pytest.approx(float(class_correlation(SW / 2, TW / 2, 1.0)),
                                                                  rel=1e-12)
    assert float(batch_correlation(SW, TW, 2.0)) == pytest.approx(float(batch_correlation(SW / 2, TW / 2, 1.0)),
                                                                  rel=1e-12)


def test_correlations_keep_float32_under_autocast_and_detach_the_teacher():
    s, t = SW.float().requires_grad_(), TW.float().requires_grad_()
    plain = class_correlation(s, t), batch_correlation(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = class_correlation(s, t), batch_correlation(s, t)
    for a, b in zip(plain, cast, strict=True):
        assert b.dtype == torch.float32 and float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-6)
    (plain[0] + plain[1]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_masks_keep_the_samples_and_classes_at_or_below_the_median():
    samples, classes = mlkd_masks(TW)
    ref_samples, ref_classes = r_masks(TW)
    assert samples.tolist() == ref_samples and classes.tolist() == ref_classes
    assert samples.sum() == 3 and classes.sum() == 3  # even B: half; odd K: the median class itself too
    odd_samples, _ = mlkd_masks(TW[:5])
    assert odd_samples.tolist() == r_masks(TW[:5])[0] and odd_samples.sum() == 3
    # the low-confidence ones are kept
    conf = torch.softmax(TW, dim=1).amax(dim=1)
    assert conf[samples].max() < conf[~samples].min()


def test_the_masks_median_is_numpys_percentile():
    for seed in range(5):
        t = torch.randn(7, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
        p = torch.softmax(t, dim=1).numpy()
        samples, classes = mlkd_masks(t)
        assert samples.tolist() == list(p.max(1) <= np.percentile(p.max(1), 50))
        assert classes.tolist() == list(p.sum(0) <= np.percentile(p.sum(0), 50))


# ---------------------------------------------------------------------------------------------------------
# the terms


def test_terms_match_the_official_loss_with_fraction_masks():
    got = mlkd_terms(SW, TW, SS, TS, temperature=4.0)
    for value, ref in zip(got, official_terms(SW, TW, SS, TS), strict=True):
        assert float(value) == pytest.approx(ref, rel=1e-12)
    got = mlkd_terms(SW, TW, SS, TS, temperature=1.0)  # T0 1: mdistiller's ImageNet KD.TEMPERATURE
    for value, ref in zip(got, official_terms(SW, TW, SS, TS, t0=1.0), strict=True):
        assert float(value) == pytest.approx(ref, rel=1e-12)
    assert MLKD_TEMPERATURES == (3.0, 5.0, 2.0, 6.0)


def test_instance_term_counts_weak_kd_at_two_and_six_twice_and_strong_kd_three_times():
    instance, _, _ = mlkd_terms(SW, TW, SS, TS)
    fraction = 0.5  # 3 of 6 samples at or below the median
    weak = sum(float(kd(SW, TW, t)) for t in (4.0, 3.0, 5.0, 2.0, 6.0))
    strong = sum(float(kd(SS, TS, t)) for t in (4.0, 3.0, 5.0))
    assert float(instance) == pytest.approx(fraction * weak + strong + float(kd(SW, TW, 2.0)) +
                                            float(kd(SW, TW, 6.0)), rel=1e-12)
    # the class and batch levels read the weak view only
    assert mlkd_terms(SW, TW, SS, TS)[1:] == mlkd_terms(SW, TW, TS, SS)[1:]


def test_per_sample_masks_select_samples_and_classes():
    instance, level_class, level_batch = mlkd_terms(SW, TW, SS, TS, per_sample_mask=True)
    samples, classes = r_masks(TW)
    ws, wc = [float(m) for m in samples], [float(m) for m in classes]
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    weak = sum(sum(w * v for w, v in zip(ws, r_kd_rows(SW, TW, t), strict=True)) / 6 for t in temps)
    strong = r_kd(SS, TS, 4.0) + r_kd(SS, TS, 3.0) + r_kd(SS, TS, 5.0) + r_kd(SW, TW, 2.0) + r_kd(SW, TW, 6.0)
    assert float(instance) == pytest.approx(weak + strong, rel=1e-12)
    assert float(level_class) == pytest.approx(sum(r_cc(SW, TW, t, wc) for t in temps), rel=1e-12)
    assert float(level_batch) == pytest.approx(sum(r_bc(SW, TW, t, ws) for t in temps), rel=1e-12)


def test_terms_train_the_student_only_and_refuse_mismatched_views():
    sw, ss = SW.clone().requires_grad_(), SS.clone().requires_grad_()
    tw, ts = TW.clone().requires_grad_(), TS.clone().requires_grad_()
    sum(mlkd_terms(sw, tw, ss, ts)).backward()
    assert sw.grad.abs().sum() > 0 and ss.grad.abs().sum() > 0
    assert tw.grad is None and ts.grad is None
    with pytest.raises(ValueError, match="weak .* and strong .* views must have the same shape"):
        mlkd_terms(SW, TW, SS[:4], TS[:4])
    with pytest.raises(ValueError, match="weights must be one value per class"):
        class_correlation(SW, TW, 4.0, torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mlkd_terms(SW, TW, SS, TS, temperature=0.0)
