"""`kdlab eval`: the data a model was trained on by default, a run directory or file, every student of a cohort
(and its ensemble), a teacher-agreement column, --threads and data.* settings, ImageFolder models at their own
size; what it cannot evaluate is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import kdlab
from kdlab.cli import main

FAST = ["--data", "digits", "--batch-size", "128", "--threads", "1", "--quiet", "data.fraction=0.3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--out", str(root / "t"), *FAST]) == 0
    assert main(["mutual", "--models", "resnet8,resnet8", "--epochs", "1", "--out", str(root / "m"), *FAST]) == 0
    return root


def test_a_run_directory_on_its_own_data_matches_its_last_epoch(runs, capsys):
    code, out, _ = run(["eval", "--checkpoint", str(runs / "t"), "--threads", "1", "data.workers=0"], capsys)
    last = json.loads((runs / "t" / "summary.json").read_text())["last"]
    assert code == 0 and out.startswith("resnet8 on digits (450 test images): ")
    assert f"top-1 {last['test_top1']:.2f}%" in out and f"ECE {last['test_ece']:.2f}%" in out


def test_agreement_with_a_teacher(runs, capsys):
    code, out, _ = run(["eval", "--checkpoint", str(runs / "t" / "best.pt"), "--teacher",
                        str(runs / "t" / "best.pt")], capsys)
    assert code == 0 and "agrees with the teacher on 100.00%" in out  # itself as the teacher


def test_every_student_of_a_cohort_and_its_ensemble(runs, capsys):
    code, out, _ = run(["eval", "--checkpoint", str(runs / "m")], capsys)
    names = [line.split(" on ")[0] for line in out.splitlines()]
    assert code == 0 and names == ["s0_resnet8", "s1_resnet8", "ensemble"]
    code, out, _ = run(["eval", "--checkpoint", str(runs / "m"), "--member", "1"], capsys)
    assert code == 0 and [line.split(" on ")[0] for line in out.splitlines()] == ["s1_resnet8"]


@pytest.mark.parametrize("extra, message", [
    (["optim.lr=0.1"], "data.* settings only"),
    (["data.fraction=0.5"], "not data.fraction"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_settings_it_cannot_use_are_one_line(runs, capsys, extra, message):
    code, _, err = run(["eval", "--checkpoint", str(runs / "t"), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_an_imagefolder_model_is_evaluated_at_its_own_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / cls / f"{i}.png")
    common = ["--data-root", str(tmp_path / "data"), "--threads", "1"]
    assert main(["train", "--data", "imagefolder", "--model", "resnet8", "--epochs", "1", "data.image_size=16",
                 "--out", str(tmp_path / "run"), "--quiet", *common]) == 0
    capsys.readouterr()
    code, out, err = run(["eval", "--checkpoint", str(tmp_path / "run"), *common], capsys)
    assert code == 0 and "resnet8 on imagefolder (8 test images)" in out, err


def test_a_model_of_your_own_is_one_line(tmp_path, capsys):
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    images, targets = torch.rand(32, 1, 8, 8), torch.arange(32) % 10
    loader = [(images[i:i + 16], targets[i:i + 16]) for i in (0, 16)]
    kdlab.distill(teacher=None, student=student, train_loader=loader, test_loader=loader, method="tfkd_virtual",
                  epochs=1, out=tmp_path / "own", num_classes=10, threads=1)
    code, _, err = run(["eval", "--checkpoint", str(tmp_path / "own")], capsys)
    assert code == 2 and err.count("\n") == 1 and "a model of your own" in err
