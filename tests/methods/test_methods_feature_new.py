"""ICKD, PAD-L2 and CAT-KD as methods (kdlab.methods.ickd, .pad, .catkd) on small zoo and torchvision pairs.

(1) each DistillationLoss term equals the pure loss applied by hand to tensors captured with our own hooks
(taps, connectors and classifier weights wired right); (2) SGD steps on same- and cross-architecture pairs:
finite terms with the documented names, gradients reach the student and the method's modules, the teacher
unchanged; (3) per-method specifics: PAD-L2's schedule, CAT-KD's classifiers, hyperparameter errors.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from tap_capture import Capture
from torch import nn

import kdlab.losses as L
from kdlab import methods
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods.ickd import ChannelEmbed, last_map
from kdlab.methods.pad import VarianceBranch
from kdlab.models import create, tap_points

SIZE = 16
CLASSES = 10
NEW = ["ickd", "pad", "catkd"]
PAIRS = [("resnet20", "resnet8"), ("wrn_16_2", "shufflenetv2"), ("resnet18", "mobilenetv2"), ("vgg8", "wrn_16_1")]


def make(teacher: str, student: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    t = create(teacher, CLASSES, image_size=SIZE)
    s = create(student, CLASSES, image_size=SIZE)
    g = torch.Generator().manual_seed(seed + 1)
    for m in t.modules():  # a trained-looking teacher: varied BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=g)
    return t, s


def batch(seed: int = 1, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def by_hand(name: str, m: methods.Method, s: dict, t: dict, student: nn.Module, teacher: nn.Module,
            epoch: int) -> torch.Tensor:
    if name == "ickd":
        return L.ickd(m.embed(s["final_map"]), t["final_map"])
    if name == "pad":
        fs = m.connector(s["embedding"])
        assert epoch > m.l2_epochs
        return L.pad_l2(fs, t["embedding"], m.variance(fs))
    if name == "catkd":  # the authors' order: full-size CAMs, then pooled inside the loss
        cams_s = L.class_activation_maps(s["final_map"], student.classifier.weight)
        cams_t = L.class_activation_maps(t["final_map"], teacher.classifier.weight)
        return L.catkd(cams_s, cams_t, resolution=2, normalize=False)
    raise KeyError(name)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("name", NEW)
def test_term_equals_pure_loss_on_captured_tensors(name, pair):
    teacher, student = make(*pair)
    taps = ["embedding", "final_map"]
    s_cap = Capture(student, taps)
    t_cap = Capture(teacher, taps)
    loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, SIZE, SIZE), epochs=4)
    loss_fn.train()
    m = loss_fn.methods[0]
    x, y = batch()
    torch.manual_seed(5)
    out = loss_fn(x, y, epoch=4)
    with torch.no_grad():
        expected = by_hand(name, m, s_cap.out, t_cap.out, student, teacher, epoch=4)
    named = {"ickd": {"ce", "ickd"}, "pad": {"ce", "pad_l2stage", "pad"}, "catkd": {"ce", "catkd"}}[name]
    assert set(out.terms) == named
    assert float(out.terms[name]) == pytest.approx(m.weight * float(expected), rel=1e-4, abs=1e-6)
    assert float(expected) != 0


@pytest.mark.parametrize("pair", PAIRS + [("tv:resnet34", "tv:resnet18")], ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("name", NEW)
def test_training_steps(name, pair):
    teacher, student = make(*pair)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, SIZE, SIZE))
    loss_fn.train()
    m = loss_fn.methods[0]
    own = {k: p.detach().clone() for k, p in m.named_parameters()}
    student_before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    stem = next(student.parameters())
    for step in range(2):
        x, y = batch(seed=step)
        optimizer.zero_grad()
        out = loss_fn(x, y, epoch=step + 1)
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.terms.values())
        assert float(out.terms[name]) != 0
        out.loss.backward()
        if step == 0:  # the distillation term changes the student's first-layer gradient beyond CE
            (g_ce,) = torch.autograd.grad(loss_fn.ce_weight * F.cross_entropy(student(x), y), stem)
            assert not torch.allclose(stem.grad, g_ce, rtol=1e-4, atol=1e-8)
            for k, p in m.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k
        optimizer.step()
    assert all(not torch.equal(p.detach(), own[k]) for k, p in m.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------------- specifics


def test_registry_defaults_and_documentation():
    expected = {"ickd": {"weight": 2.5}, "pad": {"weight": 1.0, "l2_weight": 15.0, "l2_fraction": 0.75, "eps": 1e-6},
                "catkd": {"weight": 15.0, "resolution": 2, "normalize": False}}
    for name, defaults in expected.items():
        cls = methods.get(name)
        assert cls.defaults == defaults and cls.ce_weight == 1.0
        assert not cls.uses_teacher_logits  # the teacher's forward stops after the tapped map
        doc = sys.modules[cls.__module__].__doc__
        assert cls.paper and f"docs/methods.md#{name}" in doc and "github.com/" in doc
        assert not cls.clip_to_ce and not cls.has_init_stage and not cls.teacher_train_mode


@pytest.mark.parametrize("name, hparams, message", [
    ("pad", {"l2_fraction": 1.0}, r"method.pad.l2_fraction=1.0 must be in \[0, 1\)"),
    ("pad", {"l2_fraction": -0.1}, "method.pad.l2_fraction=-0.1"),
    ("pad", {"l2_weight": -1.0}, "method.pad.l2_weight=-1.0 must be >= 0"),
    ("pad", {"eps": -1e-3}, "method.pad.eps=-0.001 must be >= 0"),
    ("catkd", {"resolution": 0}, "method.catkd.resolution=0 must be >= 1"),
    ("catkd", {"resolution": 1.5}, "method.catkd.resolution must be like 2"),
    ("catkd", {"normalize": 1}, "method.catkd.normalize must be like False"),
    ("ickd", {"temperature": 4.0}, "method 'ickd' has no hyperparameter 'temperature'"),
])
def test_bad_hyperparameters_are_one_line_errors(name, hparams, message):
    with pytest.raises(KdlabError, match=message):
        methods.create(name, **hparams)


def test_ickd_embedding_is_the_authors():
    teacher, student = make("resnet32x4", "resnet8")
    m = DistillationLoss(teacher, student, method="ickd", input_shape=(3, SIZE, SIZE)).methods[0]
    assert (m.student_stages, m.teacher_stages) == (["final_map"], ["final_map"])
    assert isinstance(m.embed, ChannelEmbed) and m.embed.conv.bias is None
    assert (m.embed.conv.in_channels, m.embed.conv.out_channels, m.embed.conv.kernel_size) == (64, 256, (1, 1))
    assert isinstance(m.embed.bn, nn.BatchNorm2d) and not any(isinstance(x, nn.ReLU) for x in m.embed.modules())
    # same widths: still embedded (the authors always apply embed_s); resnet18's 2x2 map vs resnet8's 4x4 is fine
    teacher, student = make("resnet18", "resnet20")
    m = DistillationLoss(teacher, student, method="ickd", input_shape=(3, SIZE, SIZE)).methods[0]
    assert m.embed.conv.out_channels == 512
    # the authors' feat[-2] is the map before the pooling: a WRN's final BN-ReLU output, not its raw stage3
    assert tap_points(create("wrn_16_2", CLASSES))["final_map"] == "act"
    assert last_map({"stage1": "a", "stage2": "b", "classifier": "c"}) == "stage2"  # no final_map: deepest stage


def test_pad_schedule_switches_from_l2_to_pad_l2():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = DistillationLoss(teacher, student, method="pad", input_shape=(3, SIZE, SIZE), epochs=10)
    loss_fn.train()
    m = loss_fn.methods[0]
    assert m.l2_epochs == 8 and isinstance(m.connector, nn.Identity)  # round(0.75 * 10); equal widths
    assert isinstance(m.variance, VarianceBranch) and m.variance.linear.in_features == 64
    x, y = batch()
    for epoch, stage in [(1, "l2"), (8, "l2"), (9, "pad"), (10, "pad")]:
        loss_fn.zero_grad()
        out = loss_fn(x, y, epoch=epoch)
        out.loss.backward()
        var_grad = m.variance.linear.weight.grad
        if stage == "l2":
            assert float(out.terms["pad_l2stage"]) > 0 and float(out.terms["pad"]) == 0
            assert var_grad is None or var_grad.abs().sum() == 0  # the variance branch waits for its stage
            with torch.no_grad():
                s_emb = student.flatten(student.pool(student.stage3(student.stage2(student.stage1(student.stem(x))))))
                t_emb = teacher.flatten(teacher.pool(teacher.stage3(teacher.stage2(teacher.stage1(teacher.stem(x))))))
            assert float(out.terms["pad_l2stage"]) == pytest.approx(15 * F.mse_loss(s_emb, t_emb).item(), rel=1e-4)
        else:
            assert float(out.terms["pad_l2stage"]) == 0 and float(out.terms["pad"]) != 0
            assert var_grad.abs().sum() > 0
    # without the run's length the L2 stage is skipped; l2_fraction=0 has none either
    assert DistillationLoss(teacher, student, method="pad", input_shape=(3, SIZE, SIZE)).methods[0].l2_epochs == 0
    m0 = DistillationLoss(teacher, student, method="pad", input_shape=(3, SIZE, SIZE), epochs=240,
                          l2_fraction=0.0).methods[0]
    assert m0.l2_epochs == 0 and not m0.in_l2_stage(1)
    # other widths: a Linear to the teacher's width, the variance branch on the mapped embedding
    teacher, student = make("wrn_16_2", "mobilenetv2")
    m = DistillationLoss(teacher, student, method="pad", input_shape=(3, SIZE, SIZE)).methods[0]
    assert (m.connector.in_features, m.connector.out_features, m.variance.linear.in_features) == (1280, 128, 128)


def test_catkd_reads_both_classifiers_without_owning_them():
    teacher, student = make("wrn_16_2", "shufflenetv2")
    loss_fn = DistillationLoss(teacher, student, method="catkd", input_shape=(3, SIZE, SIZE))
    loss_fn.train()
    m = loss_fn.methods[0]
    assert m._student_fc is student.classifier and m._teacher_fc is teacher.classifier
    assert list(m.parameters()) == [] and m.state_dict() == {}
    assert not loss_fn.teacher_logits_needed  # the teacher's forward stops at its final map
    # without CE, only the CAM loss reaches the student's classifier (CAT-KD's conv_test, trained by both)
    no_ce = DistillationLoss(teacher, student, method="catkd", input_shape=(3, SIZE, SIZE), ce_weight=0.0)
    no_ce.train()
    x, y = batch()
    no_ce(x, y).loss.backward()
    assert student.classifier.weight.grad.abs().sum() > 0 and student.classifier.bias.grad.abs().sum() == 0
    # r = 4 with normalisation (the authors' ShuffleNet configs) on a 4x4 final map
    m4 = DistillationLoss(teacher, student, method="catkd", input_shape=(3, SIZE, SIZE), resolution=4,
                          normalize=True).methods[0]
    assert m4.hp["resolution"] == 4 and m4.hp["normalize"] is True


def test_catkd_refuses_models_without_a_linear_head_after_pooling():
    student = create("resnet8", CLASSES, image_size=32)
    for name in ("tv:mobilenet_v3_small", "tv:vgg11"):  # an MLP head follows the pooling: CAMs are undefined
        teacher = create(name, CLASSES, image_size=32)
        with pytest.raises(KdlabError, match="catkd needs the teacher's 'final_map' tap"):
            DistillationLoss(teacher, student, method="catkd", input_shape=(3, 32, 32))
    teacher = create("resnet20", CLASSES, image_size=32)
    with pytest.raises(KdlabError, match="does not read the 32 channels of its 'final_map'"):
        DistillationLoss(teacher, student, method="catkd", input_shape=(3, 32, 32),
                         taps={"teacher": {"final_map": "stage2", "classifier": "classifier"}})
    with pytest.raises(KdlabError, match="5 classes, the teacher 10"):
        DistillationLoss(teacher, create("resnet8", 5, image_size=32), method="catkd", input_shape=(3, 32, 32))


def test_kdsvd_runs_on_wide_maps_of_small_images():
    """A VGG teacher's 512-channel 1x1 maps on 8x8 inputs: the HW x HW route (KD-EID) decomposes 1x1 matrices."""
    torch.manual_seed(0)
    teacher, student = create("vgg13", CLASSES, image_size=8), create("vgg8", CLASSES, image_size=8)
    loss_fn = DistillationLoss(teacher, student, method="kdsvd", input_shape=(3, 8, 8))
    loss_fn.train()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, CLASSES, (4,))
    out = loss_fn(x, y, epoch=1)
    assert torch.isfinite(out.loss) and torch.isfinite(out.terms["kdsvd"])
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
