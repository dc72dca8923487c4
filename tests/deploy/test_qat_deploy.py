"""--qat then kdlab quantize: the int8 ONNX model ONNX Runtime builds is the model QAT trained (kdlab.engine.qat).

A digits resnet8 is trained, fine-tuned with `kdlab train --qat` and quantized with `kdlab quantize`; then
the deployed int8 weights, the quantized tensors and the logits are compared with the fake-quantized PyTorch model.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import kdlab
from kdlab.cli import main
from kdlab.deploy.load import load
from kdlab.deploy.runtimes import open_exported
from kdlab.deploy.samples import open_data, preprocess
from kdlab.engine import qat

FAST = ["--data", "digits", "--batch-size", "128", "--quiet", "threads=1", "deterministic=true"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(QAT run directory, its int8 ONNX file): fp32 training, 2 QAT epochs from it, kdlab quantize."""
    root = tmp_path_factory.mktemp("qat-deploy")
    assert main(["train", "--model", "resnet8", "--epochs", "6", "--out", str(root / "fp32"), *FAST]) == 0
    assert main(["train", "--model", "resnet8", "--qat", "--weights", str(root / "fp32" / "last.pt"), "--epochs",
                 "2", "--lr", "0.005", "--out", str(root / "qat"), *FAST]) == 0
    out = root / "qat.int8.onnx"
    assert main(["quantize", str(root / "qat"), "--calibration", "512", "--out", str(out)]) == 0
    return root / "qat", out


def fake_quantized(run):
    """The run's last.pt as the fake-quantized model it was evaluated as (eval mode), with its FakeQuant."""
    model = kdlab.load_model(run / "last.pt")
    fq = qat.attach(model, (1, 8, 8))
    fq.load_state_dict(torch.load(run / "last.pt", weights_only=True)["qat"])
    return model.eval(), fq


def test_the_deployed_int8_weights_are_the_ones_qat_trained_with(deployed):
    run, int8 = deployed
    model, fq = fake_quantized(run)
    graph = onnx.load(str(int8)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    modules = dict(model.named_modules())
    compared = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = next(n for n in graph.node if node.input[1] in n.output)
        codes = arrays[dq.input[0]].astype(np.int64)  # the int8 weights ONNX Runtime computes with
        name = dq.input[0].removesuffix("_quantized").removesuffix(".weight")
        module = modules[name]
        ours = qat.fake_quantize_weight(module.weight.detach(), fq.qmax)
        scale = module.weight.detach().abs().amax(dim=tuple(range(1, module.weight.dim())), keepdim=True) / fq.qmax
        mine = torch.round(ours / scale).numpy().astype(np.int64)
        # ONNX Runtime quantizes the conv weight with BatchNorm folded in (w * gamma / sigma per channel):
        # per-channel symmetric rounding gives the same codes, with the sign of gamma
        bn = _batchnorm_after(modules, name)
        if bn is not None:
            mine = mine * np.sign(bn.weight.detach().numpy()).astype(np.int64).reshape(-1, *[1] * (mine.ndim - 1))
        assert codes.shape == mine.shape, name
        # the same grid: the folded weight's float32 rounding may put a value on the other side of a tie
        assert np.abs(codes - mine).max() <= 1 and (codes != mine).mean() < 1e-3, name
        compared += 1
    assert compared == 10  # resnet8: 7 convs with BatchNorm, 2 shortcut convs, the classifier


def _batchnorm_after(modules, name):
    """The BatchNorm that follows conv `name` in the CIFAR ResNet (stem.0 -> stem.1, convK -> bnK,
    downsample.0 -> downsample.1), or None for the classifier."""
    head, _, last = name.rpartition(".")
    candidates = [f"{head}.{int(last) + 1}" if last.isdigit() else f"{head}.{last.replace('conv', 'bn')}"]
    found = [modules[c] for c in candidates if isinstance(modules.get(c), torch.nn.BatchNorm2d)]
    return found[0] if found else None


def quantized_points_in_order(model, fq):
    """Our activation quantization points in the order one forward pass meets them."""
    seen = []
    original = fq.quantize
    fq.quantize = lambda point, x, training: seen.append(point) or original(point, x, training)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 8, 8))
    finally:
        fq.quantize = original
    return seen


