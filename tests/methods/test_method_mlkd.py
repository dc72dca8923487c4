"""MLKD's wiring (docs/methods.md#mlkd): the weak and strong views both networks see, the strong view's draws (in
pixel space, seeded by the run, restored on resume), the terms on fixed logits against a float64 transcription of
the official loss (github.com/Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py
`forward_train`), a training step, the CLI run and its resume, and the one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from cli_flags import DIGITS_FAST
from kdlab import losses, methods, models
from kdlab.cli import main
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.objectives import classification_loss
from kdlab.errors import KdlabError
from kdlab.methods.base import BuildContext, DistillBatch

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100's


def make(seed=0, **hparams):
    torch.manual_seed(seed)
    teacher = models.create("resnet8", 10).eval()
    student = models.create("resnet8", 10)
    loss_fn = DistillationLoss(teacher, student, method="mlkd", normalization=(MEAN, STD), **hparams)
    return teacher, student, loss_fn.train()


def images(n=4, seed=1):
    """A normalised batch, as kdlab's loader yields it: uint8 pixels, then (x/255 - mean) / std."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def built(seed=0, **hparams):
    torch.manual_seed(seed)
    method = methods.create("mlkd", **hparams)
    method.build(BuildContext(None, None, {}, {}, normalization=(MEAN, STD)))
    return method


