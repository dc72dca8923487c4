"""NKD, WSLD, SDD and CTKD wired through kdlab.DistillationLoss: terms as documented (docs/methods.md), equal to
the pure losses on the method's inputs, a training step that changes the student and never the teacher, the
hyperparameter checks, CTKD's temperature module in the optimizer and checkpoints, SDD's region logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdlab
import kdlab.losses as L
from kdlab import methods
from kdlab.errors import KdlabError
from kdlab.models import create


class TinyNet(nn.Module):
    """A model without a tap table; `block` is the map the global pooling averages."""

    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2),
                                   nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width * 2, classes)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))))


TAPS = {"stage1": "stem", "stage2": "block", "final_map": "block", "embedding": "pool", "classifier": "fc"}


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    return TinyNet(16), TinyNet(4)


def batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def capture(loss_fn):
    """The DistillBatch each method sees, recorded by a forward hook."""
    seen = []
    loss_fn.methods[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    return seen


def train_step(loss_fn, x, y, epoch=1, lr=0.1):
    loss_fn.train()
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=lr)
    student = [p.detach().clone() for p in loss_fn.student.parameters()]
    teacher = {k: v.clone() for k, v in loss_fn.teacher.state_dict().items()}
    optimizer.zero_grad()
    out = loss_fn(x, y, epoch=epoch)
    out.loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(student, loss_fn.student.parameters(), strict=True))
    assert all(torch.equal(v, teacher[k]) for k, v in loss_fn.teacher.state_dict().items())
    assert all(p.grad is None for p in loss_fn.teacher.parameters())
    return out, optimizer


# ---------------------------------------------------------------------------------------------------------
# NKD and WSLD


def test_nkd_terms_match_the_pure_loss_and_train():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="nkd")
    seen = capture(loss_fn)
    x, y = batch()
    out, _ = train_step(loss_fn, x, y)
    b = seen[0]
    assert set(out.terms) == {"ce", "nkd_target", "nkd_nontarget"} and loss_fn.ce_weight == 1.0
    target_term, non = L.nkd_terms(b.student_logits.detach(), b.teacher_logits, y, temperature=3.0)
    assert float(out.terms["nkd_target"]) == pytest.approx(float(target_term), rel=1e-6)
    assert float(out.terms["nkd_nontarget"]) == pytest.approx(3.5 * float(non), rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(sum(float(v) for v in out.terms.values()), rel=1e-6)


def test_wsld_term_matches_the_pure_loss_and_train():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="wsld", temperature=2.0, weight=2.5)
    seen = capture(loss_fn)
    x, y = batch()
    out, _ = train_step(loss_fn, x, y)
    b = seen[0]
    assert set(out.terms) == {"ce", "wsld"}
    ref = L.wsld(b.student_logits.detach(), b.teacher_logits, y, temperature=2.0)
    assert float(out.terms["wsld"]) == pytest.approx(2.5 * float(ref), rel=1e-6)


@pytest.mark.parametrize("name, hparams, message", [
    ("nkd", {"gamma": -1.0}, "method.nkd.gamma must be >= 0"),
    ("nkd", {"temperature": 0.0}, "method.nkd.temperature must be > 0"),
    ("wsld", {"temperature": -2.0}, "method.wsld.temperature must be > 0"),
    ("sdd", {"scales": [2, 4]}, "method.sdd.scales=\\[2, 4\\] must be distinct grid sizes starting with the global 1"),
    ("sdd", {"scales": [1, 1]}, "method.sdd.scales"),
    ("sdd", {"scales": 4}, "method.sdd.scales"),
    ("sdd", {"base": "crd"}, "method.sdd.base must be one of kd, dkd, nkd"),
    ("sdd", {"beta": -1.0}, "method.sdd.beta must be >= 0"),
    ("sdd", {"warmup": -1}, "method.sdd.warmup must be >= 0"),
    ("ctkd", {"mode": "local"}, "method.ctkd.mode must be one of global, instance"),
    ("ctkd", {"t_min": 5.0, "t_max": 2.0}, "method.ctkd.t_max=2.0 must exceed t_min=5.0"),
    ("ctkd", {"t_min": 0.0}, "method.ctkd.t_min must be > 0"),
    ("ctkd", {"curriculum_epochs": -1}, "method.ctkd.curriculum_epochs must be >= 0"),
    ("ctkd", {"max_strength": -0.5}, "method.ctkd.max_strength must be >= 0"),
])
def test_hyperparameters_are_checked_when_the_method_is_created(name, hparams, message):
    with pytest.raises(KdlabError, match=message) as err:
        methods.create(name, **hparams)
    assert "\n" not in str(err.value)


def test_defaults_are_the_official_cifar_ones():
    assert methods.get("nkd").defaults == {"weight": 1.0, "temperature": 3.0, "gamma": 3.5}
    assert methods.get("wsld").defaults == {"weight": 2.25, "temperature": 4.0}
    sdd = methods.get("sdd")
    assert (sdd.ce_weight, sdd.defaults["weight"], sdd.defaults["temperature"], sdd.defaults["scales"]) == \
        (0.1, 0.9, 4.0, [1, 2, 4])
    ctkd = methods.get("ctkd")
    assert (ctkd.ce_weight, ctkd.defaults["weight"], ctkd.defaults["t_min"], ctkd.defaults["t_max"],
            ctkd.defaults["init"], ctkd.defaults["curriculum_epochs"]) == (0.1, 0.9, 1.0, 21.0, 1.0, 10)


# ---------------------------------------------------------------------------------------------------------
# SDD


def test_sdd_term_equals_the_pure_loss_on_the_region_logits():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(1, 8, 8), scales=[1, 2],
                                     taps={"student": TAPS, "teacher": TAPS})
    seen = capture(loss_fn)
    x, y = batch()
    loss_fn.train()
    out = loss_fn(x, y)
    b = seen[0]
    assert set(out.terms) == {"ce", "sdd"} and loss_fn.ce_weight == 0.1
    with torch.no_grad():
        rs = student.fc(L.sdd_pool(b.student["final_map"], [1, 2]))
        rt = teacher.fc(L.sdd_pool(b.teacher["final_map"], [1, 2]))
    assert rs.shape == (8, 5, 5)
    torch.testing.assert_close(rs[:, 0], b.student_logits.detach(), rtol=1e-5, atol=1e-5)  # cell 0: the logits
    torch.testing.assert_close(rt[:, 0], b.teacher_logits, rtol=1e-5, atol=1e-5)
    assert float(out.terms["sdd"]) == pytest.approx(0.9 * float(L.sdd(rs, rt, y, temperature=4.0)), rel=1e-5)
    # neither classifier is a parameter or state of the method; the student's trains through its own model
    assert list(loss_fn.methods.parameters()) == [] and loss_fn.methods.state_dict() == {}
    train_step(loss_fn, x, y)
    assert student.fc.weight.grad is not None


def test_sdd_dkd_base_warms_up_and_gradients_reach_the_local_cells():
    teacher, student = tiny_pair()
    hp = {"base": "dkd", "weight": 1.0, "warmup": 20, "beta": 2.0}
    loss_fn = kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(1, 8, 8), ce_weight=1.0,
                                     taps={"student": TAPS, "teacher": TAPS}, **hp)
    loss_fn.eval()
    x, y = batch()
    t1, t20 = loss_fn(x, y, epoch=1).terms, loss_fn(x, y, epoch=20).terms
    assert float(t1["sdd"]) == pytest.approx(float(t20["sdd"]) / 20, rel=1e-5)
    # the local cells alone (scales without the global cell's share) give the student map a gradient
    fmap = torch.randn(2, 8, 4, 4, requires_grad=True)
    rs = student.fc(L.sdd_pool(fmap, [1, 2]))
    L.sdd(rs, rs.detach().flip(0), torch.tensor([0, 1]), base="dkd").backward()
    assert fmap.grad.abs().sum() > 0


def test_sdd_refuses_a_map_that_is_not_what_the_classifier_pools():
    teacher, student = tiny_pair()
    wrong = {**TAPS, "final_map": "block.1"}  # the BN output, before the ReLU
    loss_fn = kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(1, 8, 8),
                                     taps={"student": TAPS, "teacher": wrong})
    x, y = batch()
    with pytest.raises(KdlabError, match="teacher's classifier applied to the global average of its final_map"):
        loss_fn(x, y)
    with pytest.raises(KdlabError, match="must be a Linear layer"):
        kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(1, 8, 8),
                               taps={"student": TAPS, "teacher": {**TAPS, "classifier": "pool"}})
    no_map = {k: v for k, v in TAPS.items() if k != "final_map"}
    with pytest.raises(KdlabError, match="no tap 'final_map'"):
        kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(1, 8, 8),
                               taps={"student": no_map, "teacher": no_map})


@pytest.mark.parametrize("teacher_name, student_name, size", [("resnet20", "mobilenetv2", 32),
                                                              ("wrn_16_2", "shufflenetv2", 32),
                                                              ("tv:resnet18", "tv:mobilenet_v2", 32)])
def test_sdd_reads_the_pooled_map_of_zoo_and_torchvision_models(teacher_name, student_name, size):
    # MobileNetV2/ShuffleNetV2 pool a 1x1 head after their last stage and WRN a final BN-ReLU: the global cell
    # of `final_map` through the classifier must give the logits (checked on the first step).
    torch.manual_seed(0)
    teacher = create(teacher_name, 10, image_size=size).eval()
    student = create(student_name, 10, image_size=size)
    loss_fn = kdlab.DistillationLoss(teacher, student, method="sdd", input_shape=(3, size, size))
    seen = capture(loss_fn)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    loss_fn.eval()
    out = loss_fn(x, y)
    b = seen[0]
    rt = loss_fn.methods[0].region_logits(b.teacher["final_map"], loss_fn.methods[0]._teacher_head)
    rs = loss_fn.methods[0].region_logits(b.student["final_map"], loss_fn.methods[0]._student_head)
    torch.testing.assert_close(rt[:, 0], b.teacher_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rs[:, 0], b.student_logits, rtol=1e-4, atol=1e-4)
    assert rs.shape == (2, 21, 10) and torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------------------
# CTKD


def test_ctkd_global_temperature_reaches_the_optimizer_and_climbs_the_loss():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ctkd")
    theta = loss_fn.methods[0].temperature_module.theta
    assert any(p is theta for p in loss_fn.trainable_parameters())
    assert "0.temperature_module.theta" in loss_fn.extra_state()["methods"]  # saved with the checkpoint
    x, y = batch()
    out, _ = train_step(loss_fn, x, y, epoch=10)  # full reversal strength
    assert set(out.terms) == {"ce", "ctkd"}
    # the same batch, the student held fixed: θ's step raised the distillation loss (the reversed gradient)
    method = loss_fn.methods[0]
    loss_fn.eval()
    with torch.no_grad():
        s, t = student(x), teacher(x)
        before = L.ctkd(s, t, 1 + 20 * torch.sigmoid(torch.ones(1)))
        after = L.ctkd(s, t, method.temperature(s, t, 10))
    assert float(theta.detach()) != 1.0 and float(after) > float(before)


def test_ctkd_temperature_gradient_is_reversed_with_the_curriculum_strength():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ctkd")
    method = loss_fn.methods[0]
    x, y = batch()
    for epoch in (1, 5, 12):
        method.zero_grad()
        student.zero_grad()
        loss_fn(x, y, epoch=epoch).loss.backward()
        reversed_grad = float(method.temperature_module.theta.grad)
        with torch.no_grad():
            s, t = student(x), teacher(x)
        theta = torch.ones(1, requires_grad=True)
        (0.9 * L.ctkd(s, t, 1 + 20 * torch.sigmoid(theta))).backward()
        assert reversed_grad == pytest.approx(-L.ctkd_strength(epoch, 10) * float(theta.grad), rel=1e-4)


def test_ctkd_instance_temperature_per_sample_detached_inputs():
    teacher, student = tiny_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ctkd", mode="instance", hidden=16, num_classes=5)
    method = loss_fn.methods[0]
    mlp = method.temperature_module.mlp
    assert mlp[0].in_features == 10 and mlp[0].out_features == 16
    ids = {id(p) for p in loss_fn.trainable_parameters()}
    assert all(id(p) in ids for p in mlp.parameters())
    seen = capture(loss_fn)
    x, y = batch()
    out, _ = train_step(loss_fn, x, y, epoch=3)
    b = seen[0]
    temps = method.temperature(b.student_logits.detach(), b.teacher_logits, 1)
    assert temps.shape == (8,) and bool(((temps > 1) & (temps < 21)).all())
    # the student's gradient is that of KD at these temperatures held fixed: nothing flows through the MLP's inputs
    s = b.student_logits.detach().clone().requires_grad_()
    L.ctkd(s, b.teacher_logits, method.temperature(s, b.teacher_logits, 3)).backward()
    s2 = b.student_logits.detach().clone().requires_grad_()
    L.ctkd(s2, b.teacher_logits, method.temperature(s2, b.teacher_logits, 3).detach()).backward()
    torch.testing.assert_close(s.grad, s2.grad)
    assert all(p.grad is not None for p in mlp.parameters())


def test_ctkd_instance_mode_needs_the_class_count():
    teacher, student = tiny_pair()
    # the classifier tap tells the class count when num_classes is not given
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ctkd", mode="instance",
                                     taps={"student": TAPS, "teacher": TAPS})
    assert loss_fn.methods[0].temperature_module.mlp[0].in_features == 10
    with pytest.raises(KdlabError, match="needs the number of classes"):
        kdlab.DistillationLoss(teacher, student, method="ctkd", mode="instance")


# ---------------------------------------------------------------------------------------------------------
# the published per-pair configs (configs/make_cifar100.py)


def test_cifar100_configs_run_the_published_settings():
    from pathlib import Path

    from kdlab import config as cfg

    root = Path(__file__).resolve().parents[2] / "configs" / "cifar100"

    def run(pair: str, name: str):
        config = cfg.build([cfg.load_yaml(root / pair / f"{name}.yaml")])
        (method,) = methods.parse(config.method, config.methods)
        return method.hp, method.ce_weight if config.ce_weight is None else config.ce_weight

    hp, ce = run("resnet56-resnet20", "ctkd")
    assert ce == 0.1 and (hp["mode"], hp["t_min"], hp["t_max"], hp["curriculum_epochs"]) == ("global", 1.0, 21.0, 10)
    hp, ce = run("resnet32x4-shufflenetv2", "sdd")
    assert ce == 0.1 and (hp["base"], hp["scales"], hp["temperature"], hp["warmup"]) == ("kd", [1, 2, 4], 4.0, 0)
    assert run("vgg13-vgg8", "sdd")[0]["scales"] == [1, 2]
    hp, ce = run("vgg13-mobilenetv2", "sdd_dkd")
    assert ce == 1.0 and (hp["base"], hp["beta"], hp["warmup"], hp["weight"]) == ("dkd", 6.0, 20, 1.0)
    hp, ce = run("resnet32x4-shufflenetv1", "sdd_nkd")
    assert ce == 1.0 and (hp["base"], hp["gamma"], hp["temperature"], hp["warmup"]) == ("nkd", 8.0, 4.0, 20)
    header = (root / "resnet32x4-shufflenetv2" / "sdd_dkd.yaml").read_text()
    assert "Published top-1: 78.05 [W]" in header and "arXiv:2403.13512" in header
    assert "Published top-1: 73.39 [C]" in (root / "resnet32x4-resnet8x4" / "ctkd.yaml").read_text()
