"""Quantization-aware training (kdlab.engine.qat, --qat): the fake-quantization numerics against the formulas
written out here, the straight-through gradient, where activations are quantized, plain checkpoints, resume."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import kdlab
from cli_flags import DIGITS_FAST
from kdlab import models
from kdlab.cli import main
from kdlab.data import build_loaders
from kdlab.engine import qat
from kdlab.engine.evaluate import evaluate
from kdlab.errors import KdlabError


def reference_weight_codes(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel: s = max|w| / qmax (1 for an all-zero channel), q = clip(round-half-even(w/s))."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1) / qmax
    scale[scale == 0] = 1.0
    codes = np.clip(np.round(flat / scale[:, None]), -qmax, qmax)  # np.round rounds half to even
    return codes.reshape(w.shape), scale


@pytest.mark.parametrize("qmax", [127, 64])
def test_weight_fake_quantization_is_per_channel_symmetric_int8(qmax):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 3, 3, generator=g) * torch.tensor([1.0, 0.01, 5.0, 1.0, 0.3, 1.0]).view(-1, 1, 1, 1)
    w[3] = 0.0  # an all-zero channel stays zero
    w[4, 0, 0, 0] = -w[4].abs().max() * 2  # the extreme value is negative: the grid is symmetric anyway
    codes, scale = reference_weight_codes(w.numpy(), qmax)
    out = qat.fake_quantize_weight(w, qmax).numpy().astype(np.float64)
    expected = codes * scale.reshape(-1, 1, 1, 1)
    # float32 arithmetic on both sides: the same grid point, up to one float32 rounding of code * scale
    np.testing.assert_allclose(out, expected, rtol=2 ** -23, atol=0)
    assert np.abs(codes).max() == qmax and len(np.unique(codes[0])) > 10
    assert (out[3] == 0).all()


def test_activation_fake_quantization_is_uint8_affine_over_a_range_holding_zero():
    x = torch.linspace(-1.5, 3.0, 1001)
    for low, high in [(-0.7, 2.2), (0.4, 2.0), (-3.0, -1.0)]:  # the range is widened to contain 0
        rmin, rmax = min(low, 0.0), max(high, 0.0)
        scale = (rmax - rmin) / 255
        zero = round(-rmin / scale)
        q = np.clip(np.round(x.numpy().astype(np.float64) / scale) + zero, 0, 255)
        expected = (q - zero) * scale
        out = qat.fake_quantize_activation(x, torch.tensor(low), torch.tensor(high)).numpy()
        # one float32 rounding of scale and of the product: far below half a step
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * scale * 255)
        got_scale, got_zero = qat.activation_qparams(torch.tensor(low), torch.tensor(high))
        assert got_scale.item() == pytest.approx(scale, rel=1e-6) and got_zero.item() == zero


def test_gradients_pass_straight_through_inside_the_range_and_stop_where_clamped():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.99, 1.5], requires_grad=True)
    qat.fake_quantize_activation(x, torch.tensor(-1.0), torch.tensor(1.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    w = torch.randn(4, 5, requires_grad=True)
    upstream = torch.randn(4, 5)
    (qat.fake_quantize_weight(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # max|w| sets the scale: no weight is clamped


RESNET8_POINTS = {  # the 15 tensors ONNX Runtime's QDQ quantizer quantizes in resnet8 (tests/deploy checks it)
    "stem.0.input", "stem.2", "classifier.input", "classifier",
    *(f"stage{s}.0.{p}" for s in (1, 2, 3) for p in ("act1", "bn2", "act2")),
    "stage2.0.downsample.1", "stage3.0.downsample.1",
}


def test_activations_are_quantized_where_the_deployed_graph_quantizes_them():
    model = models.create("resnet8", 10, in_channels=3, image_size=32)
    fq = qat.attach(model, (3, 32, 32))
    assert fq.outputs | fq.inputs == RESNET8_POINTS


class TwiceReLU(nn.Module):
    """One ReLU module used twice, the second time on a sum (torchvision's BasicBlock does this)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        y = self.relu(self.conv(x))
        y = self.relu(y + 1.0)
        return self.head(y.mean((2, 3)))


def test_a_module_called_twice_gets_a_range_per_call():
    model = TwiceReLU()
    fq = qat.attach(model, (1, 4, 4))
    assert fq.outputs == {"relu", "relu#1", "head"} and fq.inputs == {"conv.input", "head.input"}
    model.train()
    model(torch.randn(8, 1, 4, 4))
    assert fq.ranges["relu#1"][0] >= 1.0 > fq.ranges["relu"][0]  # the second call sees values >= 1


def test_wrapping_keeps_the_state_dict_and_remove_restores_fp32():
    torch.manual_seed(0)
    model = models.create("resnet8", 10, in_channels=1, image_size=8).eval()
    keys = list(model.state_dict())
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        fq = qat.attach(model, (1, 8, 8))
        model(x)
        assert fq.ranges == {}  # eval mode observes nothing (before training, activations pass through)
        model.train()
        model(x)
        model.eval()
        quantized = model(x)
        assert list(model.state_dict()) == keys  # no buffers or renamed parameters
        fq.remove()
        after = model(x)
    model.train()
    assert not torch.equal(quantized, after)
    # BatchNorm's running statistics moved in the training-mode pass; the fp32 model with them is what remains
    fresh = models.create("resnet8", 10, in_channels=1, image_size=8)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), after)


