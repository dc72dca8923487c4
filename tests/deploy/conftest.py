"""Tiny runs on the embedded digits data (1 epoch), made once for the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.cli import main

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--quiet", "data.fraction=0.2"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy-runs")
    made = {"train": root / "teacher", "distill": root / "kd", "mutual": root / "dml", "cross": root / "cq"}
    assert main(["train", "--model", "resnet8", "--out", str(made["train"]), *FAST]) == 0
    teacher = str(made["train"] / "best.pt")
    assert main(["distill", "--teacher", teacher, "--student", "resnet8", "--method", "kd",
                 "--out", str(made["distill"]), *FAST]) == 0
    assert main(["mutual", "--models", "resnet8,wrn_16_1", "--out", str(made["mutual"]), *FAST]) == 0
    assert main(["distill", "--teacher", teacher, "--student", "resnet8", "--method", "kd", "--student-resolution",
                 "4", "--out", str(made["cross"]), *FAST]) == 0
    return made
