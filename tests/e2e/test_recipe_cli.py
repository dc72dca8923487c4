"""The training-recipe and visibility flags end to end: a resumed run with every recipe option on ends with
the same weights, optimizer state and EMA as an uninterrupted one; --eval-every / --eval-subset runs are read by
`kdlab report`; progress lines reach stdout and progress.log; bad values are one-line errors."""

import json

import pytest
import torch
import yaml

from kdlab.cli import main
from kdlab.engine.logging import read_metrics

FAST = ["--data", "digits", "--batch-size", "128", "data.fraction=0.3", "--model", "resnet8"]
RECIPE = ["--optimizer", "adamw", "--lr", "0.003", "optim.warmup_epochs=1", "--label-smoothing", "0.1", "--mixup",
          "0.2", "--cutmix", "1.0", "data.mix_prob=0.8", "--randaugment", "2,9", "--clip-grad-norm", "2",
          "--ema-decay", "0.9"]


def test_resume_with_every_recipe_option_matches_the_uninterrupted_run(tmp_path, whole_and_resumed):
    full, resumed = whole_and_resumed(["train", *FAST, *RECIPE, "--quiet", "--deterministic", "--seed", "2",
                                       "--epochs", "2"])
    for part in ("model", "train_model"):  # the EMA (reported) and the trained weights
        for key, value in full[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert any(not torch.equal(v, full["train_model"][k]) for k, v in full["model"].items())  # EMA != trained
    for index, state in full["optimizer"]["state"].items():  # AdamW's moments and step counts
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][name]), (index, name)
    lines = read_metrics(tmp_path / "killed")
    assert [r["epoch"] for r in lines] == [1, 2] and all(r["eval_weights"] == "ema" for r in lines)
    assert lines[0]["lr"] == pytest.approx(0.003)  # warm-up over 1 epoch, then cosine
    saved = yaml.safe_load((tmp_path / "killed" / "config.yaml").read_text())
    assert saved["optim"]["optimizer"] == "adamw" and saved["data"]["randaugment"] == "2,9"
    assert saved["ema_decay"] == 0.9 and saved["data"]["cutmix"] == 1.0


def test_distillation_with_mixing_smoothing_and_ema(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", *FAST, "--epochs", "1", "--quiet", "--out", str(teacher)]) == 0
    code = main(["distill", *FAST[:4], "--student", "resnet8", "--teacher", str(teacher / "best.pt"), "--method",
                 "dkd", "--epochs", "1", "--mixup", "0.4", "--label-smoothing", "0.1", "--ema-decay", "0.5",
                 "--out", str(tmp_path / "kd")])
    out = capsys.readouterr().out
    assert code == 0 and "test (EMA weights) top-1" in out, out
    terms = set(read_metrics(tmp_path / "kd")[-1])
    assert "train_loss_ce" in terms and any(t.startswith("train_loss_dkd") for t in terms), terms


def test_eval_every_and_eval_subset_runs_are_logged_named_and_reported(tmp_path, capsys):
    out = tmp_path / "quick"
    code = main(["train", *FAST, "--epochs", "3", "--eval-every", "2", "--eval-subset", "90", "--log-every", "1",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "(not evaluated: --eval-every)" in text and "test (90-image subset) top-1" in text
    assert "epoch 1/3  step 1/" in text and "img/s  ETA" in text  # stdout is not a terminal here
    lines = read_metrics(out)
    assert ["test_top1" in r for r in lines] == [False, True, True]
    assert lines[1]["eval_images"] == 90
    assert yaml.safe_load((out / "config.yaml").read_text())["eval_subset"] == 90
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] in (2, 3) and summary["last"]["test_top1"] == lines[-1]["test_top1"]
    reliability = json.loads((out / "reliability.json").read_text())
    assert reliability["epoch"] == 3 and sum(reliability["models"][""]["count"]) == 90
    log = (out / "progress.log").read_text()
    assert "step 1/" in log and "(not evaluated: --eval-every)" in log and "90-image subset" in log
    assert main(["report", str(out), "--plots", str(tmp_path / "plots")]) == 0
    report = capsys.readouterr().out
    assert "90-image subset of the test set" in report
    assert main(["train", *FAST, "--epochs", "3", "--eval-every", "2", "--eval-subset", "90", "--out", str(out),
                 "--resume", "--eval-subset", "200"]) == 2
    assert "eval_subset" in capsys.readouterr().err


def test_quiet_runs_still_write_the_progress_log(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["train", *FAST, "--epochs", "1", "--log-every", "1", "--quiet", "--out", str(out)]) == 0
    assert "step" not in capsys.readouterr().out
    assert "epoch 1/1  step 1/" in (out / "progress.log").read_text()


@pytest.mark.parametrize("argv, words", [
    (["--randaugment", "2"], "data.randaugment"),
    (["--randaugment", "2,40"], "magnitude"),
    (["--optimizer", "adam"], "optim.optimizer"),
    (["--label-smoothing", "1.0"], "label_smoothing"),
    (["--mixup", "-1"], "data.mixup"),
    (["--ema-decay", "1"], "ema_decay"),
    (["--eval-every", "0"], "eval_every"),
    (["--clip-grad-norm", "0"], "clip_grad_norm"),
    (["data.fixed_augmentation=true", "--randaugment", "1,5"], "fixed_augmentation"),
])
def test_bad_recipe_values_are_one_line_errors(tmp_path, capsys, argv, words):
    code = main(["train", *FAST, "--epochs", "1", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_mixing_with_a_teacher_cache_and_ema_of_a_cohort_are_refused(tmp_path, capsys):
    code = main(["distill", *FAST[:4], "--student", "resnet8", "--teacher-model", "resnet8", "--teacher-weights",
                 str(tmp_path / "t.pt"), "--method", "kd", "--cache-teacher", "--mixup", "0.2", "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "--cache-teacher" in capsys.readouterr().err
    code = main(["mutual", *FAST[:4], "--models", "resnet8,resnet8", "--epochs", "1", "--ema-decay", "0.9",
                 "--out", str(tmp_path / "m")])
    assert code == 2 and "ema_decay" in capsys.readouterr().err