def spy(loss_fn):
    """The DistillBatch the method sees, recorded by a forward hook."""
    seen = []
    loss_fn.methods[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    return seen


# ---------------------------------------------------------------------------------------------------------
# the views


def test_expand_batch_is_the_weak_batch_then_its_strong_view():
    method = built()
    x = images()
    out = method.expand_batch(x)
    assert method.views == 2 and out.shape == (8, 3, 32, 32) and out.dtype == x.dtype
    assert torch.equal(out[:4], x)
    assert all(not torch.equal(out[4 + i], x[i]) for i in range(4))  # every image is augmented
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = out[4:] * std + mean  # the strong view was made in pixel space and normalised again
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


def test_strong_view_is_seeded_by_the_run_and_advances_per_step():
    a, b = built(seed=0), built(seed=0)
    x = images()
    first = a.expand_batch(x)
    assert torch.equal(first, b.expand_batch(x))  # the same run seed: the same draws
    assert not torch.equal(first, a.expand_batch(x))  # the next step draws anew
    assert not torch.equal(first, built(seed=1).expand_batch(x))  # another seed
    assert a.steps == 2 and a.get_extra_state() == {"seed": 0, "steps": 2}


def test_a_resumed_method_draws_what_an_uninterrupted_one_would():
    x = images()
    whole = built(seed=3)
    whole.expand_batch(x)
    state = {k: v for k, v in whole.state_dict().items()}
    expected = whole.expand_batch(x)
    resumed = built(seed=99)  # a process seeded otherwise: the checkpoint's seed and step count win
    resumed.load_state_dict(state)
    assert torch.equal(resumed.expand_batch(x), expected)
    assert set(state) == {"_extra_state"}  # the mean and std come from the data, not from the checkpoint


def test_ranks_draw_different_strong_views(monkeypatch):
    x = images()
    zero = built().expand_batch(x)
    monkeypatch.setattr("kdlab.methods.mlkd._rank", lambda: 1)
    assert not torch.equal(zero, built().expand_batch(x))


def test_the_strong_view_ignores_autocast_and_keeps_channels_last():
    x = images()
    plain = built().expand_batch(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = built().expand_batch(x)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    last = built().expand_batch(x.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.allclose(last, plain)


# ---------------------------------------------------------------------------------------------------------
# the loss


def official_loss(sw, tw, ss, ts, y, t0=4.0, ce=0.1, a=0.9) -> tuple[float, float]:
    """forward_train's losses_dict in float64, as (loss_ce, loss_kd + loss_cc + loss_bc), which AugTrainer sums:
    reduced kd/cc/bc losses times the means of the masks, np.percentile medians, strong-view KD at T 2 and 6 on
    the weak logits, CC and BC on the weak view."""
    def kd_loss(s, t, temp):
        kl = F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="none").sum(1).mean()
        return float(kl) * temp**2

    def gram_loss(s, t, temp, classes):
        ps, pt = F.softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
        if classes:
            return float(((pt.t() @ pt - ps.t() @ ps) ** 2).sum()) / s.shape[1]
        return float(((pt @ pt.t() - ps @ ps.t()) ** 2).sum()) / s.shape[0]

    p = F.softmax(tw, dim=1).numpy()
    conf, cls = p.max(1), p.sum(0)
    mask = float(np.mean(conf <= np.percentile(conf, 50)))
    class_mask = float(np.mean(cls <= np.percentile(cls, 50)))
    temps = (t0, 3.0, 5.0, 2.0, 6.0)
    loss_ce = ce * (float(F.cross_entropy(sw, y)) + float(F.cross_entropy(ss, y)))
    loss_kd = sum(a * kd_loss(sw, tw, t) * mask for t in temps)
    loss_kd += a * (kd_loss(ss, ts, t0) + kd_loss(ss, ts, 3.0) + kd_loss(ss, ts, 5.0) + kd_loss(sw, tw, 2.0)
                    + kd_loss(sw, tw, 6.0))
    loss_cc = sum(a * gram_loss(sw, tw, t, True) * class_mask for t in temps)
    loss_bc = sum(a * gram_loss(sw, tw, t, False) * mask for t in temps)
    return loss_ce, loss_kd + loss_cc + loss_bc


def fixed_logits(b=6, k=7):
    def grid(a, c, fn, shift):
        return torch.tensor([[3.0 * fn(a * i + c * j + shift) for j in range(k)] for i in range(b)],
                            dtype=torch.float64)
    s = torch.cat([grid(1.3, 0.7, math.sin, 0.1), grid(0.6, 1.9, math.sin, 0.4)])  # weak rows, then strong
    t = torch.cat([grid(0.9, 1.1, math.cos, 0.2), grid(1.7, 0.4, math.cos, 0.3)])
    return s, t, torch.tensor([0, 3, 6, 2, 1, 5])


def test_whole_loss_on_fixed_logits_is_the_official_one():
    s, t, y = fixed_logits()
    method = methods.create("mlkd")
    batch = DistillBatch(student_logits=s, teacher_logits=t, targets=y, indices=None, epoch=1, student={},
                         teacher={}, views=2)
    for method, official in ((methods.create("mlkd"), official_loss(s[:6], t[:6], s[6:], t[6:], y)),
                             # T0 is the temperature key, the others stay 3, 5, 2, 6 (mdistiller's ImageNet KD:
                             # T 1, CE 0.5, KD 0.5)
                             (methods.create("mlkd", temperature=1.0, kd_weight=0.5, strong_ce_weight=0.5),
                              official_loss(s[:6], t[:6], s[6:], t[6:], y, t0=1.0, ce=0.5, a=0.5))):
        terms = method(batch)
        assert set(terms) == {"mlkd_ce", "mlkd_kd", "mlkd_cc", "mlkd_bc"}
        distilled = sum(float(terms[k]) for k in ("mlkd_kd", "mlkd_cc", "mlkd_bc"))  # float64 throughout
        assert distilled == pytest.approx(official[1], rel=1e-12)
        # CE: the engine adds ce_weight·CE of the weak view (rows [0, B)); both CEs run in float32 (the recipe's
        # classification_loss), hence float32's tolerance
        ce = method.hp["strong_ce_weight"] * float(F.cross_entropy(s[:6], y)) + float(terms["mlkd_ce"])
        assert ce == pytest.approx(official[0], rel=1e-6)
        assert float(terms["mlkd_ce"]) == pytest.approx(method.hp["strong_ce_weight"] *
                                                        float(F.cross_entropy(s[6:], y)), rel=1e-6)


def test_per_sample_masks_reach_the_terms():
    s, t, y = fixed_logits()
    batch = DistillBatch(student_logits=s, teacher_logits=t, targets=y, indices=None, epoch=1, student={},
                         teacher={}, views=2)
    terms = methods.create("mlkd", per_sample_mask=True)(batch)
    instance, level_class, level_batch = losses.mlkd_terms(s[:6], t[:6], s[6:], t[6:], per_sample_mask=True)
    assert float(terms["mlkd_kd"]) == pytest.approx(0.9 * float(instance), rel=1e-12)
    assert float(terms["mlkd_cc"]) == pytest.approx(0.9 * float(level_class), rel=1e-12)
    assert float(terms["mlkd_bc"]) == pytest.approx(0.9 * float(level_batch), rel=1e-12)
    assert float(terms["mlkd_bc"]) != pytest.approx(float(methods.create("mlkd")(batch)["mlkd_bc"]), rel=1e-3)


# ---------------------------------------------------------------------------------------------------------
# through DistillationLoss


def test_both_networks_see_both_views_and_ce_reads_the_weak_one():
    teacher, student, loss_fn = make()
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, i[0].shape[0]))
             for k, m in (("teacher", teacher), ("student", student))]
    batches = spy(loss_fn)
    x, y = images(), torch.tensor([1, 2, 3, 4])
    out = loss_fn(x, y)
    for h in hooks:
        h.remove()
    assert seen == {"teacher": 8, "student": 8}
    b = batches[0]
    assert b.views == 2 and b.student_logits.shape == (8, 10) and b.targets.shape == (4,)
    assert out.logits.shape == (4, 10) and torch.equal(out.logits, b.student_logits[:4])
    assert set(out.terms) == {"ce", "mlkd_ce", "mlkd_kd", "mlkd_cc", "mlkd_bc"} and loss_fn.ce_weight == 0.1
    assert float(out.terms["ce"]) == pytest.approx(0.1 * float(F.cross_entropy(out.logits.detach(), y)), rel=1e-5)
    strong = b.student_logits[4:].detach()
    assert float(out.terms["mlkd_ce"]) == pytest.approx(0.1 * float(F.cross_entropy(strong, y)), rel=1e-5)
    instance, _, _ = losses.mlkd_terms(b.student_logits[:4].detach(), b.teacher_logits[:4], strong,
                                       b.teacher_logits[4:])
    assert float(out.terms["mlkd_kd"]) == pytest.approx(0.9 * float(instance), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sum(float(v) for v in out.terms.values()), rel=1e-6)


