"""Wiring of the methods for transformer students and heterogeneous pairs: DeiT (distillation token) and OFA-KD
(per-stage branches to the logit space)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdlab
from kdlab import models
from kdlab.errors import KdlabError
from kdlab.methods.ofa import SepConv, TokenBranch


def _pair(teacher: str, student: str, size: int = 8, channels: int = 1):
    torch.manual_seed(0)
    return (models.create(teacher, 10, in_channels=channels, image_size=size).eval(),
            models.create(student, 10, in_channels=channels, image_size=size))


def _step(loss_fn, x, y):
    optimizer = torch.optim.SGD(list(loss_fn.trainable_parameters()), lr=0.1)
    out = loss_fn(x, y)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return out


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_deit_terms_read_both_heads_and_train_them(mode):
    teacher, student = _pair("resnet8", "deit_tiny_cifar")
    loss_fn = kdlab.DistillationLoss(teacher, student, method="deit", hparams={"deit": {"mode": mode}},
                                     input_shape=(1, 8, 8))
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    heads = {}
    handles = [student.head.register_forward_hook(lambda _m, _i, o: heads.__setitem__("cls", o.detach())),
               student.head_dist.register_forward_hook(lambda _m, _i, o: heads.__setitem__("dist", o.detach()))]
    with torch.no_grad():
        t_logits = teacher(x)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = _step(loss_fn, x, y)
    for h in handles:
        h.remove()
    assert set(out.terms) == {"ce", "deit_ce", "deit"} and out.terms["ce"] == 0  # CE is on the class head only
    torch.testing.assert_close(out.terms["deit_ce"], 0.5 * F.cross_entropy(heads["cls"], y))
    soft = F.kl_div(F.log_softmax(heads["dist"], 1), F.softmax(t_logits, 1), reduction="sum") / heads["dist"].numel()
    dist = F.cross_entropy(heads["dist"], t_logits.argmax(1)) if mode == "hard" else soft
    torch.testing.assert_close(out.terms["deit"], 0.5 * dist)
    for name in ("head.weight", "head_dist.weight", "dist_token", "blocks.0.attn.qkv.weight"):
        assert not torch.equal(dict(student.named_parameters())[name], before[name]), name


def test_deit_class_head_ce_follows_the_recipes_mixing_and_smoothing():
    """The authors train the class head on mixup/CutMix soft targets with label smoothing: with --mixup and
    --label-smoothing, deit_ce is the engine's mixed, smoothed CE of the class head, not a plain CE."""
    from kdlab.data.augment import BatchMixer
    from kdlab.engine.objectives import classification_loss

    teacher, student = _pair("resnet8", "deit_tiny_cifar")
    loss_fn = kdlab.DistillationLoss(teacher, student, method="deit", input_shape=(1, 8, 8), label_smoothing=0.1)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    mixed, mix = BatchMixer(mixup=1.0)(x, y, torch.Generator().manual_seed(0))
    heads = {}
    handle = student.head.register_forward_hook(lambda _m, _i, o: heads.__setitem__("cls", o.detach()))
    student.eval()  # dropout-free, same outputs in the reference
    out = loss_fn(mixed, y, mix=mix)
    handle.remove()
    expected = 0.5 * classification_loss(heads["cls"], y, mix, label_smoothing=0.1)
    torch.testing.assert_close(out.terms["deit_ce"], expected)
    assert not torch.allclose(out.terms["deit_ce"], 0.5 * F.cross_entropy(heads["cls"], y))  # the mix matters


def test_deit_refuses_a_student_without_distillation_token_and_checks_hparams():
    teacher, student = _pair("resnet8", "vit_tiny_cifar")
    with pytest.raises(KdlabError, match="distillation token") as info:
        kdlab.DistillationLoss(teacher, student, method="deit", input_shape=(1, 8, 8))
    assert "\n" not in str(info.value)
    for bad, match in (({"mode": "medium"}, "mode"), ({"alpha": 1.5}, "alpha"), ({"reduction": "sum"}, "reduction")):
        with pytest.raises(KdlabError, match=match):
            kdlab.methods.create("deit", **bad)


def test_ofa_cnn_student_branches_follow_the_official_layout():
    teacher, student = _pair("vit_tiny_cifar", "resnet8", size=32, channels=3)
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ofa", input_shape=(3, 32, 32))
    method = loss_fn.methods[0]
    assert method.student_stages == ["stage1", "stage2", "stage3"]
    seps = [sum(isinstance(m, SepConv) for m in branch) for branch in method.branches]
    assert seps == [2, 1, 0]  # (stages - k) stride-2 SepConvs, a 1x1 conv for the last stage
    width = max(student.classifier.in_features, teacher.head.in_features)  # max(D_s, D_t) = 192
    assert all(branch[-1].in_features == width and branch[-1].out_features == 10 for branch in method.branches)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    before = [p.detach().clone() for p in method.branches.parameters()]
    out = _step(loss_fn, x, y)
    assert set(out.terms) == {"ce", "ofa", "ofa_kd"}
    with torch.no_grad():
        t_logits = teacher(x)
    torch.testing.assert_close(out.terms["ofa_kd"], kdlab.losses.ofa(out.logits.detach(), t_logits, y, eps=1.0))
    assert any(not torch.equal(p, b) for p, b in zip(method.branches.parameters(), before))


def test_ofa_token_student_gets_transformer_branches_and_stage_choice():
    teacher, student = _pair("resnet8", "vit_tiny_cifar", size=32, channels=3)
    loss_fn = kdlab.DistillationLoss(teacher, student, method="ofa", hparams={"ofa": {"stages": [3], "eps": 1.5}},
                                     input_shape=(3, 32, 32))
    method = loss_fn.methods[0]
    assert method.student_stages == ["stage3"] and isinstance(method.branches[0], TokenBranch)
    assert len(method.branches[0].blocks) == 1  # max(stages - k, 1) blocks
    out = _step(loss_fn, torch.randn(4, 3, 32, 32), torch.arange(4))
    assert torch.isfinite(out.loss)
    with pytest.raises(KdlabError, match="stage 5"):
        kdlab.DistillationLoss(teacher, student, method="ofa", hparams={"ofa": {"stages": [5]}},
                               input_shape=(3, 32, 32))
    with pytest.raises(KdlabError, match="eps"):
        kdlab.methods.create("ofa", eps=0.0)
