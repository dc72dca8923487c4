"""DOT (kdlab.engine.dot, Zhao et al. ICCV 2023): the update against a float64 transcription of the rule in the
authors' code (github.com/megvii-research/mdistiller, mdistiller/engine/dot.py), its SGD limit, the trainer's
two-gradient step, `--method dot`, resume, and the combinations refused in one line."""

import pytest
import torch
import yaml
from torch import nn

from cli_flags import DIGITS_FAST
from kdlab import config as cfg
from kdlab.cli import main
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.dot import DOT, split_gradients
from kdlab.engine.schedule import describe
from kdlab.engine.trainer import Trainer
from kdlab.errors import KdlabError


def reference_dot(theta, steps, lr, beta, delta, wd):
    """mdistiller's `dot()` rule written out per parameter, in float64. `steps` is a list of (g_task, g_kd) pairs
    of lists (None = no gradient). Returns the parameters after every step."""
    theta = [t.double().clone() for t in theta]
    v_task, v_kd = [None] * len(theta), [None] * len(theta)
    history = []
    for g_tasks, g_kds in steps:
        for i, (gt, gk) in enumerate(zip(g_tasks, g_kds, strict=True)):
            in_kd, in_task = gk is not None, gt is not None
            if in_task:  # task step: weight decay always on the task gradient
                d = gt.double() + wd * theta[i]
                m = beta - delta if in_kd else beta  # (β_ce + β_kd) / 2 = β for a task-only parameter
                v_task[i] = d.clone() if v_task[i] is None else m * v_task[i] + d
                theta[i] = theta[i] - lr * v_task[i]
            if in_kd:  # distillation step: weight decay only when the parameter has no task gradient
                d = gk.double() + (0.0 if in_task else wd * theta[i])
                m = beta + delta if in_task else beta
                v_kd[i] = d.clone() if v_kd[i] is None else m * v_kd[i] + d
                theta[i] = theta[i] - lr * v_kd[i]
        history.append([t.clone() for t in theta])
    return history


