"""The training-recipe options (kdlab.engine.trainer, objectives, ema), each checked for what it does to one
step: label smoothing, mixed-batch CE, AdamW, gradient clipping (with fp16 unscaling and with an objective's
own backward), EMA; and the resume check for keys a saved config predates."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab import config as cfg
from kdlab.data.augment import BatchMixer, Mix
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.ema import WeightEMA
from kdlab.engine.objectives import StepOutput, SupervisedObjective, classification_loss
from kdlab.engine.schedule import describe, lr_factor
from kdlab.engine.trainer import Trainer, resume_conflicts
from kdlab.losses import kd as kd_loss


def logits_targets(n=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)


def test_label_smoothing_is_the_smoothed_target_cross_entropy():
    logits, targets = logits_targets()
    eps, k = 0.1, logits.shape[1]
    soft = F.one_hot(targets, k).float() * (1 - eps) + eps / k
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(classification_loss(logits, targets, label_smoothing=eps), expected, atol=1e-6)
    assert torch.equal(classification_loss(logits, targets), F.cross_entropy(logits, targets))  # off: as before


def test_mixed_batch_cross_entropy_uses_both_labels_and_lambda():
    logits, targets = logits_targets()
    partner = torch.tensor([1, 0, 3, 2, 5, 4])
    mix = Mix("mixup", 0.7, partner, targets[partner])
    expected = 0.7 * F.cross_entropy(logits, targets) + 0.3 * F.cross_entropy(logits, targets[partner])
    assert torch.allclose(classification_loss(logits, targets, mix), expected)


class Tiny(nn.Module):
    def __init__(self, k=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        return self.fc(self.body(x))


def test_distillation_smooths_only_the_ce_term_and_feeds_the_teacher_the_mixed_images():
    teacher, student = Tiny(seed=1).eval(), Tiny(seed=2)
    x, targets = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    plain = DistillationLoss(teacher, student, "kd", ce_weight=1.0)
    smooth = DistillationLoss(teacher, student, "kd", ce_weight=1.0, label_smoothing=0.2)
    student.eval()  # same BN statistics in both calls
    a, b = plain(x, targets), smooth(x, targets)
    assert torch.equal(a.terms["kd"], b.terms["kd"]) and not torch.equal(a.terms["ce"], b.terms["ce"])
    mixed, mix = BatchMixer(mixup=1.0)(x, targets, torch.Generator().manual_seed(0))
    seen = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    out = plain(mixed, targets, mix=mix)
    hook.remove()
    assert torch.equal(seen[-1], mixed)  # the teacher saw the mixed images
    with torch.no_grad():
        s, t = student(mixed), teacher(mixed)
    assert torch.allclose(out.terms["kd"], 0.9 * kd_loss(s, t, temperature=4.0), atol=1e-6)
    assert torch.allclose(out.terms["ce"], classification_loss(s, targets, mix), atol=1e-6)


def make_trainer(tmp_path, objective, **over):
    layer = {"optim": {"epochs": 2, "lr": 0.1, "schedule": "constant", **over.pop("optim", {})}, **over}
    config = cfg.build([layer])
    loader = [(torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6))]
    return Trainer(config, objective, loader, loader, tmp_path, {"model": "tiny", "num_classes": 4},
                   torch.device("cpu"), quiet=True)


def test_adamw_has_decoupled_weight_decay_and_warms_up(tmp_path):
    trainer = make_trainer(tmp_path, SupervisedObjective(Tiny()),
                           optim={"optimizer": "adamw", "betas": [0.8, 0.99], "weight_decay": 0.5,
                                  "warmup_epochs": 2, "epochs": 4})
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # warm-up: epoch 1 of 2 at half the LR
    assert [lr_factor(trainer.config.optim)(e) for e in range(3)] == [0.5, 1.0, 1.0]
    p = opt.param_groups[0]["params"][0]
    before = p.detach().clone()
    for q in (q for g in opt.param_groups for q in g["params"]):
        q.grad = torch.zeros_like(q)  # no gradient: only the decoupled decay moves the weights
    opt.step()
    assert torch.allclose(p, before * (1 - 0.05 * 0.5), atol=1e-7)
    assert "AdamW betas 0.8,0.99" in describe(trainer.config.optim)


def test_nesterov_with_adamw_is_refused():
    with pytest.raises(cfg.KdlabError, match="nesterov"):
        cfg.build([{"optim": {"optimizer": "adamw", "nesterov": True}}])


def grad_norm(params):
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_clip_grad_norm_bounds_the_step_gradient_after_unscaling(tmp_path, precision):
    trainer = make_trainer(tmp_path, SupervisedObjective(Tiny()), precision=precision,
                           optim={"clip_grad_norm": 0.01, "momentum": 0.0, "weight_decay": 0.0})
    before = [p.detach().clone() for p in trainer.clipped_params]
    trainer.train_step(*trainer.train_loader[0], epoch=1)
    assert grad_norm(trainer.clipped_params) == pytest.approx(0.01, rel=1e-4)  # unscaled, then clipped
    steps = [(p.detach() - b).norm() for p, b in zip(trainer.clipped_params, before, strict=True)]
    moved = torch.linalg.vector_norm(torch.stack(steps))
    assert moved == pytest.approx(0.1 * 0.01, rel=1e-3)  # plain SGD: lr x the clipped gradient


class OwnBackward(SupervisedObjective):
    """An objective that fills the gradients itself (as clip_to_ce methods do), times the loss scale."""

    def forward(self, images, targets, indices=None, epoch=1, mix=None):
        out = super().forward(images, targets, indices, epoch, mix)
        params = list(self.parameters())

        def backward(scale=1.0):
            for p, g in zip(params, torch.autograd.grad(out.loss * 100.0, params), strict=True):
                p.grad = g * scale
        return StepOutput(out.loss, out.terms, out.logits, backward)


def test_clip_grad_norm_applies_after_an_objectives_own_backward(tmp_path):
    trainer = make_trainer(tmp_path, OwnBackward(Tiny()), optim={"clip_grad_norm": 0.5})
    trainer.train_step(*trainer.train_loader[0], epoch=1)
    assert grad_norm(trainer.clipped_params) == pytest.approx(0.5, rel=1e-4)


def test_weight_ema_averages_weights_and_buffers_and_copies_counters():
    model = Tiny()
    ema = WeightEMA(model, 0.75)
    start = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.body[2].running_mean.add_(4.0)
        model.body[2].num_batches_tracked.add_(3)
    ema.update(model)
    now = ema.state_dict()
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(now[name], 0.75 * start[name] + 0.25 * value), name
        else:
            assert torch.equal(now[name], value), name
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_copy_drops_the_tap_hooks():
    teacher, student = Tiny(seed=1), Tiny(seed=2)
    loss = DistillationLoss(teacher, student, "kd")
    hooks = sum(len(m._forward_hooks) for m in student.modules())
    ema = WeightEMA(student, 0.9)
    assert sum(len(m._forward_hooks) for m in ema.module.modules()) == 0
    assert sum(len(m._forward_hooks) for m in student.modules()) == hooks
    loss(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3]))  # the student's taps still work


def test_trainer_with_ema_evaluates_and_saves_the_average_and_keeps_the_trained_weights(tmp_path):
    trainer = make_trainer(tmp_path, SupervisedObjective(Tiny()), ema_decay=0.5)
    trainer.train_step(*trainer.train_loader[0], epoch=1)
    state = trainer.state_dict(1)
    student = trainer.objective.model
    assert all(torch.equal(state["train_model"][k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(state["model"][k], v) for k, v in trainer.ema.state_dict().items())
    assert not torch.equal(state["model"]["fc.weight"], state["train_model"]["fc.weight"])
    assert trainer.eval_models()[""] is trainer.ema.module
    record = trainer.evaluate_all()
    assert record["eval_weights"] == "ema"
    assert "EMA weights" in Trainer.describe({**record, "epoch": 1, "lr": 0.1, "train_loss": 1.0,
                                              "train_top1": 50.0, "images_per_sec": 1.0})
    fresh = make_trainer(tmp_path, SupervisedObjective(Tiny(seed=5)), ema_decay=0.5)
    fresh.load_state(state)
    assert torch.equal(fresh.objective.model.fc.weight, student.fc.weight)
    assert torch.equal(fresh.ema.module.fc.weight, trainer.ema.module.fc.weight)


def test_ema_of_a_cohort_is_refused(tmp_path):
    cohort = SimpleNamespace(eval_models=lambda: {"a": Tiny(), "b": Tiny()})
    with pytest.raises(cfg.KdlabError, match="ema_decay"):
        Trainer._make_ema(cohort, 0.9)


def test_eval_every_evaluates_every_k_epochs_and_the_last(tmp_path):
    trainer = make_trainer(tmp_path, SupervisedObjective(Tiny()), eval_every=3, optim={"epochs": 7})
    assert [e for e in range(1, 8) if trainer.evaluates(e)] == [3, 6, 7]
    record = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_top1": 50.0, "images_per_sec": 1.0}
    assert not trainer.note_epoch(1, record) and trainer.best_epoch == 0
    assert "not evaluated" in Trainer.describe(record)


def test_resume_counts_keys_a_saved_config_predates_with_their_defaults():
    saved = cfg.to_dict(cfg.build([{}]))
    for key in ("label_smoothing", "ema_decay", "eval_every", "eval_subset"):
        saved.pop(key)
    for key in ("mixup", "cutmix", "mix_prob", "randaugment"):
        saved["data"].pop(key)
    for key in ("optimizer", "betas", "clip_grad_norm"):
        saved["optim"].pop(key)
    assert resume_conflicts(saved, cfg.to_dict(cfg.build([{}]))) == []
    changed = cfg.to_dict(cfg.build([{"label_smoothing": 0.1, "optim": {"optimizer": "adamw"},
                                      "data": {"mixup": 0.2}, "eval_every": 2, "log_every": 5}]))
    conflicts = resume_conflicts(saved, changed)
    assert [c.split(":")[0] for c in conflicts] == ["data.mixup", "eval_every", "label_smoothing",
                                                    "optim.optimizer"]  # log_every is display only
