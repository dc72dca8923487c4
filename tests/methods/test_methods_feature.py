"""Feature methods (fitnet, at, nst, vid, od, kdsvd, reviewkd) on small zoo pairs.

(1) each DistillationLoss term equals the pure loss applied by hand to tensors captured with our own
hooks (taps, stage pairing and connectors wired right); (2) a few SGD steps on same- and cross-
architecture pairs: finite loss, distillation gradients reach the student and the connectors, the
teacher (weights and BN statistics) unchanged; (3) method-specific checks.
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
from kdlab.methods.base import BuildContext
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.fitnet import ConvReg
from kdlab.methods.od import margin_batchnorm
from kdlab.models import create, tap_points

SIZE = 16
CLASSES = 10
METHODS = ["fitnet", "at", "nst", "vid", "od", "kdsvd", "reviewkd"]
SAME = [("resnet20", "resnet8"), ("wrn_16_2", "wrn_16_1")]
CROSS = [("resnet20", "mobilenetv2"), ("resnet20", "vgg8"), ("wrn_16_2", "shufflenetv2"), ("resnet18", "resnet8")]
# Matched stages written out by hand (deepest stages aligned), to check the methods' pairing.
STAGES = {
    ("resnet20", "resnet8"): (["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"]),
    ("wrn_16_2", "wrn_16_1"): (["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"]),
    ("resnet18", "resnet8"): (["stage1", "stage2", "stage3"], ["stage2", "stage3", "stage4"]),
    ("resnet20", "mobilenetv2"): (["stage2", "stage3", "stage4"], ["stage1", "stage2", "stage3"]),
}


def margin_bns(name: str, teacher: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN before each matched teacher ReLU, per docs/methods.md#od (written out per architecture)."""
    if name == "resnet20":  # post-activation: last block's bn2 (mdistiller)
        return [teacher.stage1[2].bn2, teacher.stage2[2].bn2, teacher.stage3[2].bn2]
    if name == "resnet18":
        return [teacher.stage2[1].bn2, teacher.stage3[1].bn2, teacher.stage4[1].bn2]
    if name == "wrn_16_2":  # pre-activation: the BN whose output is hooked (next group's bn1, final norm)
        return [teacher.stage2[0].bn1, teacher.stage3[0].bn1, teacher.norm]
    raise KeyError(name)


def randomise_bn(model: nn.Module, seed: int = 123) -> None:
    """A 'trained-looking' model: varied BN affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)


def make(teacher: str, student: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    t = create(teacher, CLASSES, image_size=SIZE)
    s = create(student, CLASSES, image_size=SIZE)
    randomise_bn(t)
    return t, s


def batch(seed: int = 1, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def run_backward(out) -> None:
    (out.backward() if out.backward is not None else out.loss.backward())


# ---------------------------------------------------------------------------------------- (1) wiring


def by_hand(name: str, m: methods.Method, s: dict, t: dict, ss: list[str], ts: list[str],
            teacher_name: str, teacher: nn.Module) -> torch.Tensor:
    """The pure loss on hand-captured tensors, with the method's connectors."""
    if name == "fitnet":
        return L.fitnet(m.regressor(s[ss[-2]]), t[ts[-2]])
    if name == "at":
        return L.at([s[n] for n in ss], [t[n] for n in ts], p=2)
    if name == "nst":
        return L.nst([s[n] for n in ss], [t[n] for n in ts])
    if name == "vid":
        means = []
        for i, (a, b) in enumerate(zip(ss, ts)):
            x = s[a]
            if x.shape[-1] > t[b].shape[-1]:
                x = F.adaptive_avg_pool2d(x, t[b].shape[-2:])
            means.append(m.regressors[i](x))
        return L.vid(means, [t[n] for n in ts], list(m.log_scales), eps=1e-5)
    if name == "od":
        margins = [L.od_margin(bn.weight, bn.bias) for bn in margin_bns(teacher_name, teacher)]
        return L.od([c(s[n + "_pre"]) for c, n in zip(m.connectors, ss)], [t[n + "_pre"] for n in ts], margins)
    if name == "kdsvd":
        return L.kdsvd([c(s[n]) for c, n in zip(m.connectors, ss)], [t[n] for n in ts], k=1)
    if name == "reviewkd":
        b = s["embedding"].shape[0]
        student = [s[n] for n in ss] + [s["embedding"].view(b, -1, 1, 1)]
        teacher_maps = [t[n + "_pre"] for n in ts] + [t["embedding"].view(b, -1, 1, 1)]
        return L.reviewkd_hcl(m.fuse(student), teacher_maps)
    raise KeyError(name)


