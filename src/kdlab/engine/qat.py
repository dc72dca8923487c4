"""Quantization-aware training (`kdlab train|distill --qat`): the trained model computes with the int8 numbers
that `kdlab quantize` deploys, so that training (with any distillation loss) learns weights that survive int8.

What is fake-quantized, and why it mirrors the deployed model (kdlab.deploy.quantize: ONNX Runtime's static
quantizer, QDQ, U8S8, MinMax calibration):

- Weights of every Conv and Linear layer: per output channel, symmetric int8, q = clamp(round(w / s), -127, 127)
  with s = max|w| / 127 per channel (ONNX Runtime's symmetric int8 range); with 7-bit weights, where
  `needs_reduced_range()` says ONNX Runtime needs them (x86 without VNNI), -64..64 and s = max|w| / 64. ONNX
  Runtime quantizes the weights after folding BatchNorm into the convolution, w' = w * g/sigma per channel;
  per-channel symmetric rounding commutes with that positive or negative per-channel factor
  (round(w g / (max|w g|/127)) = round(w / (max|w|/127)) up to float rounding), so fake-quantizing the unfolded
  weight gives the deployed weights exactly, and BatchNorm trains as usual (batch statistics in training).
- Activations, per tensor, uint8 affine: s = (max - min) / 255 and zero point round(-min / s) over a range
  widened to contain 0 (ONNX Runtime's compute_scale_zp), at the tensors the deployed graph quantizes: the output
  of every ReLU / ReLU6 (ONNX Runtime fuses Conv+BN+ReLU and Add+ReLU and quantizes after the ReLU), of every
  Conv or BatchNorm not followed by one (the convolution output entering a residual sum), of every Linear (the
  logits are quantized too), and the input of every Conv/Linear whose input is not one of these (the model's
  input, the pooled features). For the CIFAR ResNets these are exactly the 15 tensors of resnet8's QDQ graph.
  The layout is found by one probe forward pass on zeros when the model is wrapped (no random numbers drawn).
- Ranges: min and max of each batch, averaged with momentum 0.01 (the moving-average min/max observer of
  Jacob et al., CVPR 2018, arXiv:1712.05877, and of torch.ao.quantization's MovingAverageMinMaxObserver),
  updated in training mode and frozen in eval mode; evaluation during the run uses the observed ranges. The
  deployed model is calibrated again by `kdlab quantize` (MinMax over its calibration images), so its ranges are
  close to, not equal to, the ones trained with.
- Gradients: the straight-through estimator (Bengio et al. 2013, arXiv:1308.3432): d q(x)/dx = 1 inside the
  quantization range and 0 where the value was clamped.

The rounding is the core ops torch.fake_quantize_per_channel_affine / fake_quantize_per_tensor_affine (round half
to even, as ONNX Runtime's QuantizeLinear). The eager and FX QAT flows of torch.ao.quantization (prepare_qat) warn
that they are deprecated in favour of torchao, which kdlab does not depend on, and PT2E QAT needs an exported
graph, which kdlab's forward-hook taps do not fit; so the model is wrapped here with hooks instead.

The wrapping leaves the model's parameters and state_dict as they are (a forward override on Conv/Linear and
forward hooks; no buffers added): the checkpoints of a QAT run hold the plain fp32 weights that `kdlab quantize`,
`kdlab eval`, `kdlab export` and `kdlab.load_model` read, and the observed ranges go beside them (`qat` key) so
that a resumed run continues with them.
"""

from __future__ import annotations

import platform
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import KdlabError

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATIONS = (nn.ReLU, nn.ReLU6)  # ONNX Relu / Clip: fused into the quantized output of the layer before
MOMENTUM = 0.01
ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255  # uint8
_TINY = torch.finfo(torch.float32).tiny


