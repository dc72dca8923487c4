"""SSKD's wiring (docs/methods.md#sskd): the rotated views both networks see, the init stage that trains only the
teacher's head, the frozen head in the main phase, the terms and their weights, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab import losses, models
from kdlab.cli import main
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods import get, parse


def make(method: str = "sskd", **hparams):
    torch.manual_seed(0)
    teacher = models.create("resnet8", 10).eval()
    student = models.create("resnet8", 10)
    loss_fn = DistillationLoss(teacher, student, method=method, input_shape=(3, 32, 32), **hparams)
    return teacher, student, loss_fn.train()


def test_both_networks_see_four_rotations_and_ce_reads_the_first():
    teacher, student, loss_fn = make()
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, i[0].shape[0]))
             for k, m in (("teacher", teacher), ("student", student))]
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])
    out = loss_fn(x, y)
    assert seen == {"teacher": 12, "student": 12}
    assert out.logits.shape == (3, 10)
    assert set(out.terms) == {"ce", "sskd_kd", "sskd_tf", "sskd_ss"}
    assert out.terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(out.logits, y).item(), rel=1e-5)
    for h in hooks:
        h.remove()


def test_init_stage_trains_only_the_teacher_head_then_freezes_it():
    teacher, student, loss_fn = make()
    method = loss_fn.methods[0]
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    loss_fn.set_phase("init")
    params = list(loss_fn.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in method.teacher_head.parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    out = loss_fn(torch.randn(4, 3, 32, 32), torch.arange(4))
    assert set(out.terms) == {"sskd_head"}
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    assert all(torch.equal(v, s_before[k]) for k, v in student.state_dict().items())  # not run, BN untouched
    loss_fn.set_phase("main")
    assert not any(p.requires_grad for p in method.teacher_head.parameters())
    assert not method.teacher_head.training
    out = loss_fn(torch.randn(4, 3, 32, 32), torch.arange(4))
    out.loss.backward()
    assert all(p.grad is not None for p in method.student_head.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_terms_are_the_weighted_losses_of_the_views():
    _, _, loss_fn = make(kd_weight=1.0, tf_weight=1.0, ss_weight=1.0, ss_ratio=1.0)
    method = loss_fn.methods[0]
    captured = {}
    original = type(method).forward

    def spy(self, batch):
        captured["batch"] = batch
        return original(self, batch)

    type(method).forward = spy
    try:
        x, y = torch.randn(2, 3, 32, 32), torch.tensor([4, 7])
        out = loss_fn(x, y)
    finally:
        type(method).forward = original
    b = captured["batch"]
    assert b.views == 4 and b.student_logits.shape == (8, 10) and b.targets.shape == (2,)
    s, t = b.student_logits.detach(), b.teacher_logits
    assert out.terms["sskd_kd"].item() == pytest.approx(losses.kd(s[:2], t[:2], 4.0).item(), rel=1e-5)
    assert out.terms["sskd_tf"].item() == pytest.approx(losses.sskd_transform(s, t, y, 4, 4.0, 1.0).item(), rel=1e-5)
    with torch.no_grad():
        s_sim = losses.rotation_similarity(method.student_head(b.student["embedding"].flatten(1)))
        t_sim = losses.rotation_similarity(method.teacher_head(b.teacher["embedding"].flatten(1)))
    assert out.terms["sskd_ss"].item() == pytest.approx(losses.sskd_similarity(s_sim, t_sim, 0.5, 1.0).item(),
                                                        rel=1e-5)


def test_other_methods_of_a_combination_read_the_first_view():
    _, _, loss_fn = make("sskd+at")
    out = loss_fn(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert "at" in out.terms and torch.isfinite(out.loss)


def test_refusals_are_one_line(monkeypatch):
    with pytest.raises(KdlabError, match="ss_ratio must be in"):
        parse("sskd", {"sskd": {"ss_ratio": 1.5}})
    monkeypatch.setattr(get("kd"), "views", 2)
    with pytest.raises(KdlabError, match="at most one"):
        parse("sskd+kd")
    monkeypatch.undo()
    _, _, loss_fn = make()
    with pytest.raises(KdlabError, match="square"):
        loss_fn(torch.randn(2, 3, 32, 16), torch.tensor([0, 1]))


def test_sskd_distills_on_digits_through_the_cli(tmp_path, capsys):
    fast = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--quiet", "data.fraction=0.2"]
    assert main(["train", "--model", "resnet8", "--out", str(tmp_path / "t"), *fast]) == 0
    out = tmp_path / "s"
    assert main(["distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8", "--method", "sskd",
                 "--init-epochs", "1", "--out", str(out), *fast]) == 0
    assert (out / "init" / "last.pt").is_file() and (out / "summary.json").is_file()
    line = (out / "metrics.jsonl").read_text().splitlines()[-1]
    for term in ("train_loss_sskd_kd", "train_loss_sskd_tf", "train_loss_sskd_ss"):
        assert term in line
    capsys.readouterr()
    code = main(["distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8", "--method", "sskd",
                 "--cache-teacher", "--out", str(tmp_path / "c"), *fast])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "rotations" in err and "\n" not in err
