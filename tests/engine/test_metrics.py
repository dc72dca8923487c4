import math

import pytest
import torch

from kdlab.engine.metrics import ClassificationMeter, expected_calibration_error, topk_correct


def test_ece_hand_computed():
    # 4 samples, 2 classes. Max probs: 0.9 (correct), 0.9 (wrong), 0.58 (correct), 0.55 (wrong).
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.58, 0.42], [0.55, 0.45]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0, 1])
    # With 15 bins: 0.9 -> bin (13/15, 14/15]; 0.58 and 0.55 -> (8/15, 9/15].
    # bin of 0.9: conf mean 0.9, acc 0.5 -> |0.4| * 2/4 = 0.2
    # bin of 0.55/0.58: conf mean 0.565, acc 0.5 -> |0.065| * 2/4 = 0.0325
    assert expected_calibration_error(probs, targets) == pytest.approx(0.2325, abs=1e-9)


def test_meter_matches_reference_and_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    targets = torch.randint(0, 10, (500,), generator=g)
    meter = ClassificationMeter(10)
    for chunk in range(0, 500, 64):  # batching must not change the result
        meter.update(logits[chunk:chunk + 64], targets[chunk:chunk + 64])
    result = meter.compute()
    probs = logits.softmax(1)
    ref_ece = torchmetrics.functional.classification.multiclass_calibration_error(
        probs, targets, num_classes=10, n_bins=15, norm="l1")
    assert result.ece == pytest.approx(100 * float(ref_ece), abs=1e-4)
    assert result.top1 == pytest.approx(100 * float((logits.argmax(1) == targets).float().mean()))
    top5 = (logits.topk(5, 1).indices == targets[:, None]).any(1).float().mean()
    assert result.top5 == pytest.approx(100 * float(top5))
    nll = torch.nn.functional.cross_entropy(logits.double(), targets)
    assert result.nll == pytest.approx(float(nll), rel=1e-5)
    assert sum(result.bin_count) == 500


def test_topk_caps_k_at_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0]])
    assert topk_correct(logits, torch.tensor([2]), (1, 5)) == [0, 1]


def test_meter_state_is_additive():
    # Two meters' states summed equal one meter over all data: what the DDP all-reduce relies on.
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(100, 5, generator=g), torch.randint(0, 5, (100,), generator=g)
    a, b, both = ClassificationMeter(5), ClassificationMeter(5), ClassificationMeter(5)
    a.update(logits[:37], targets[:37])
    b.update(logits[37:], targets[37:])
    both.update(logits, targets)
    a.state += b.state
    assert torch.allclose(a.state, both.state)
    assert math.isclose(a.compute().ece, both.compute().ece, abs_tol=1e-12)
