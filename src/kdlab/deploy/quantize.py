"""`kdlab quantize RUN --calibration N --out FILE`: int8 static post-training quantization of a student.

The model is exported to ONNX (checked as `kdlab export` checks it), then quantized by ONNX Runtime's static
quantizer (onnxruntime.quantization.quantize_static): QDQ format, int8 weights per output channel and uint8
activations (U8S8, ONNX Runtime's choice for x86 CPUs: on this AVX512-VNNI/AMX Xeon, int8 activations (S8S8) ran
resnet20 at 32 px slower than fp32, U8S8 1.3-1.5x faster), with activation ranges calibrated (MinMax) on N
unaugmented training images fed through the model's own preprocessing. On x86 CPUs without VNNI, weights use
7 bits (reduce_range), as ONNX Runtime advises there against overflow of the 16-bit intermediate sums.
ONNX Runtime's CPU provider runs the QDQ graph with int8 kernels (QLinearConv,
QGemm, ...). The int8 model is run on test images before it is written: it must give finite logits of the
right shape; its test top-1 is reported beside the fp32 model's when the data can be read.

Layers the QDQ quantizer has no int8 form for (recurrent layers, einsum with weights, custom ops) would stay
fp32 between quantize/dequantize pairs, which is neither int8 nor fast: such a model is refused in one line.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlab.deploy import extras
from kdlab.deploy.export import export_model, prepare
from kdlab.deploy.files import claim_target, publish, remove, sidecar, temporary
from kdlab.deploy.runtimes import open_exported
from kdlab.deploy.samples import RunData, Samples, preprocess, take
from kdlab.deploy.verify import top1
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.qat import needs_reduced_range, weight_qmax  # shared with --qat training
from kdlab.errors import KdlabError

CALIBRATION_BATCH = 32


def unsupported_layers(model_path: str | Path) -> list[str]:
    """Nodes of an ONNX graph that carry weights (a float initializer of rank >= 2) but have no QDQ int8 form."""
    onnx = extras.onnx("int8 quantization")
    from onnxruntime.quantization.registry import QDQRegistry

    graph = onnx.load(str(model_path)).graph
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2 and t.data_type in (1, 10, 11, 16)}
    return [f"{node.op_type} {node.name}".strip() for node in graph.node
            if node.op_type not in QDQRegistry and any(name in weights for name in node.input)]


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over batches of preprocessed images."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # not needed by MinMax, which reads the batches once
        pass


def quantize_onnx(fp32: Path, out: Path, calibration: torch.Tensor, per_channel: bool = True) -> dict[str, Any]:
    """Quantize the ONNX file `fp32` into `out` (QDQ, int8), calibrated on `calibration` (preprocessed inputs)."""
    extras.onnxruntime("int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce_range = needs_reduced_range()
    bad = unsupported_layers(fp32)
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise KdlabError(f"the model has layers without an int8 form in ONNX Runtime's static quantizer ({shown}); "
                         f"int8 covers Conv, Gemm/Linear, MatMul, pooling and elementwise layers: export it in fp32 "
                         f"with kdlab export instead")
    pre = out.with_name(out.name + ".pre.onnx")
    batches = [np.ascontiguousarray(b.numpy()) for b in calibration.split(CALIBRATION_BATCH)]
    try:
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception:  # the pre-pass (shape inference, constant folding) is an optimisation only
            source = fp32
        quantize_static(str(source), str(out), _Calibration("input", batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
    except KdlabError:
        raise
    except Exception as exc:  # the quantizer raises many types
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise KdlabError(f"ONNX Runtime's static quantizer failed on this model ({reason})") from None
    finally:
        remove(pre)
    import onnxruntime

    return {"quantizer": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
            "quant_format": "QDQ", "weights": ("int8" if not reduce_range else "int8 (7-bit range)")
            + (" per channel" if per_channel else " per tensor"), "activations": "uint8 per tensor",
            "calibration_method": "MinMax",
            "calibration_images": int(calibration.shape[0])}


def quantize_model(model: nn.Module, out: str | Path, calibration: Samples, *, spec: dict[str, Any] | None = None,
                   check: Samples | None = None, run_data: RunData | None = None, force: bool = False,
                   per_channel: bool = True, meta: dict[str, Any] | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export `model` (fp32 ONNX, checked), quantize it to int8 into `out` and write `out`.json."""
    out = claim_target(out, force)
    spec = spec or getattr(model, "kdlab_input", None)
    if spec is None:
        raise KdlabError("quantize_model needs spec= (the model's input; kdlab.deploy.export.user_spec)")
    check = check or calibration
    with tempfile.TemporaryDirectory(prefix="kdlab-quantize-") as work:
        fp32 = Path(work) / "fp32.onnx"
        record = export_model(model, fp32, "onnx", spec=spec, samples=check, meta=meta)
        tmp = temporary(out)
        try:
            how = quantize_onnx(fp32, tmp, preprocess(calibration.pixels, spec), per_channel)
            run_int8, run_fp32 = open_exported(tmp, "onnx"), open_exported(fp32, "onnx")
            deployed = preprocess(check.pixels, spec)
            int8_logits, fp32_logits = run_int8(deployed), run_fp32(deployed)
            if tuple(int8_logits.shape) != tuple(fp32_logits.shape) or not torch.isfinite(int8_logits).all():
                raise KdlabError("the int8 model gave non-finite or misshapen logits; it was not written")
            agree = float((int8_logits.argmax(1) == fp32_logits.argmax(1)).float().mean() * 100)
            diff = float((int8_logits - fp32_logits).abs().max())
            accuracy = top1(run_int8, run_fp32, run_data, spec) if run_data is not None else None
            record.update(file=out.name, **how, fp32_size=fp32.stat().st_size, calibration_source=calibration.source,
                          fp32_check=record.pop("check"), top1=accuracy.as_dict() if accuracy else None,
                          int8_vs_fp32={"images": int(deployed.shape[0]), "source": check.source,
                                        "max_abs_logit_diff": diff, "top1_agreement_percent": agree})
            if accuracy is not None:
                record["top1"].update(int8=accuracy.exported, fp32=accuracy.reference)
            publish(tmp, out, record)
        finally:
            remove(tmp)
    if log is not None:
        log(f"quantized {spec.get('model') or type(model).__name__} to {out} (int8 QDQ, "
            f"{out.stat().st_size / 2**20:.2f} MiB; fp32 ONNX {fp32_size(record):s}), calibrated on "
            f"{how['calibration_images']} {calibration.source}")
        log(f"int8 vs fp32 on {deployed.shape[0]} {check.source}: same top-1 class for {agree:.1f}%, max |logit "
            f"diff| {diff:.3g}")
        if accuracy is not None:
            log(accuracy.line("int8", "fp32") + (f"; {-accuracy.difference:.2f} points lost"
                                               if accuracy.difference < 0 else ""))
        log(f"preprocessing: {sidecar(out)}")
    return record


