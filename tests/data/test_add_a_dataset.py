"""Adding a dataset, as docs/architecture.md ("Adding a dataset") describes it.

A dataset is one loader returning an `InMemoryDataset` (uint8 N,C,H,W images, int64 labels, mean/std) and one
`_Entry` in `kdlab.data._REGISTRY`, which owns its shape, classes and training recipe. With those two pieces
the dataset is listed, its recipe lies under a run's settings, `build_loaders` batches it, and `kdlab train
--data NAME` trains on it.
"""

from __future__ import annotations

import json

import pytest
import torch

from kdlab import config, data
from kdlab.cli import main
from kdlab.data.memory import InMemoryDataset

NAME = "stripes"


def load_stripes(root, train: bool, coarse: bool) -> InMemoryDataset:
    """Two classes of 1x8x8 images: horizontal or vertical stripes, with seeded noise (train 64, test 32)."""
    g = torch.Generator().manual_seed(0 if train else 1)
    n = 64 if train else 32
    targets = torch.arange(n) % 2
    stripes = (torch.arange(8) % 2 * 200).to(torch.uint8)
    images = torch.where(targets.view(n, 1, 1, 1).bool(), stripes.view(1, 1, 1, 8), stripes.view(1, 1, 8, 1))
    noise = torch.randint(0, 40, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return InMemoryDataset(name=NAME, images=(images + noise).expand(n, 1, 8, 8).contiguous(), targets=targets,
                           num_classes=2, class_names=["horizontal", "vertical"], mean=(0.4,), std=(0.4,),
                           train=train, source="synthetic")


def stripes_recipe(model: str) -> dict:
    return {"optim": {"epochs": 3, "lr": 0.1, "schedule": "cosine", "weight_decay": 0.0},
            "data": {"batch_size": 16}}


@pytest.fixture
def stripes(monkeypatch):
    entry = data._Entry(2, 1, 8, "stripes: two classes of 8x8 striped images (a walkthrough dataset)",
                        load_stripes, stripes_recipe)
    monkeypatch.setitem(data._REGISTRY, NAME, entry)  # given back after the test
    return NAME


def test_an_entry_is_listed_and_its_recipe_lies_under_the_runs_settings(stripes):
    assert stripes in data.list_datasets()
    assert data.dataset_info(stripes)["num_classes"] == 2
    conf = config.build([{"data": {"name": stripes}}, {"optim": {"epochs": 2}}])
    assert (conf.optim.epochs, conf.optim.lr, conf.data.batch_size) == (2, 0.1, 16)  # the run's epochs win


def test_build_loaders_batches_it_normalised_with_indices(stripes):
    train, test, info = data.build_loaders(stripes, batch_size=16, workers=0)
    assert (info.num_classes, info.in_channels, info.image_size, info.train_size) == (2, 1, 8, 64)
    images, targets, indices = next(iter(train))
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and indices.dtype == torch.int64
    assert sum(len(batch[0]) for batch in test) == 32


def test_kdlab_train_trains_on_it(stripes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", stripes, "--model", "resnet8", "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3  # the recipe's epochs
    # Stripes are separable at a glance: the model learns them (chance is 50%) on the dataset's own classes.
    assert summary["arch"] == {"model": "resnet8", "num_classes": 2, "in_channels": 1, "image_size": 8,
                               "data": stripes}
    assert summary["last"]["test_top1"] > 90.0
