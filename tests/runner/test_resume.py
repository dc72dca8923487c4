"""Runs are never lost, stuck or silently changed: kills at awkward moments, resume semantics, divergence."""

import json

import pytest
import torch
import yaml
from torch import nn

from kdlab.cli import main
from kdlab.engine import checkpoint as ckpt

FAST = ["--data", "digits", "--batch-size", "128", "--quiet", "data.fraction=0.3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def epochs_logged(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch cosine run."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "--model", "resnet8", "--epochs", "2", "--out", str(out), *FAST]) == 0
    return out


def test_a_run_killed_in_its_first_checkpoint_write_starts_again(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = ckpt.save_atomic

    def killed_while_writing(obj, path):
        (path.parent / f".{path.name}.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_atomic", killed_while_writing)
    code, _, _ = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(out), *FAST], capsys)
    assert code == 130 and (out / "metrics.jsonl").exists() and not (out / "last.pt").exists()
    monkeypatch.setattr(ckpt, "save_atomic", real_save)
    for extra in ([], ["--resume"]):  # both a fresh start and --resume take up the stopped run
        code, _, err = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(out), *FAST, *extra], capsys)
        assert code == 0 and "starting it again" in err, err
        assert epochs_logged(out) == [1]
        assert not list(out.glob(".*.tmp"))  # the orphaned temp file is gone
        for name in ("last.pt", "best.pt"):  # back to the state the kill left
            (out / name).unlink()


def test_resume_survives_a_torn_last_metrics_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--epochs", "2", "--out", str(out), *FAST]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    state["epoch"] = 1  # as if killed after logging epoch 2's line half-way, before its checkpoint
    torch.save(state, out / "last.pt")
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 3, "test_to')
    code, _, err = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert epochs_logged(out) == [1, 2]


def test_a_folder_that_is_not_a_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "best.pt").write_bytes(b"the user's own model")
    code, _, err = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(out), *FAST], capsys)
    assert code == 2 and "best.pt" in err and "not empty" in err
    assert (out / "best.pt").read_bytes() == b"the user's own model" and not (out / "metrics.jsonl").exists()


def test_bare_resume_continues_with_the_saved_settings(tmp_path, interrupt_in_epoch, capsys):
    out = tmp_path / "run"
    interrupt_in_epoch(2)
    assert main(["train", "--model", "resnet8", "--epochs", "2", "--lr", "0.02", "--out", str(out), *FAST]) == 130
    interrupt_in_epoch(None)
    code, _, err = run(["train", "--out", str(out), "--resume", "--quiet"], capsys)
    assert code == 0, err
    assert epochs_logged(out) == [1, 2]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.02 and saved["optim"]["epochs"] == 2


@pytest.mark.parametrize("change, key", [(["--epochs", "4"], "optim.epochs"), (["--lr", "0.2"], "optim.lr"),
                                         (["optim.schedule=step"], "optim.schedule")])
def test_resume_refuses_settings_that_change_the_run(finished, change, key, capsys):
    before = (finished / "config.yaml").read_text()
    code, _, err = run(["train", "--model", "resnet8", "--epochs", "2", "--out", str(finished), "--resume", *FAST,
                        *change], capsys)
    assert code == 2 and key in err and err.count("\n") == 1, err
    if key == "optim.epochs":
        assert "--extend-to" in err
    assert (finished / "config.yaml").read_text() == before  # nothing written


def test_resuming_a_finished_run_keeps_its_summary(finished, capsys):
    summary = json.loads((finished / "summary.json").read_text())
    code, out, err = run(["train", "--out", str(finished), "--resume"], capsys)
    assert code == 0 and "finished all 2 epochs" in err
    assert json.loads((finished / "summary.json").read_text())["last"] == summary["last"]
    assert f"last top-1 {summary['last']['test_top1']:.2f}%" in out and "nan" not in out


def test_extend_to_trains_on_at_the_schedules_last_lr(finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "extended"
    shutil.copytree(finished, out)
    code, _, err = run(["train", "--out", str(out), "--resume", "--extend-to", "4"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[2]["lr"] == lines[3]["lr"] == pytest.approx(lines[1]["lr"], rel=1e-12) and lines[1]["lr"] > 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 4
    code, _, err = run(["train", "--out", str(out), "--resume", "--extend-to", "3"], capsys)
    assert code == 2 and "extend-to" in err


class NaNAtEval(nn.Module):
    """A model whose test outputs are NaN while its training outputs stay finite (BatchNorm statistics gone
    bad look like this)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if not self.training:
            return out * float("nan")
        return out


def test_a_diverged_evaluation_marks_the_epoch_and_the_run(tmp_path, monkeypatch, capsys):
    import kdlab.runner.common as run_module
    from kdlab.experiments.report import make_report

    real_create = run_module.models.create
    monkeypatch.setattr(run_module.models, "create", lambda *a, **k: NaNAtEval(real_create(*a, **k)))
    out = tmp_path / "sweep" / "nan"
    code, stdout, _ = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(out), *FAST], capsys)
    assert code == 0 and "diverged" in stdout.splitlines()[-1]
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["diverged"] is True and record["test_top1"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] and summary["diverged_epochs"] == [1] and summary["best_top1"] is None
    monkeypatch.setattr(run_module.models, "create", real_create)
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--seed", "1", "--out",
                 str(tmp_path / "sweep" / "ok"), *FAST]) == 0
    table = make_report([str(tmp_path / "sweep")], epoch="last", metrics="top1")
    assert "1 diverged" in table and "nan" not in table, table


def test_a_full_disk_during_a_checkpoint_write_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import os
    from collections import namedtuple

    def zip_writer_fails(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    full = namedtuple("statvfs", "f_bavail f_frsize")(0, 4096)
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    out = tmp_path / "run"
    code, _, err = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(out), *FAST], capsys)
    assert code == 2 and "disk holding" in err and "is full" in err and str(out) in err, err
    assert not list(out.glob(".*.tmp"))

    def no_space(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code, _, err = run(["train", "--model", "resnet8", "--epochs", "1", "--out", str(tmp_path / "b"), *FAST], capsys)
    assert code == 2 and "is full" in err and err.count("\n") == 1, err