def fp32_size(record: dict[str, Any]) -> str:
    size = record.get("fp32_size")
    return f"{size / 2**20:.2f} MiB" if isinstance(size, (int, float)) and math.isfinite(size) else "checked"


def quantize_run(path: str | Path, out: str | Path, calibration: int = 512, member: int | str | None = None,
                 data: str | None = None, data_root: str | None = None, check: int = 64, force: bool = False,
                 per_channel: bool = True, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """`kdlab quantize`: the student of a run (or checkpoint) to an int8 ONNX file, calibrated on `calibration`
    training images of the run's data (or `data`)."""
    claim_target(out, force)
    if calibration < 1:
        raise KdlabError(f"--calibration must be at least 1 training image, got {calibration}")
    loaded, spec, samples, run_data, meta = prepare(path, member, check, data, data_root, log=None)
    if run_data is None:
        raise KdlabError(f"static quantization calibrates on training images but the data of '{loaded.path}' "
                         f"({loaded.arch.get('data')}) cannot be read here; pass --data NAME --data-root DIR")
    images = take(run_data.train, calibration, run_data, "training images (unaugmented)")
    if log is not None and loaded.config.get("qat"):
        note = qat_range_note(loaded.path)
        if note:
            log(note)
    return quantize_model(loaded.model, out, images, spec=spec, check=samples, run_data=run_data, force=force,
                          per_channel=per_channel, meta=meta, log=log)


def qat_range_note(path: Path) -> str | None:
    """A note when a --qat checkpoint was trained for another weight range than this CPU's int8 kernels take."""
    trained = (ckpt.load(path, "checkpoint").get("qat") or {}).get("weight_qmax")
    here = weight_qmax(needs_reduced_range())
    if trained is None or int(trained) == here:
        return None
    bits = {127: "8-bit", 64: "7-bit"}
    return (f"kdlab: note: this student was trained with --qat for {bits.get(int(trained), trained)} weights and "
            f"ONNX Runtime on this CPU takes {bits[here]} ones (reduce_range: VNNI or not), so the int8 model "
            f"differs from the one trained; quantize it on a CPU like the training one, or train with --qat here")
