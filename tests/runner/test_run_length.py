"""Defaults counted in epochs follow the run's length unless given: DKD's and ReviewKD's warm-ups, the init
stage on CIFAR; what a run used is written into its config.yaml, so a resume (which starts from it) keeps it."""

import pytest
import torch
import yaml

import kdlab
from kdlab import config as cfg
from kdlab import models
from kdlab.cli import main
from kdlab.runner.distill import init_epochs


def _objective(method, epochs, hparams=None):
    teacher = models.create("resnet8", 10, in_channels=1, image_size=8)
    student = models.create("resnet8", 10, in_channels=1, image_size=8)
    return kdlab.DistillationLoss(teacher, student, method=method, epochs=epochs, hparams=hparams,
                                  input_shape=(1, 8, 8))


@pytest.mark.parametrize("method", ["dkd", "reviewkd"])
@pytest.mark.parametrize("epochs, warmup", [(240, 20), (30, 3), (3, 1), (480, 40), (0, 20)])
def test_warmup_default_is_scaled_to_the_run(method, epochs, warmup):
    (m,) = _objective(method, epochs).methods
    assert m.hp["warmup"] == warmup  # 20 of 240 epochs; 0 = a length the objective was not told
    assert m.scale(warmup) == 1.0 and (warmup == 1 or m.scale(warmup - 1) < 1.0)


def test_a_warmup_the_user_sets_is_kept():
    (m,) = _objective("dkd", 30, {"dkd": {"warmup": 20}}).methods
    assert m.hp["warmup"] == 20


@pytest.mark.parametrize("epochs, expected", [(240, 30), (30, 4), (2, 1)])
def test_cifar_init_stage_is_scaled_and_an_explicit_one_kept(epochs, expected):
    c = cfg.build([{"data": {"name": "cifar100"}, "optim": {"epochs": epochs}}])
    assert init_epochs(c) == expected
    c.init_epochs = 7
    assert init_epochs(c) == 7


def test_config_yaml_records_the_scaled_values(tmp_path, capsys):
    fast = ["--data", "digits", "--batch-size", "128", "data.fraction=0.3", "--threads", "1"]
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet", *fast]) == 0
    out = tmp_path / "dkd"
    assert main(["distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8", "--method", "dkd",
                 "--epochs", "2", "--out", str(out), *fast]) == 0
    printed = capsys.readouterr().out
    assert "scaled to 2 epochs: dkd.warmup 1" in printed and "schedule: 2 epochs" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["methods"] == {"dkd": {"warmup": 1}}
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    # resuming the finished run starts from config.yaml: no difference to refuse, nothing scaled again
    assert main(["distill", "--resume", "--out", str(out), "--quiet"]) == 0