def needs_reduced_range() -> bool:
    """x86 without VNNI (AVX2-only): ONNX Runtime's U8S8 kernels may saturate there unless weights use 7 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def weight_qmax(reduced_range: bool) -> int:
    """The symmetric int8 weight range ONNX Runtime uses: -127..127, or -64..64 with reduce_range."""
    return 64 if reduced_range else 127


# ------------------------------------------------------------------------------------------------ numerics
def fake_quantize_weight(weight: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Per-output-channel (dim 0) symmetric fake quantization: s = max|w| / qmax, q = clamp(round(w/s), ±qmax)."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).float()
    scale = absmax / qmax
    scale = torch.where(scale < _TINY, torch.ones_like(scale), scale)  # an all-zero channel stays zero
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (scale, zero point) of the range [low, high] widened to contain 0, as ONNX Runtime computes them."""
    low = torch.clamp(low.float(), max=0.0)
    high = torch.clamp(high.float(), min=0.0)
    scale = (high - low) / (ACTIVATION_QMAX - ACTIVATION_QMIN)
    degenerate = scale < _TINY
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    zero = torch.where(degenerate, torch.zeros_like(low), torch.round(ACTIVATION_QMIN - low / scale))
    return scale.reshape(1), zero.clamp(ACTIVATION_QMIN, ACTIVATION_QMAX).to(torch.int32).reshape(1)


def fake_quantize_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    scale, zero = activation_qparams(low, high)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, ACTIVATION_QMIN, ACTIVATION_QMAX)


# ------------------------------------------------------------------------------------------------ layout
def unsupported_weights(model: nn.Module) -> list[str]:
    """Weights (parameters of rank >= 2) that are not a Conv/Linear layer's own `weight`: attention projections,
    embeddings, position embeddings, recurrent layers, transposed convolutions. QAT cannot fake-quantize them."""
    found = []
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and not (type(module) in WEIGHTED and pname == "weight"):
                found.append(f"{name + '.' if name else ''}{pname} ({type(module).__name__})")
    return found


class _Probe:
    """One forward pass recording, for every call of a tracked module, the ids of its input and output."""

    def __init__(self, tracked: dict[str, nn.Module]):
        self.calls: list[tuple[str, int, int, int]] = []  # (module name, call index, input id, output id)
        self.keep: list[torch.Tensor] = []  # the tensors stay alive, so no id is reused during the pass
        self.counts: dict[str, int] = {}
        self.tracked = tracked

    def run(self, model: nn.Module, example: torch.Tensor) -> None:
        handles = [m.register_forward_hook(self._hook(name)) for name, m in self.tracked.items()]
        was_training = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            with torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
            for m, mode in was_training:
                m.training = mode

    def _hook(self, name: str):
        def record(module, inputs, output):
            index = self.counts.get(name, 0)
            self.counts[name] = index + 1
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                self.keep += [t for t in (first, output) if t is not None]
                self.calls.append((name, index, id(first) if first is not None else -1, id(output)))
        return record


def point_name(module: str, call: int, where: str = "") -> str:
    return f"{module}{where}" + (f"#{call}" if call else "")


def quantization_points(model: nn.Module, example: torch.Tensor) -> tuple[set[str], set[str]]:
    """(output points, input points) of `model`: `name` / `name#k` (the k-th call of a module used several times)
    whose output is fake-quantized, and weighted modules whose input is."""
    tracked = {name: m for name, m in model.named_modules() if type(m) in WEIGHTED + NORMS + ACTIVATIONS}
    probe = _Probe(tracked)
    probe.run(model, example)
    consumers: dict[int, list[str]] = {}
    for name, _, in_id, _ in probe.calls:
        consumers.setdefault(in_id, []).append(name)
    outputs: set[str] = set()
    quantized_ids: set[int] = set()
    for name, call, _, out_id in probe.calls:
        module = tracked[name]
        after = [tracked[c] for c in consumers.get(out_id, []) if c != name]
        if type(module) in ACTIVATIONS or type(module) is nn.Linear:
            keep = True
        elif isinstance(module, NORMS):
            keep = not any(type(c) in ACTIVATIONS for c in after)
        else:  # a convolution: fused with the BatchNorm or ReLU that follows
            keep = not any(type(c) in ACTIVATIONS or isinstance(c, NORMS) for c in after)
        if keep:
            outputs.add(point_name(name, call))
            quantized_ids.add(out_id)
    inputs = {point_name(name, call, ".input") for name, call, in_id, _ in probe.calls
              if type(tracked[name]) in WEIGHTED and in_id not in quantized_ids}
    return outputs, inputs