def random_steps(shapes, n, seed=0):
    """Gradients for three parameters: both gradients, task only, distillation only (a connector)."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n):
        gt = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        gk = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        steps.append(([gt[0], gt[1], None], [gk[0], None, gk[2]]))
    return steps


def test_update_matches_the_authors_rule_for_every_kind_of_parameter():
    shapes = [(3, 4), (4,), (2, 2)]
    g = torch.Generator().manual_seed(1)
    theta0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    params = [nn.Parameter(t.clone()) for t in theta0]
    lr, beta, delta, wd = 0.05, 0.9, 0.075, 5e-4
    opt = DOT(params, lr=lr, momentum=beta, delta=delta, weight_decay=wd)
    steps = random_steps(shapes, 5)
    expected = reference_dot(theta0, steps, lr, beta, delta, wd)
    for (g_task, g_kd), want in zip(steps, expected, strict=True):
        for p, gt in zip(params, g_task, strict=True):
            p.grad = gt
        opt.set_distill_gradients(params, g_kd)
        opt.step()
        for p, w in zip(params, want, strict=True):
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)  # same float64 operations
    state = opt.state[params[0]]
    assert set(state) == {"task_buffer", "distill_buffer"}
    assert "distill_buffer" not in opt.state[params[1]] and "task_buffer" not in opt.state[params[2]]


def test_delta_zero_is_sgd_with_momentum_on_the_summed_gradient():
    """Δ = 0: v_task + v_kd obeys SGD's recursion on g_task + g_kd + w·θ (with the same first-step buffers)."""
    g = torch.Generator().manual_seed(2)
    theta0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    dot_p, sgd_p = nn.Parameter(theta0.clone()), nn.Parameter(theta0.clone())
    dot = DOT([dot_p], lr=0.1, momentum=0.9, delta=0.0, weight_decay=1e-3)
    sgd = torch.optim.SGD([sgd_p], lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(6):
        gt, gk = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
        dot_p.grad, sgd_p.grad = gt.clone(), gt + gk
        dot.set_distill_gradients([dot_p], [gk])
        dot.step()
        sgd.step()
    # float64 with the sums taken in another order: rounding of a few ulps of |θ| ~ 1
    torch.testing.assert_close(dot_p.detach(), sgd_p.detach(), rtol=0, atol=1e-12)


def test_delta_changes_the_trajectory_and_its_range_is_checked():
    with pytest.raises(ValueError, match="momentum"):
        DOT([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, delta=0.2)
    with pytest.raises(KdlabError, match="dot_delta"):
        cfg.build([{"optim": {"optimizer": "dot", "dot_delta": 0.15}}])
    with pytest.raises(KdlabError, match="fp16"):
        cfg.build([{"optim": {"optimizer": "dot"}, "precision": "fp16"}])
    with pytest.raises(KdlabError, match="clip_grad_norm"):
        cfg.build([{"optim": {"optimizer": "dot", "clip_grad_norm": 5.0}}])
    line = describe(cfg.build([{"optim": {"optimizer": "dot", "epochs": 10}}]).optim)
    assert "DOT momentum 0.825 (task) / 0.975 (distillation)" in line


class Tiny(nn.Module):
    def __init__(self, k=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        return self.fc(self.body(x))


def test_split_gradients_are_the_gradients_of_each_part():
    teacher, student = Tiny(seed=1).eval(), Tiny(seed=2)
    objective = DistillationLoss(teacher, student, "kd")
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    out = objective(x, y)
    task, distill = out.parts
    torch.testing.assert_close(task + distill, out.loss)
    params = list(student.parameters())
    g_task, g_kd = split_gradients(task, distill, params)
    # each reference on a graph of its own (the student has no BatchNorm or dropout: the same outputs)
    ref_task = torch.autograd.grad(objective(x, y).parts[0], params)
    ref_kd = torch.autograd.grad(objective(x, y).parts[1], params)
    for a, b in zip(g_task, ref_task, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(g_kd, ref_kd, strict=True):
        torch.testing.assert_close(a, b)


def make_trainer(tmp_path, objective, **optim):
    config = cfg.build([{"method": "kd", "optim": {"epochs": 1, "lr": 0.1, "schedule": "constant", **optim}}])
    loader = [(torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6))]
    return Trainer(config, objective, loader, loader, tmp_path, {"model": "tiny", "num_classes": 4},
                   torch.device("cpu"), quiet=True)


def test_trainer_step_feeds_each_gradient_to_its_momentum(tmp_path):
    teacher, student = Tiny(seed=1).eval(), Tiny(seed=2)
    objective = DistillationLoss(teacher, student, "kd")
    trainer = make_trainer(tmp_path, objective, optimizer="dot", weight_decay=0.0)
    assert isinstance(trainer.optimizer, DOT)
    images, targets, indices = trainer.train_loader[0]
    before = [p.detach().clone() for p in student.parameters()]
    out = objective(images, targets, indices)
    g_task, g_kd = split_gradients(*out.parts, list(student.parameters()))
    trainer.train_step(images, targets, indices, 1)
    for p, p0, gt, gk in zip(student.parameters(), before, g_task, g_kd, strict=True):
        state = trainer.optimizer.state[p]
        torch.testing.assert_close(state["task_buffer"], gt)  # first step: each buffer is its gradient
        torch.testing.assert_close(state["distill_buffer"], gk)
        torch.testing.assert_close(p.detach(), p0 - 0.1 * (gt + gk))


def test_method_dot_is_kd_under_the_dot_optimizer(tmp_path):
    objective = DistillationLoss(Tiny(seed=1).eval(), Tiny(seed=2), "dot")
    assert objective.requested_optimizer() == "dot"
    assert isinstance(make_trainer(tmp_path, objective).optimizer, DOT)
    with pytest.raises(KdlabError, match="drop --optimizer"):
        make_trainer(tmp_path, objective, optimizer="adamw")
    kd = DistillationLoss(Tiny(seed=1).eval(), Tiny(seed=2), "kd")
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.equal(objective(x, y).loss, kd(x, y).loss)  # the same loss as KD


@pytest.fixture
def digits_teacher(digits_resnet8):
    return digits_resnet8


def test_dot_run_resumes_to_the_same_weights_and_records_its_optimizer(tmp_path, digits_teacher, whole_and_resumed):
    args = ["distill", "--teacher", str(digits_teacher), "--student", "resnet8", "--method", "dot", "--epochs", "2",
            *DIGITS_FAST]
    whole, resumed = whole_and_resumed(args)
    saved = yaml.safe_load((tmp_path / "whole" / "config.yaml").read_text())
    assert saved["method"] == "dot" and saved["optim"]["optimizer"] == "dot"  # config.yaml says what ran
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    buffers = {k for s in resumed["optimizer"]["state"].values() for k in s}
    assert buffers == {"task_buffer", "distill_buffer"}


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "resnet8", "--optimizer", "dot"], "kdlab train has no distillation loss"),
    (["mutual", "--models", "resnet8,resnet8", "--optimizer", "dot"], "kdlab mutual has no distillation loss"),
    (["distill", "--student", "resnet8", "--method", "kdsvd", "--optimizer", "dot"], "kdsvd clip"),
    (["distill", "--student", "resnet8", "--method", "dot", "--optimizer", "adamw"], "drop --optimizer"),
    (["distill", "--student", "resnet8", "--method", "dot", "--precision", "fp16"], "fp16"),
])
def test_combinations_without_meaning_are_refused_in_one_line(tmp_path, digits_teacher, capsys, args, words):
    if args[0] == "distill":
        args = [*args, "--teacher", str(digits_teacher)]
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "run"), *DIGITS_FAST]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_split_gradients_of_a_graphless_distillation_loss_are_none():
    """A step whose distillation term has no graph (nothing to distil yet) gives no distillation gradient."""
    w = nn.Parameter(torch.tensor([2.0, -1.0]))
    task = (w * torch.tensor([3.0, 4.0])).sum()
    g_task, g_distill = split_gradients(task, torch.zeros(()), [w])
    assert torch.equal(g_task[0], torch.tensor([3.0, 4.0])) and list(g_distill) == [None]