def test_the_strong_view_ce_follows_the_recipes_label_smoothing():
    _, _, loss_fn = make(label_smoothing=0.2)
    batches = spy(loss_fn)
    y = torch.tensor([1, 2, 3, 4])
    out = loss_fn(images(), y)
    strong = batches[0].student_logits[4:].detach()
    assert float(out.terms["mlkd_ce"]) == pytest.approx(
        0.1 * float(classification_loss(strong, y, None, 0.2)), rel=1e-5)


def test_one_training_step_moves_the_student_and_never_the_teacher():
    teacher, student, loss_fn = make()
    before = [p.detach().clone() for p in student.parameters()]
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1)
    out = loss_fn(images(), torch.tensor([1, 2, 3, 4]))
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss.detach())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert loss_fn.extra_state()["methods"]["0._extra_state"] == {"seed": 0, "steps": 1}


# ---------------------------------------------------------------------------------------------------------
# defaults, refusals, the CLI


def test_defaults_are_the_official_cifar_ones():
    cls = methods.get("mlkd")
    assert cls.defaults == {"weight": 1.0, "kd_weight": 0.9, "strong_ce_weight": 0.1, "temperature": 4.0,
                            "per_sample_mask": False}
    assert cls.ce_weight == 0.1 and cls.views == 2 and "Multi-Level Logit Distillation" in cls.paper


