"""The benchmark scripts keep working: the reference loop's data matches kdlab's, and --quick runs end to end."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def reference_loop():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import reference_loop

        yield reference_loop
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_reference_dataset_normalises_like_kdlab(reference_loop):
    from kdlab.data.augment import normalize
    from kdlab.data.cifar import CIFAR100_MEAN, CIFAR100_STD

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.tensor([3, 1, 4, 1])
    data = reference_loop.PILAugmentedDataset(images, targets, CIFAR100_MEAN, CIFAR100_STD, padding=0)
    expected = normalize(images, CIFAR100_MEAN, CIFAR100_STD)
    for i in range(4):
        image, target, index = data[i]
        # padding 0: the crop is the whole image, so only the random flip can differ
        assert torch.allclose(image, expected[i], atol=1e-5) or torch.allclose(image, expected[i].flip(-1), atol=1e-5)
        assert (target, index) == (int(targets[i]), i)


def test_reference_batches_continue_across_epochs(reference_loop):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(5)), batch_size=2, drop_last=True)
    batches = reference_loop.ReferenceBatches(loader)
    seen = [int(b[0][0]) for b in batches.take(3)] + [int(b[0][0]) for b in batches.take(2)]
    assert seen == [0, 2, 0, 2, 0]  # 2 batches per epoch, re-opened when exhausted


def test_reference_loop_quick_run_writes_results(reference_loop, tmp_path, capsys):
    out = tmp_path / "reference.json"
    code = reference_loop.main(["--quick", "--models", "resnet20:resnet8", "--ref-workers", "0",
                                "--modes", "fp32,channels_last", "--cached", "--cache-size", "64", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())["results"][0]
    assert set(result["cases"]) == {"reference fp32, 0 workers", "kdlab fp32", "kdlab channels_last",
                                    "kdlab channels_last, cached teacher"}
    assert all(ratio > 0 for ratio in result["speedup"].values())
    targets = capsys.readouterr().out.split("## Targets")[1]
    assert "kdlab channels_last, cached teacher KD / fastest reference" in targets


def analytic_forward_flops(model: torch.nn.Module, shape) -> float:
    """2 x multiply-adds of every Conv2d and Linear for one image, from the layer shapes (hooks record sizes)."""
    total = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total.append(2 * k * output[0].numel())
        else:
            total.append(2 * module.in_features * module.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return float(sum(total))


def test_reference_step_flops_are_teacher_forward_plus_three_student_forwards(reference_loop):
    from argparse import Namespace

    from kdlab import models

    dataset = Namespace(num_classes=10, in_channels=3)
    args = Namespace(image_size=16, batch_size=4)
    counted = reference_loop.step_flops_per_image("resnet20", "resnet8", args, dataset)
    teacher = analytic_forward_flops(models.create("resnet20", 10, image_size=16).eval(), (3, 16, 16))
    student = analytic_forward_flops(models.create("resnet8", 10, image_size=16), (3, 16, 16))
    # Backward = grad input + grad weight = 2 forwards, except the first conv's grad input (the images).
    assert teacher + 2.9 * student < counted <= teacher + 3 * student


def test_arithmetic_ceiling_rows_by_hand(reference_loop):
    results = [{"teacher": "t", "student": "s", "baseline_median": 100.0, "flops_per_image": 0.5e9},
               {"teacher": "T", "student": "S", "baseline_median": 40.0, "flops_per_image": 3e9}]
    # 100 img/s x 0.5 GFLOP = 50 GFLOP/s sustained, 2x needs 100 of a 150 peak; 40 x 3 = 120, 2x needs 240
    assert reference_loop.ceiling_rows(results, peak=150.0) == [
        ["t -> s", "0.500", "50", "100", "0.67", "yes"],
        ["T -> S", "3.000", "120", "240", "1.60", "no: above the fp32 peak"]]