def test_with_onnx_runtimes_ranges_the_fake_quantized_model_computes_the_int8_logits(deployed):
    run, int8 = deployed
    model, fq = fake_quantized(run)
    graph = onnx.load(str(int8)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in arrays]
    points = quantized_points_in_order(model, fq)
    assert len(points) == len(activations) == 15  # the tensors ONNX Runtime quantizes are the ones QAT does
    for point, node in zip(points, activations, strict=True):
        scale, zero = float(arrays[node.input[1]]), int(arrays[node.input[2]])
        fq.ranges[point] = torch.tensor([-zero * scale, (255 - zero) * scale])  # gives back (scale, zero)
    loaded = load(run / "last.pt")
    data, _ = open_data(loaded.arch, loaded.config, loaded.path, None, None)
    images = torch.cat([b[0] for b in data.test])
    with torch.no_grad():
        ours = model(images)
    theirs = open_exported(int8, "onnx")(preprocess(data.denormalise(images), loaded.input))
    step = float(arrays[activations[-1].input[1]])  # the logits' quantization step
    # The same values rounded on the same grids: they part only where float summation order puts a value on the
    # other side of a rounding boundary (one step there, and a step or two downstream of it), and by the int32
    # bias rounding (below scale_in * scale_w / 2, far under a step).
    diff = (ours - theirs).abs()
    assert diff.max() <= 3 * step + 1e-6 and diff.mean() <= 0.5 * step
    top2 = ours.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * diff.max()  # a class can only change where the margin is smaller
    assert torch.equal(ours.argmax(1)[clear], theirs.argmax(1)[clear]) and clear.float().mean() > 0.9


def test_kdlab_quantize_keeps_the_accuracy_the_qat_run_reported(deployed):
    run, int8 = deployed
    model, _ = fake_quantized(run)
    meta = json.loads(int8.with_name(int8.name + ".json").read_text())
    loaded = load(run / "last.pt")
    data, _ = open_data(loaded.arch, loaded.config, loaded.path, None, None)
    images, targets = torch.cat([b[0] for b in data.test]), torch.cat([b[1] for b in data.test])
    with torch.no_grad():
        ours = model(images)
    theirs = open_exported(int8, "onnx")(preprocess(data.denormalise(images), loaded.input))
    fake_top1 = float((ours.argmax(1) == targets).double().mean() * 100)
    int8_top1 = float((theirs.argmax(1) == targets).double().mean() * 100)
    assert int8_top1 == pytest.approx(meta["top1"]["int8"], abs=1e-9)  # what kdlab quantize reported
    # The weights and the arithmetic are the same (the tests above); the activation ranges are not: kdlab
    # quantize calibrates MinMax on 512 training images, QAT kept moving averages of batch extremes. Only an image
    # whose top-2 margin is within the logit change that causes can change class, so the accuracies differ by at
    # most the share of such images.
    change = (ours - theirs).abs().max()
    top2 = ours.topk(2, dim=1).values
    close = float(((top2[:, 0] - top2[:, 1]) <= 2 * change).float().mean() * 100)
    assert abs(int8_top1 - fake_top1) <= close
    assert abs(int8_top1 - fake_top1) <= 1.0, (int8_top1, fake_top1, close)  # 1 point: 4.5 of 450 test images


def test_quantizing_for_another_weight_range_than_qat_trained_says_so(deployed, monkeypatch):
    from kdlab.deploy import quantize

    run, _ = deployed
    trained = torch.load(run / "last.pt", weights_only=True)["qat"]["weight_qmax"]
    assert quantize.qat_range_note(run / "last.pt") is None  # quantized where it was trained: nothing to say
    monkeypatch.setattr(quantize, "needs_reduced_range", lambda: trained == 127)  # the other kind of CPU
    note = quantize.qat_range_note(run / "last.pt")
    assert note.startswith("kdlab: note:") and "\n" not in note
    assert ("for 8-bit weights" in note and "takes 7-bit" in note) if trained == 127 else "for 7-bit" in note
