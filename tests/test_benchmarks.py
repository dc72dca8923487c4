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
