"""Experiment trackers: TensorBoard by default, MLflow and W&B (offline) when asked, each receiving every epoch
of metrics.jsonl; a resumed run continues the same tracker run; a missing package or unknown name is one line
before anything trains."""

from __future__ import annotations

import importlib.util
import json

import pytest

from kdlab.cli import main

FAST = ["--data", "digits", "--model", "resnet8", "--batch-size", "128", "--threads", "1", "--quiet",
        "data.fraction=0.2"]


def epochs_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mlflow_gets_every_epoch_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(run), "--logger", "mlflow", *FAST]) == 0
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert main(["train", "--resume", "--out", str(run), "--extend-to", "3", "--quiet"]) == 0
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "test_top1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (r["epoch"], r["test_top1"]) for r in epochs_of(run)]
    params = mlflow.tracking.MlflowClient().get_run(run_id).data.params
    assert params["model"] == "resnet8" and params["data.name"] == "digits"
    assert not (run / "tb").exists()  # only the trackers asked for


def test_wandb_runs_offline_inside_the_run_directory(tmp_path, capsys):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--logger", "tensorboard,wandb", *FAST]) == 0
    wandb_id = json.loads((run / "trackers.json").read_text())["wandb"]
    offline = list((run / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert (run / "tb").is_dir()
    assert f"wandb sync {offline[0]}" in capsys.readouterr().out


def test_a_missing_package_or_unknown_name_stops_before_training(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code = main(["train", "--epochs", "1", "--out", str(tmp_path / "a"), "--logger", "mlflow", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'kdlab[mlflow]'" in err
    assert not (tmp_path / "a" / "last.pt").exists()
    code = main(["train", "--epochs", "1", "--out", str(tmp_path / "b"), "--logger", "tensorbord", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "unknown logger 'tensorbord'" in err and "tensorboard" in err


def test_logger_none_writes_metrics_jsonl_only(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--logger", "none", *FAST]) == 0
    assert len(epochs_of(run)) == 1 and not (run / "tb").exists() and not (run / "trackers.json").exists()
