"""Precision choices: the warning for bf16 on CPUs without native bf16, and the CLI printing it once."""

import torch

from kdlab.cli import main
from kdlab.engine import precision


def test_bf16_warning_only_on_cpus_without_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_is_native", lambda: False)
    assert "--precision fp32" in precision.precision_warning(cpu, "bf16")
    assert precision.precision_warning(cpu, "fp32") is None
    assert precision.precision_warning(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(precision, "cpu_bf16_is_native", lambda: True)
    assert precision.precision_warning(cpu, "bf16") is None


def test_native_bf16_probe_returns_a_bool():
    assert isinstance(precision.cpu_bf16_is_native(), bool)


def test_train_with_bf16_prints_the_warning_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_bf16_is_native", lambda: False)
    code = main(["train", "--data", "digits", "--model", "resnet8", "--epochs", "1", "--precision", "bf16",
                 "--fraction", "0.1", "--out", str(tmp_path / "run")])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("kdlab: warning: bf16 on this CPU is emulated") == 1