def test_models_with_weights_outside_conv_and_linear_are_refused_in_one_line():
    model = models.create("vit_tiny_cifar", 10, in_channels=3, image_size=32)
    with pytest.raises(KdlabError, match="pos_embed") as info:
        qat.attach(model, (3, 32, 32))
    assert "\n" not in str(info.value) and "kdlab quantize" in str(info.value)
    gru = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    gru.add_module("rnn", nn.GRU(8, 8))
    with pytest.raises(KdlabError, match="weight_ih_l0"):
        qat.attach(gru, (1, 8, 8))


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture
def trained(digits_resnet8):
    return digits_resnet8


def qat_args(trained):
    return ["distill", "--teacher", str(trained), "--student", "resnet8", "--student-weights", str(trained),
            "--method", "kd", "--qat", "--epochs", "2", "--lr", "0.01", *DIGITS_FAST]


def test_a_qat_run_trains_the_weights_and_saves_a_plain_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "qat"
    assert main([*qat_args(trained), "--out", str(out)]) == 0
    start = torch.load(trained, weights_only=True)["model"]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["model"].keys() == start.keys()
    assert any(not torch.equal(state["model"][k], start[k]) for k in start if k.endswith(".weight"))
    assert set(state["qat"]["ranges"]) == RESNET8_POINTS and state["qat"]["weight_qmax"] in (127, 64)
    assert yaml.safe_load((out / "config.yaml").read_text())["qat"] is True
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["eval_quantized"] == "fake int8"
    best = kdlab.load_model(out / "best.pt")  # the architecture's own class with the fp32 weights
    assert type(best).__name__ == "CifarResNet" and not best._forward_hooks
    # the run's reported test top-1 is the fake-quantized model's: rebuilt from last.pt, the same number
    model = kdlab.load_model(out / "last.pt")
    qat.attach(model, (1, 8, 8)).load_state_dict(state["qat"])
    _, test_loader, _ = build_loaders("digits", batch_size=128, test_batch_size=256)
    result = evaluate(model, test_loader, torch.device("cpu"))
    assert result.as_dict("test_")["test_top1"] == record["test_top1"]


def test_a_killed_qat_run_resumes_to_the_same_weights_and_ranges(trained, whole_and_resumed):
    whole, resumed = whole_and_resumed(qat_args(trained))
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for point, value in whole["qat"]["ranges"].items():
        assert torch.equal(value, resumed["qat"]["ranges"][point]), point


def test_qat_without_a_teacher_and_without_weights_says_what_it_does(tmp_path, capsys):
    code = main(["train", "--model", "resnet8", "--qat", "--epochs", "1", "--out", str(tmp_path / "t"),
                 "--data", "digits", "--batch-size", "128", "data.fraction=0.1", "threads=1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "fake-quantized 10 Conv/Linear weights" in out.out and "test (fake-quantized int8) top-1" in out.out
    assert "--qat without starting weights" in out.err and out.err.count("--qat without") == 1


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "resnet8", "--qat", "--precision", "bf16"], "--qat trains in fp32"),
    (["train", "--model", "resnet8", "--qat", "--compile"], "drop --compile"),
    (["train", "--model", "resnet8", "--qat", "--ema-decay", "0.99"], "drop --ema-decay with --qat"),
    (["mutual", "--models", "resnet8,resnet8", "qat=true"], "kdlab mutual has no --qat"),
    (["train", "--model", "vit_tiny_cifar", "--qat"], "--qat fake-quantizes the weights of Conv and Linear"),
])
def test_qat_refusals_are_one_line(args, words, tmp_path, capsys):
    code = main([*args, "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r"), "threads=1"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err


class OwnNet(nn.Module):
    """A model of the user's own, passed to kdlab.distill as an object."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.features(x))


def test_kdlab_distill_on_own_objects_takes_qat(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    student = OwnNet()
    kdlab.distill(teacher=OwnNet().eval(), student=student, train_loader=batches, test_loader=batches,
                  method="kd", epochs=1, out=tmp_path / "own", num_classes=10, qat=True, threads=1)
    state = torch.load(tmp_path / "own" / "last.pt", weights_only=True)
    assert set(state["qat"]["ranges"]) == {"features.0.input", "features.2", "head.2.input", "head.2"}
    assert state["model"].keys() == OwnNet().state_dict().keys()