# ------------------------------------------------------------------------------------------------ wrapper
class FakeQuant:
    """Fake quantization attached to `model` (see the module docstring); `remove()` takes it off again.

    `state_dict()` holds the observed ranges and the weight range, in types `torch.load(weights_only=True)`
    reads; `load_state_dict` restores them (a resumed run)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, reduced_range: bool | None = None,
                 momentum: float = MOMENTUM):
        bad = unsupported_weights(model)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise KdlabError(f"--qat fake-quantizes the weights of Conv and Linear layers, and this model has "
                             f"others ({shown}); train it without --qat and use kdlab quantize (post-training)")
        self.model = model
        self.qmax = weight_qmax(needs_reduced_range() if reduced_range is None else reduced_range)
        self.momentum = float(momentum)
        self.outputs, self.inputs = quantization_points(model, example)
        self.ranges: dict[str, torch.Tensor] = {}  # point -> tensor([min, max]) once observed
        self.weighted = [name for name, m in model.named_modules() if type(m) in WEIGHTED]
        self._calls: dict[str, int] = {}
        self._handles: list[Any] = []
        self._overridden: list[nn.Module] = []
        self._install()

    # --------------------------------------------------------------------------- hooks
    def _install(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(lambda module, args: self._calls.clear()))
        for name, module in self.model.named_modules():
            kind = type(module)
            if kind not in WEIGHTED + NORMS + ACTIVATIONS:
                continue
            self._handles.append(module.register_forward_pre_hook(self._count(name)))
            self._handles.append(module.register_forward_hook(self._output(name)))
            if kind in WEIGHTED:
                module.forward = types.MethodType(_weighted_forward(self, name), module)
                self._overridden.append(module)

    def _count(self, name: str):
        def count(module, args):
            self._calls[name] = self._calls.get(name, -1) + 1
        return count

    def _current(self, name: str, where: str = "") -> str:
        return point_name(name, max(self._calls.get(name, 0), 0), where)

    def _output(self, name: str):
        def quantize(module, args, output):
            point = self._current(name)
            if point in self.outputs and isinstance(output, torch.Tensor):
                return self.quantize(point, output, module.training)
            return None
        return quantize

    def quantize(self, point: str, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Fake-quantize activation `x` at `point`, first moving its range in training mode."""
        if training:
            low, high = torch.aminmax(x.detach().float())
            seen = self.ranges.get(point)
            batch = torch.stack([low, high])
            self.ranges[point] = batch if seen is None else torch.lerp(seen, batch, self.momentum)
        observed = self.ranges.get(point)
        if observed is None:  # evaluated before any training step: nothing observed yet
            return x
        return fake_quantize_activation(x, observed[0], observed[1])

    def remove(self) -> None:
        """Take the fake quantization off: the model computes in fp32 again (its weights are untouched)."""
        for handle in self._handles:
            handle.remove()
        for module in self._overridden:
            del module.forward
        self._handles, self._overridden = [], []

    # --------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"weight_qmax": self.qmax, "momentum": self.momentum,
                "ranges": {k: v.detach().cpu().clone() for k, v in self.ranges.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.qmax = int(state["weight_qmax"])
        self.momentum = float(state["momentum"])
        self.ranges = {k: v.to(device) for k, v in state["ranges"].items()}

    def describe(self) -> str:
        bits = "8-bit" if self.qmax == 127 else "7-bit (reduce_range: this x86 CPU has no VNNI)"
        return (f"QAT: fake-quantized {len(self.weighted)} Conv/Linear weights (int8 per channel, {bits}) and "
                f"{len(self.outputs) + len(self.inputs)} activations (uint8 per tensor, moving-average ranges)")


def _weighted_forward(fq: FakeQuant, name: str):
    """The forward of a Conv/Linear under QAT: fake-quantized input (where it is a quantization point) and
    weight; the output is handled by the forward hook."""
    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        point = fq._current(name, ".input")
        if point in fq.inputs:
            x = fq.quantize(point, x, module.training)
        weight = fake_quantize_weight(module.weight, fq.qmax)
        if isinstance(module, nn.Linear):
            return F.linear(x, weight, module.bias)
        return module._conv_forward(x, weight, module.bias)
    return forward


def attach(model: nn.Module, input_shape: Sequence[int], reduced_range: bool | None = None) -> FakeQuant:
    """Wrap `model` (input C, H, W) for quantization-aware training; returns the FakeQuant that holds it."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, *input_shape, device=device)
    return FakeQuant(model, example, reduced_range)
