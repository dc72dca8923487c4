"""End-to-end runs through the `kdlab` command on the embedded digits data, and its error messages."""

import json
import subprocess
import sys

import pytest
import torch

from kdlab.cli import main

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--quiet", "data.fraction=0.3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "--model", "resnet8", "--out", str(out), *FAST]) == 0
    return out


def test_train_writes_a_complete_run(teacher_run):
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "reliability.json"):
        assert (teacher_run / name).exists(), name
    record = json.loads((teacher_run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("epoch", "lr", "train_loss", "train_loss_ce", "test_top1", "test_top5", "test_nll", "test_ece"):
        assert key in record, key
    assert 0 <= record["test_top1"] <= 100 and record["epoch"] == 1
    assert list((teacher_run / "tb").iterdir())  # TensorBoard events


def test_eval_and_distill_through_cli(teacher_run, tmp_path, capsys):
    code, out, _ = run(["eval", "--checkpoint", str(teacher_run / "best.pt"), "--data", "digits"], capsys)
    assert code == 0 and "top-1" in out and "ECE" in out
    code, out, err = run(["distill", "--teacher", str(teacher_run / "best.pt"), "--student", "resnet8",
                          "--method", "kd", "--out", str(tmp_path / "kd"), "method.kd.temperature=2", *FAST],
                         capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss_ce", "train_loss_kd"} <= set(record)


def test_existing_run_is_not_overwritten(teacher_run, capsys):
    before = (teacher_run / "last.pt").read_bytes()
    code, _, err = run(["train", "--model", "resnet8", "--out", str(teacher_run), *FAST], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (teacher_run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "resnett20", "--data", "digits"], "did you mean 'resnet20'"),
    (["train", "--model", "resnet8", "--data", "cifar1000"], "did you mean 'cifar100'"),
    (["train", "--model", "resnet8", "--data", "digits", "optim.lrr=0.1"], "did you mean 'lr'"),
    (["train", "--model", "resnet8", "--data", "digits", "--precision", "fp8"], "precision"),
    (["distill", "--student", "resnet8", "--data", "digits", "--method", "kdd", "--teacher", "x.pt"],
     "did you mean 'kd'"),
    (["distill", "--student", "resnet8", "--data", "digits", "--method", "kd", "--teacher", "missing.pt"],
     "does not exist"),
    (["distill", "--student", "resnet8", "--data", "digits", "--method", "kd", "--teacher", "t.pt",
      "method.kd.temp=3"], "did you mean 'temperature'"),
    (["train", "--model", "resnet8", "--data", "cifar100", "--data-root", "/nonexistent"], "cifar-100-python"),
])
def test_bad_input_is_one_line_without_traceback(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args + ["--out", str(tmp_path / "x")] if args[0] == "train" else args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_teacher_of_other_data_is_rejected(teacher_run, tmp_path, capsys):
    state = torch.load(teacher_run / "best.pt", weights_only=True)
    state["arch"]["num_classes"] = 100
    torch.save(state, tmp_path / "wrong.pt")
    code, _, err = run(["distill", "--teacher", str(tmp_path / "wrong.pt"), "--student", "resnet8", "--method", "kd",
                        "--out", str(tmp_path / "kd"), *FAST], capsys)
    assert code == 2 and "100 classes" in err and not (tmp_path / "kd" / "last.pt").exists()
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(["distill", "--teacher", str(tmp_path / "corrupt.pt"), "--student", "resnet8", "--method",
                        "kd", "--out", str(tmp_path / "kd2"), *FAST], capsys)
    assert code == 2 and "cannot be read" in err


def test_list_commands(capsys):
    for what, expected in (("models", "resnet32x4"), ("datasets", "cifar100"), ("methods", "dkd")):
        code, out, _ = run(["list", what], capsys)
        assert code == 0 and expected in out


def test_python_m_kdlab_entry_point():
    proc = subprocess.run([sys.executable, "-m", "kdlab", "list", "methods"], capture_output=True, text=True)
    assert proc.returncode == 0 and "kd" in proc.stdout


def test_resume_matches_uninterrupted_run(tmp_path, interrupt_in_epoch):
    common = ["train", "--model", "resnet8", "--data", "digits", "--batch-size", "128", "--quiet", "--deterministic",
              "--seed", "3", "--epochs", "3", "data.fraction=0.3"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0

    interrupt_in_epoch(3)
    assert main([*common, "--out", str(tmp_path / "part")]) == 130
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["epoch"] == 2
    interrupt_in_epoch(None)
    assert main([*common, "--out", str(tmp_path / "part"), "--resume"]) == 0

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 3
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_checkpoints_of_wrapped_models_have_plain_keys():
    from torch import nn

    from kdlab.engine.trainer import unwrap
    from kdlab.models import create

    model = create("resnet8", 10, in_channels=1, image_size=8)
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it runs
    assert unwrap(compiled) is model and unwrap(nn.DataParallel(model)) is model and unwrap(model) is model


def _config(argv):
    from kdlab.cli import build_parser, config_from_args

    args, extra = build_parser().parse_known_args(argv)  # key=value anywhere, as kdlab.cli.main takes them
    args.overrides = [*args.overrides, *extra]
    return config_from_args(args)


def test_flag_and_key_value_that_disagree_are_refused(capsys, tmp_path):
    code, _, err = run(["train", "--data", "digits", "--out", str(tmp_path / "x"), "--lr", "0.1", "optim.lr=0.001"],
                       capsys)
    assert code == 2 and "--lr 0.1 and optim.lr=0.001 both set optim.lr" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    code, _, err = run(["distill", "--student", "resnet8", "--data", "digits", "--method", "kd", "--teacher", "t.pt",
                        "model=resnet20"], capsys)
    assert code == 2 and "--student resnet8 and model=resnet20" in err
    # The same value twice is no conflict.
    assert _config(["train", "--lr", "0.1", "optim.lr=1e-1", "--epochs", "2", "optim.epochs=2"]).optim.lr == 0.1


def test_init_epochs_is_refused_for_methods_without_an_init_stage(capsys):
    for spec in ("kd", "FN", "kd+at"):
        code, _, err = run(["distill", "--student", "resnet8", "--data", "digits", "--method", spec, "--teacher",
                            "t.pt", "--init-epochs", "5"], capsys)
        assert code == 2 and "has no init stage" in err and "ab, fsp, ft, mhgd" in err, err
    code, _, err = run(["distill", "--student", "resnet8", "--data", "digits", "--method", "kd", "--teacher", "t.pt",
                        "init_epochs=5"], capsys)
    assert code == 2 and "has no init stage" in err
    for spec in ("ft", "kd+ab"):
        assert _config(["distill", "--method", spec, "--init-epochs", "5"]).init_epochs == 5
    assert _config(["distill", "--method", "kd", "--init-epochs", "0"]).init_epochs == 0  # nothing to refuse


def test_method_names_of_other_command_lines(teacher_run, tmp_path, capsys):
    config = _config(["distill", "--method", "KD+FN", "method.FN.weight=50", "method.KD.temperature=2"])
    assert config.method == "kd+fitnet" and config.methods == {"fitnet": {"weight": 50}, "kd": {"temperature": 2}}
    for spelling, name in (("AT", "at"), ("NST", "nst"), ("RKD", "rkd"), ("SP", "sp"), ("OD", "od"), ("fn", "fitnet")):
        assert _config(["distill", "--method", spelling]).method == name
    code, _, err = run(["distill", "--teacher", str(teacher_run / "best.pt"), "--student", "resnet8", "--method", "FN",
                        "--out", str(tmp_path / "fn"), *FAST], capsys)
    assert code == 0, err
    assert "method: fitnet" in (tmp_path / "fn" / "config.yaml").read_text()
    code, out, _ = run(["list", "methods"], capsys)
    assert "(also FN)" in out


def test_report_names_a_corrupt_config_yaml(teacher_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "runs" / "teacher"
    shutil.copytree(teacher_run, run_dir)
    (run_dir / "config.yaml").write_text("model: resnet8\noptim: {lr: [0.1,\n")
    code, _, err = run(["report", str(tmp_path / "runs")], capsys)
    assert code == 2 and f"{run_dir / 'config.yaml'} is not valid YAML" in err, err
    assert "summary.json" not in err and len(err.strip().splitlines()) == 1
    (run_dir / "config.yaml").write_text("- just\n- a list\n")
    code, _, err = run(["report", str(tmp_path / "runs")], capsys)
    assert code == 2 and "holds no mapping" in err


def test_report_names_a_corrupt_summary_json(teacher_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "runs" / "teacher"
    shutil.copytree(teacher_run, run_dir)
    (run_dir / "summary.json").write_text('{"arch": {"model": "res')
    code, _, err = run(["report", str(tmp_path / "runs")], capsys)
    assert code == 2 and f"{run_dir / 'summary.json'} is not a valid summary" in err, err
    assert "no summary.json yet" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--out", str(run_dir), "--resume", "--quiet"]) == 0  # the fix the message names
    code, out, err = run(["report", str(tmp_path / "runs")], capsys)
    assert code == 0 and "resnet8" in out, err


def test_every_command_has_one_handler(capsys):
    import argparse

    from kdlab.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) == set(sub.choices)
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().out  # no command: the help, exit 2
