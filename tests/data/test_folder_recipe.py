"""`--data imagefolder` takes its defaults from the folder (image size and count), not ImageNet's; anything the
user sets wins, `--data imagenet` keeps the ImageNet recipe, and the run says what it chose."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdlab import config as cfg
from kdlab.cli import main
from kdlab.data.folder_recipe import FolderStats, folder_recipe, folder_stats

IMAGENET = cfg.build([{"data": {"name": "imagenet"}}])


def make_tree(root, per_class: int, side: tuple[int, int], classes=("a", "b")) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                Image.fromarray(rng.integers(0, 256, (*side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_stats_count_images_and_read_the_typical_shorter_side(tmp_path):
    make_tree(tmp_path, 5, (40, 70))
    assert folder_stats(tmp_path / "train") == FolderStats(images=10, classes=2, typical_side=40)
    assert folder_stats(tmp_path / "missing") is None


@pytest.mark.parametrize("images, side, expected", [
    (3_000, 70, (64, 64, 0.025, 30, 5e-4)),
    (20_000, 150, (128, 128, 0.05, 60, 5e-4)),
    (1_200_000, 400, (224, 256, 0.1, 100, 1e-4)),
    (500, 20, (32, 32, 0.0125, 30, 5e-4)),  # smaller than every size: the smallest, 32
])
def test_recipe_follows_size_and_count(images, side, expected):
    r = folder_recipe(FolderStats(images, 10, side), fallback={})
    got = (r["data"]["image_size"], r["data"]["batch_size"], r["optim"]["lr"], r["optim"]["epochs"],
           r["optim"]["weight_decay"])
    assert got == expected
    assert r["optim"]["milestones"] == [round(expected[3] * f) for f in (0.3, 0.6, 0.9)]


def test_config_uses_the_folder_and_keeps_what_the_user_sets(tmp_path):
    make_tree(tmp_path, 4, (36, 36))
    chosen = cfg.build([{"data": {"name": "imagefolder", "root": str(tmp_path)}}])
    assert (chosen.data.image_size, chosen.data.batch_size, chosen.optim.epochs) == (32, 32, 30)
    mine = cfg.build([{"data": {"name": "imagefolder", "root": str(tmp_path), "batch_size": 8},
                       "optim": {"lr": 0.3}}])
    assert (mine.data.batch_size, mine.optim.lr, mine.data.image_size) == (8, 0.3, 32)
    missing = cfg.build([{"data": {"name": "imagefolder", "root": str(tmp_path / "none")}}])
    assert (missing.data.image_size, missing.optim.lr) == (IMAGENET.data.image_size, IMAGENET.optim.lr)


def test_a_run_prints_what_it_found_and_chose(tmp_path, capsys):
    make_tree(tmp_path / "data", 4, (36, 36))
    assert main(["train", "--data", "imagefolder", "--data-root", str(tmp_path / "data"), "--model", "resnet8",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert ("imagefolder: 8 training images in 2 classes, typically 36 px; image_size 32, batch 32, lr 0.0125, "
            "1 epochs") in out
