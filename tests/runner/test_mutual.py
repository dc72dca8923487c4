"""Deep mutual learning: cohort objective, gradients, CLI runs and resume."""

import json

import pytest
import torch

from kdlab import models
from kdlab.cli import main
from kdlab.distillation.mutual import MutualObjective


def cohort(names, seed=0):
    torch.manual_seed(seed)
    return [models.create(n, 10, in_channels=1, image_size=8) for n in names]


@pytest.mark.parametrize("names", [["resnet8", "resnet8"], ["resnet8", "resnet14", "wrn_16_1"]])
def test_each_student_gets_its_own_gradient(names):
    students = cohort(names)
    objective = MutualObjective(students, [f"s{i}" for i in range(len(names))], "dml")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    out = objective(x, y)
    out.loss.backward()
    # Reference for student 0: its own CE + mean KL from the (constant) peers, computed separately.
    logits = [s(x) for s in students]
    own = torch.nn.functional.cross_entropy(logits[0], y)
    peers = [torch.nn.functional.kl_div(logits[0].log_softmax(1), z.detach().softmax(1), reduction="batchmean")
             for z in logits[1:]]
    ref = torch.autograd.grad(own + torch.stack(peers).mean(), list(students[0].parameters()))
    for p, r in zip(students[0].parameters(), ref):
        assert torch.allclose(p.grad, r, atol=1e-6)


def test_dml_and_dml_e_give_identical_student_gradients():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    grads = {}
    for variant in ("dml", "dml_e"):
        students = cohort(["resnet8", "resnet8", "resnet14"])
        out = MutualObjective(students, ["a", "b", "c"], variant)(x, y)
        out.loss.backward()
        grads[variant] = [p.grad.clone() for s in students for p in s.parameters()]
    for a, b in zip(grads["dml"], grads["dml_e"]):
        assert torch.allclose(a, b, atol=1e-6)


def test_mutual_cli_heterogeneous_cohort_and_resume(tmp_path, interrupt_in_epoch):
    args = ["mutual", "--models", "resnet8,wrn_16_1", "--data", "digits", "--epochs", "2", "--batch-size", "128",
            "--quiet", "data.fraction=0.3", "--out", str(tmp_path / "dml")]
    interrupt_in_epoch(2)
    assert main(args) == 130
    interrupt_in_epoch(None)
    assert main(args + ["--resume"]) == 0
    records = [json.loads(line) for line in (tmp_path / "dml" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("test_s0_resnet8_top1", "test_s1_wrn_16_1_top1", "test_ensemble_top1", "train_loss_s1_wrn_16_1_kl"):
        assert key in records[-1], key
    state = torch.load(tmp_path / "dml" / "last.pt", weights_only=True)
    assert set(state["models"]) == {"s0_resnet8", "s1_wrn_16_1", "ensemble"}


def test_one_student_is_an_error(capsys):
    assert main(["mutual", "--models", "resnet8", "--data", "digits"]) == 2
    assert "at least 2 students" in capsys.readouterr().err