@pytest.mark.parametrize("build, message", [
    (lambda: methods.create("mlkd", kd_weight=-1.0), "method.mlkd.kd_weight must be >= 0"),
    (lambda: methods.create("mlkd", temperature=0.0), "method.mlkd.temperature must be > 0"),
    (lambda: DistillationLoss(models.create("resnet8", 10), models.create("resnet8", 10), method="mlkd"),
     "needs the inputs' normalisation; pass normalization=\\(mean, std\\)"),
    (lambda: DistillationLoss(models.create("resnet8", 10), models.create("resnet8", 10), method="mlkd",
                              normalization=((0.5, 0.5), (0.2,))), "normalization must be \\(mean, std\\)"),
    (lambda: built().expand_batch(torch.zeros(2, 1, 8, 8)), "a normalisation of 3 channels"),
    (lambda: methods.create("mlkd")(DistillBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2).long(),
                                                 None, 1, {}, {})), "needs the weak and strong view"),
    (lambda: methods.parse("mlkd+sskd"), "at most one"),
])
def test_refusals_are_one_line(build, message):
    with pytest.raises(KdlabError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_mlkd_is_listed(capsys):
    assert main(["list", "methods"]) == 0
    assert "mlkd" in capsys.readouterr().out


def test_mlkd_run_through_the_cli_resumes_to_the_same_weights(tmp_path, digits_resnet8, whole_and_resumed):
    args = ["distill", "--teacher", str(digits_resnet8), "--student", "resnet8", "--method", "mlkd", "--epochs", "2",
            *DIGITS_FAST]
    whole, resumed = whole_and_resumed(args)
    line = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1]
    for term in ("train_loss_mlkd_ce", "train_loss_mlkd_kd", "train_loss_mlkd_cc", "train_loss_mlkd_bc"):
        assert term in line
    assert yaml.safe_load((tmp_path / "whole" / "config.yaml").read_text())["method"] == "mlkd"
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert whole["extra"]["methods"]["0._extra_state"] == resumed["extra"]["methods"]["0._extra_state"]


def test_cifar100_configs_run_the_authors_recipe():
    from pathlib import Path

    from kdlab import config as cfg

    root = Path(__file__).resolve().parents[2] / "configs" / "cifar100"
    for pair, lr, published in (("resnet32x4-resnet8x4", 0.025, "77.08"), ("vgg13-vgg8", 0.025, "75.18"),
                                ("vgg13-mobilenetv2", 0.01, "70.57"), ("resnet32x4-shufflenetv2", 0.01, "78.44")):
        config = cfg.build([cfg.load_yaml(root / pair / "mlkd.yaml")])
        (method,) = methods.parse(config.method, config.methods)
        assert config.optim.lr == lr and config.optim.epochs == 240 and config.data.batch_size == 64
        assert method.hp == methods.get("mlkd").defaults and config.ce_weight in (None, 0.1)
        assert f"Published top-1: {published} [J]" in (root / pair / "mlkd.yaml").read_text()


def test_kdlab_distill_on_own_loaders_takes_their_normalization(tmp_path):
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import kdlab

    def net():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3))

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(32, 1, 8, 8, generator=g)
    loader = DataLoader(TensorDataset((pixels - 0.5) / 0.25, torch.arange(32) % 3), batch_size=16)
    summary = kdlab.distill(teacher=net().eval(), student=net(), train_loader=loader, test_loader=loader,
                            method="mlkd", epochs=1, out=tmp_path / "run", num_classes=3,
                            normalization=((0.5,), (0.25,)))
    assert summary["epochs"] == 1
    with pytest.raises(KdlabError, match="needs the inputs' normalisation"):
        kdlab.distill(teacher=net().eval(), student=net(), train_loader=loader, test_loader=loader, method="mlkd",
                      epochs=1, out=tmp_path / "refused", num_classes=3)