@pytest.mark.parametrize("pair", list(STAGES), ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("name", METHODS)
def test_term_equals_pure_loss_on_captured_tensors(name, pair):
    teacher, student = make(*pair)
    ss, ts = STAGES[pair]
    extra = ["embedding"]
    s_cap = Capture(student, ss + [n + "_pre" for n in ss] + extra)
    t_cap = Capture(teacher, ts + [n + "_pre" for n in ts] + extra)
    loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, SIZE, SIZE))
    loss_fn.train()
    m = loss_fn.methods[0]
    x, y = batch()
    out = loss_fn(x, y, epoch=30)
    with torch.no_grad():
        expected = by_hand(name, m, s_cap.out, t_cap.out, ss, ts, pair[0], teacher)
    assert set(out.terms) == {"ce", name}
    assert float(out.terms[name]) == pytest.approx(m.weight * float(expected), rel=1e-4, abs=1e-6)
    assert float(expected) > 0


# ---------------------------------------------------------------------------------------- (2) training


@pytest.mark.parametrize("pair", SAME + CROSS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("name", METHODS)
def test_training_steps(name, pair):
    teacher, student = make(*pair)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, SIZE, SIZE))
    loss_fn.train()
    m = loss_fn.methods[0]
    assert teacher.training == (name == "od")  # OD: teacher BN in train mode (authors' setting)
    connector_before = {k: p.detach().clone() for k, p in m.named_parameters()}
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    stem = next(student.parameters())
    for step in range(3):
        x, y = batch(seed=step)
        optimizer.zero_grad()
        out = loss_fn(x, y, epoch=step + 1)
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.terms.values())
        assert float(out.terms[name]) > 0
        run_backward(out)
        if step == 0:
            # The distillation term changes the student's first-layer gradient (beyond cross-entropy).
            ce = loss_fn.ce_weight * F.cross_entropy(student(x), y)
            (g_ce,) = torch.autograd.grad(ce, stem)
            assert not torch.allclose(stem.grad, g_ce, rtol=1e-4, atol=1e-8)
            for k, p in m.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k
        optimizer.step()
    for k, p in m.named_parameters():
        assert not torch.equal(p.detach(), connector_before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    trainable = {id(p) for p in loss_fn.trainable_parameters()}
    assert not any(id(p) in trainable for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BN running statistics (also for OD's train mode)
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------- (3) specifics


def test_registry_defaults():
    expected = {"fitnet": 100.0, "at": 1000.0, "nst": 50.0, "vid": 1.0, "od": 1e-3, "kdsvd": 1.0, "reviewkd": 5.0}
    for name, weight in expected.items():
        cls = methods.get(name)
        assert cls.defaults["weight"] == weight and cls.ce_weight == 1.0, name
        assert cls.paper and cls.__doc__ and f"docs/methods.md#{name}" in sys.modules[cls.__module__].__doc__
    assert methods.get("kdsvd").clip_to_ce and methods.get("od").teacher_train_mode
    assert not any(methods.get(n).teacher_train_mode for n in expected if n != "od")


def test_vid_variances_are_trainable():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = DistillationLoss(teacher, student, method="vid", input_shape=(3, SIZE, SIZE))
    loss_fn.train()
    m = loss_fn.methods[0]
    assert [p.shape[0] for p in m.log_scales] == [16, 32, 64]  # one α per teacher channel
    for p in m.log_scales:
        torch.testing.assert_close(F.softplus(p) + 1e-5, torch.full_like(p, 5.0))  # σ² starts at 5
    trainable = {id(p) for p in loss_fn.trainable_parameters()}
    assert all(id(p) in trainable for p in m.log_scales)
    assert any(k.startswith("methods.0.log_scales") for k in loss_fn.state_dict())
    start = [p.detach().clone() for p in m.log_scales]
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1)
    x, y = batch()
    run_backward(loss_fn(x, y))
    assert all(p.grad is not None and p.grad.abs().min() > 0 for p in m.log_scales)
    optimizer.step()
    assert all(not torch.equal(p.detach(), s) for p, s in zip(m.log_scales, start))


@pytest.mark.parametrize("teacher_name", ["resnet20", "wrn_16_2", "resnet18"])
def test_od_margins_come_from_the_bn_before_the_relu(teacher_name):
    teacher, student = make(teacher_name, "resnet8")
    loss_fn = DistillationLoss(teacher, student, method="od", input_shape=(3, SIZE, SIZE))
    m = loss_fn.methods[0]
    bns = margin_bns(teacher_name, teacher)
    assert len(m.margins) == len(bns) == 3
    for margin, bn in zip(m.margins, bns):
        torch.testing.assert_close(margin, L.od_margin(bn.weight, bn.bias))
        assert (margin < 0).all()
    assert all(isinstance(c, ConvConnector) for c in m.connectors)
    assert all(f"methods.0.margin{i}" in loss_fn.state_dict() for i in range(3))  # buffers, not parameters
    assert not any("margin" in k for k, _ in loss_fn.named_parameters())
    loss_fn.train()
    assert teacher.training
    loss_fn.eval()
    assert not teacher.training


def test_od_margin_bn_for_other_families_and_error_for_shufflenetv2():
    vgg = create("vgg8", CLASSES, image_size=SIZE)
    assert margin_batchnorm(vgg, tap_points(vgg)["stage2_pre"], 256) is vgg.stage2.layers[1]
    mbv2 = create("mobilenetv2", CLASSES, image_size=SIZE)
    assert margin_batchnorm(mbv2, tap_points(mbv2)["stage2_pre"], 16) is mbv2.blocks[2][-1].conv[7]
    tv = create("tv:resnet18", CLASSES, image_size=SIZE)  # torchvision block: bn2, not the downsample BN
    assert margin_batchnorm(tv, tap_points(tv)["stage2_pre"], 128) is tv.layer2[1].bn2
    # ShuffleNetV2's pre-ReLU tensor mixes a BN output with an already-activated half: no margin BN.
    with pytest.raises(KdlabError, match="od: the BatchNorm2d"):
        DistillationLoss(create("shufflenetv2", CLASSES, image_size=SIZE), create("resnet8", CLASSES, image_size=SIZE),
                         method="od", input_shape=(3, SIZE, SIZE))


def fitnet_regressor(s_shape, t_shape) -> nn.Module:
    points = {"stage1": "a", "stage2": "b", "stage3": "c"}
    m = methods.create("fitnet")
    ctx = BuildContext(student=nn.Identity(), teacher=nn.Identity(), student_points=points, teacher_points=points,
                       student_shapes={n: torch.Size(s_shape) for n in points},
                       teacher_shapes={n: torch.Size(t_shape) for n in points})
    m.taps(points, points)
    m.build(ctx)
    assert m.student_stages == ["stage2"] and m.teacher_stages == ["stage2"]
    return m.regressor


@pytest.mark.parametrize("s_shape, t_shape, conv_type, kernel, stride", [
    ((8, 16, 16), (12, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # H_s = 2 H_t
    ((8, 8, 8), (12, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # H_s = H_t
    ((8, 4, 4), (12, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # 2 H_s = H_t
    ((8, 6, 6), (12, 4, 4), nn.Conv2d, (3, 3), (1, 1)),  # H_s > H_t: kernel 1 + H_s - H_t
])
def test_fitnet_convreg_rule(s_shape, t_shape, conv_type, kernel, stride):
    reg = fitnet_regressor(s_shape, t_shape)
    assert isinstance(reg, ConvReg) and type(reg.conv) is conv_type
    assert reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert isinstance(reg.bn, nn.BatchNorm2d) and reg.bn.num_features == t_shape[0]
    out = reg(torch.randn(2, *s_shape))
    assert out.shape == (2, *t_shape) and (out >= 0).all()  # ends in ReLU: the hint is post-ReLU


def test_fitnet_fallback_and_hint_stage():
    reg = fitnet_regressor((8, 2, 2), (12, 8, 8))  # student 4x smaller: no ConvReg rule
    assert isinstance(reg, ConvConnector) and isinstance(reg.relu, nn.ReLU)
    assert reg(torch.randn(2, 8, 2, 2)).shape == (2, 12, 8, 8)
    # Real models at 16x16: WRN hint f2 (8x8) vs ShuffleNetV2 f2 (4x4) -> transposed conv; resnet18's f3 (4x4)
    # vs resnet8's f2 (8x8) -> stride-2 conv; MobileNetV2's matched stage 3 (2x2) vs resnet20 f2 (8x8) -> fallback.
    teacher, student = make("wrn_16_2", "shufflenetv2")
    m = DistillationLoss(teacher, student, method="fitnet", input_shape=(3, SIZE, SIZE)).methods[0]
    assert isinstance(m.regressor.conv, nn.ConvTranspose2d)
    teacher, student = make("resnet18", "resnet8")
    m = DistillationLoss(teacher, student, method="fitnet", input_shape=(3, SIZE, SIZE)).methods[0]
    assert (m.student_stages, m.teacher_stages) == (["stage2"], ["stage3"])
    assert m.regressor.conv.stride == (2, 2)
    teacher, student = make("resnet20", "mobilenetv2")
    m = DistillationLoss(teacher, student, method="fitnet", input_shape=(3, SIZE, SIZE)).methods[0]
    assert (m.student_stages, m.teacher_stages) == (["stage3"], ["stage2"])
    assert isinstance(m.regressor, ConvConnector)
    m = DistillationLoss(teacher, student, method="fitnet", input_shape=(3, SIZE, SIZE), hint_stage=0).methods[0]
    assert (m.student_stages, m.teacher_stages) == (["stage2"], ["stage1"])
    with pytest.raises(KdlabError, match="hint_stage=5 is out of range"):
        DistillationLoss(teacher, student, method="fitnet", input_shape=(3, SIZE, SIZE), hint_stage=5)


def test_kdsvd_connectors_only_where_widths_differ():
    teacher, student = make("resnet20", "resnet8")
    m = DistillationLoss(teacher, student, method="kdsvd", input_shape=(3, SIZE, SIZE)).methods[0]
    assert all(isinstance(c, nn.Identity) for c in m.connectors)  # equal widths: the original method
    teacher, student = make("wrn_16_2", "resnet8")
    m = DistillationLoss(teacher, student, method="kdsvd", input_shape=(3, SIZE, SIZE)).methods[0]
    assert [c.conv.out_channels for c in m.connectors] == [32, 64, 128]


def test_reviewkd_shapes_and_warmup():
    teacher, student = make("wrn_16_2", "shufflenetv2")
    loss_fn = DistillationLoss(teacher, student, method="reviewkd", input_shape=(3, SIZE, SIZE))
    m = loss_fn.methods[0]
    assert m.student_levels == ["stage1", "stage2", "stage3", "embedding"]
    assert m.teacher_levels == ["stage1_pre", "stage2_pre", "stage3_pre", "embedding"]
    assert [a.conv1[0].out_channels for a in m.abfs] == [512] * 4  # min(512, 1024-d student embedding)
    assert [a.att_conv is not None for a in m.abfs] == [True, True, True, False]  # no fusion at the deepest
    assert [a.conv2[0].out_channels for a in m.abfs] == [32, 64, 128, 128]
    assert [tuple(s) for s in m.out_sizes] == [(16, 16), (8, 8), (4, 4), (1, 1)]
    assert [m.scale(e) for e in (1, 10, 20, 40)] == [0.05, 0.5, 1.0, 1.0]
    assert methods.create("reviewkd", warmup=0).scale(1) == 1.0
    loss_fn.eval()  # deterministic forward: same batch, only the epoch changes
    x, y = batch()
    with torch.no_grad():
        early = float(loss_fn(x, y, epoch=5).terms["reviewkd"])
        late = float(loss_fn(x, y, epoch=20).terms["reviewkd"])
    assert early == pytest.approx(0.25 * late, rel=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sizes", [((8, 8), (4, 4)), ((7, 5), (3, 2)), ((4, 4), (1, 1))])
def test_abf_blend_is_the_official_concatenation_form(sizes, channels_last):
    """ABF's attention without the concatenation gives the official cat -> 1x1 conv -> sigmoid -> blend values
    (float64: only the summation order differs), for integer, uneven and 1x1-residual resizing alike."""
    from kdlab.methods.reviewkd import ABF

    torch.manual_seed(0)
    (h, w), (rh, rw) = sizes
    abf = ABF(6, 8, 5, fuse=True).double().eval()
    torch.nn.init.normal_(abf.att_conv[0].bias)
    x, r = torch.randn(3, 6, h, w, dtype=torch.float64), torch.randn(3, 8, rh, rw, dtype=torch.float64)
    if channels_last:
        abf, x = abf.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    out, fused = abf(x, r, (h, w))
    mid = abf.conv1(x)
    up = torch.nn.functional.interpolate(r, size=(h, w), mode="nearest")
    att = abf.att_conv(torch.cat([mid, up], dim=1))
    expected = mid * att[:, :1] + up * att[:, 1:2]
    # float64 rounding of sums over 16 channels: ~1e-15 of values of order 1
    assert torch.allclose(fused, expected, rtol=0, atol=1e-12)
    assert torch.allclose(out, abf.conv2(expected), rtol=0, atol=1e-12)
