"""`kdlab export RUN|CKPT --format onnx|torchscript|pt2 --out FILE`: a batch-dynamic export, checked before
it is written, with the model's preprocessing in FILE.json.

    kdlab.deploy.export.export_model(my_module, "mine.onnx", input_shape=(3, 32, 32), mean=..., std=...)

ONNX goes through torch.onnx.export(dynamo=True), the torch.export-based exporter (the legacy TorchScript-based
one only when that fails, said in the JSON); TorchScript through torch.jit.trace; PT2 through torch.export.
The batch dimension is dynamic in all three (checked at two batch sizes). The file is written under a temporary
name, run on N images (verify.py) and renamed only when its logits match PyTorch's within the tolerance, and,
with test data, its top-1 within 0.1 points: a refused export leaves nothing behind, and an existing FILE is
replaced only with --force.
"""

from __future__ import annotations

import contextlib
import io
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import __version__
from kdlab.deploy import extras
from kdlab.deploy.files import claim_target, publish, remove, sidecar, temporary
from kdlab.deploy.load import load
from kdlab.deploy.runtimes import open_exported
from kdlab.deploy.samples import RunData, Samples, open_data, preprocess, random_samples, take
from kdlab.deploy.verify import TOP1_LIMIT, Check, Top1, check_logits, top1
from kdlab.errors import KdlabError

FORMATS = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "PT2 (torch.export)"}
EXAMPLE_BATCH = 2  # the batch the graph is traced with; the check runs other sizes
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def check_format(fmt: str) -> str:
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise KdlabError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return name


def user_spec(input_shape: Sequence[int], mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> dict[str, Any]:
    """The preprocessing of a model of your own: input (C, H, W), optional per-channel mean/std."""
    if len(input_shape) != 3:
        raise KdlabError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    if (mean is None) != (std is None):
        raise KdlabError("give both mean= and std= (per channel), or neither")
    return {"image_size": h if h == w else [h, w], "in_channels": c, "num_classes": None,
            "mean": list(map(float, mean)) if mean is not None else None,
            "std": list(map(float, std)) if std is not None else None, "layout": "NCHW",
            "pixels": "0..1, then (x - mean) / std per channel" if mean is not None else "as the model was trained",
            "data": None, "downscaled_from": None, "resize_mode": None, "class_names": None,
            "model": None, "kdlab_version": __version__}


# ------------------------------------------------------------------------------------------------ writing
def write(model: nn.Module, path: Path, fmt: str, example: torch.Tensor, opset: int | None = None,
          exporter: str = "dynamo") -> dict[str, Any]:
    """Write `model` to `path` in `fmt` with a dynamic batch; returns what the JSON records about how."""
    batch = torch.export.Dim("batch")
    if fmt == "onnx":
        return _write_onnx(model, path, example, batch, opset, exporter)
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")  # TorchScript is deprecated; trace warnings are checked below
                traced = torch.jit.trace(model, example, check_trace=False)
                torch.jit.save(traced, str(path))
        except Exception as exc:  # tracing fails in many ways on arbitrary modules
            raise _cannot(model, fmt, exc) from None
        return {"exporter": f"torch.jit.trace (torch {torch.__version__})"}
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    except Exception as exc:
        raise _cannot(model, fmt, exc) from None
    return {"exporter": f"torch.export (torch {torch.__version__})"}


def _write_onnx(model: nn.Module, path: Path, example: torch.Tensor, batch, opset: int | None,
                exporter: str) -> dict[str, Any]:
    onnx = extras.onnx("ONNX export")
    attempts = ["dynamo", "legacy"] if exporter == "dynamo" else ["legacy"]
    failure: Exception | None = None
    for kind in attempts:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    extras.onnx_exporter()
                    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                      optimize=True, external_data=False)  # one self-contained file
                else:
                    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=opset or 17,
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except KdlabError:
            raise
        except Exception as exc:  # the exporters raise many types
            failure = exc
            remove(path)
            continue
        graph = onnx.load(str(path), load_external_data=False)
        version = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
        name = ("torch.onnx.export(dynamo=True)" if kind == "dynamo"
                else "torch.onnx.export(dynamo=False), the legacy TorchScript-based exporter")
        return {"exporter": f"{name} (torch {torch.__version__}, onnx {onnx.__version__})", "opset": version}
    raise _cannot(model, "onnx", failure)


def _cannot(model: nn.Module, fmt: str, exc: BaseException | None) -> KdlabError:
    reason = str(exc).strip().splitlines()[0][:200] if exc is not None and str(exc).strip() else type(exc).__name__
    return KdlabError(f"cannot export {type(model).__name__} to {FORMATS[fmt]} ({reason}); try another --format")


# ------------------------------------------------------------------------------------------------ export
def export_model(model: nn.Module, out: str | Path, fmt: str = "onnx", *, spec: dict[str, Any] | None = None,
                 input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, samples: Samples | None = None, check: int = 8,
                 run_data: RunData | None = None, force: bool = False, opset: int | None = None,
                 exporter: str = "dynamo", meta: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export `model` to `out`, check it and write `out`.json; returns that JSON's content.

    The preprocessing is `spec` (as kdlab.deploy.load.input_spec), else the model's `kdlab_input` (models from
    kdlab.load_model), else `input_shape` (C, H, W) with optional `mean`/`std`. The check runs `check` images
    (`samples`, else random pixels); with `run_data` the whole test split's top-1 is compared too."""
    fmt = check_format(fmt)
    out = claim_target(out, force)
    if spec is None:
        spec = getattr(model, "kdlab_input", None)
    if spec is None:
        if input_shape is None:
            raise KdlabError("export_model needs the input the model takes: input_shape=(C, H, W) (and mean=, "
                             "std= when it expects normalised pixels)")
        spec = user_spec(input_shape, mean, std)
    if check < 1:
        raise KdlabError(f"--check must be at least 1 image, got {check}")
    samples = samples or random_samples(spec, check)
    model.eval()
    example = preprocess(random_samples(spec, EXAMPLE_BATCH, seed=1).pixels, spec)
    tmp = temporary(out)
    try:
        how = write(model, tmp, fmt, example, opset, exporter)
        run = open_exported(tmp, fmt)
        result = check_logits(run, model, samples, spec)
        if not result.ok:
            raise KdlabError(f"export refused, nothing written: {result.line()}; the exported model does not "
                             f"compute what the PyTorch model does (check its preprocessing and layers)")
        accuracy = top1(run, model, run_data, spec) if run_data is not None else None
        if accuracy is not None and abs(accuracy.difference) > TOP1_LIMIT:
            raise KdlabError(f"export refused, nothing written: {accuracy.line()}, beyond the {TOP1_LIMIT}-point "
                             f"limit")
        record = describe(out, fmt, spec, how, result, accuracy, meta)
        publish(tmp, out, record)
    finally:
        remove(tmp)
    if log is not None:
        size = out.stat().st_size / 2**20
        log(f"exported {spec.get('model') or type(model).__name__} to {out} ({FORMATS[fmt]}"
            f"{', opset ' + str(how['opset']) if how.get('opset') else ''}, dynamic batch, {size:.2f} MiB)")
        log(f"check: {result.line()}")
        if accuracy is not None:
            log(f"{accuracy.line()}; limit {TOP1_LIMIT} points")
        log(f"preprocessing: {sidecar(out)}")
    return record


def describe(out: Path, fmt: str, spec: dict[str, Any], how: dict[str, Any], result: Check,
             accuracy: Top1 | None, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON written beside an exported file: how to feed it, what it is, how it was checked."""
    return {
        "file": out.name, "format": fmt, **how, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_shape": ["batch", spec["in_channels"], *_hw(spec)], "dynamic_batch": True,
        "preprocessing": {k: spec.get(k) for k in ("mean", "std", "image_size", "in_channels", "layout", "pixels",
                                                    "downscaled_from", "resize_mode")},
        "num_classes": spec.get("num_classes"), "class_names": spec.get("class_names"), "data": spec.get("data"),
        "model": spec.get("model"), **(meta or {}), "check": result.as_dict(),
        "top1": accuracy.as_dict() if accuracy is not None else None,
        "kdlab_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
    }


def _hw(spec: dict[str, Any]) -> list[int]:
    size = spec["image_size"]
    return list(size) if isinstance(size, (list, tuple)) else [int(size), int(size)]


def prepare(path: str | Path, member: int | str | None = None, check: int = 8, data: str | None = None,
            data_root: str | None = None, log: Callable[[str], None] | None = None):
    """The model of a run/checkpoint, its preprocessing (class names filled from the data when it can be read),
    the check images (the run's test split, else random) and the run's data (None when it cannot be read)."""
    loaded = load(path, member)
    run_data, why = open_data(loaded.arch, loaded.config, loaded.path, data, data_root)
    spec = dict(loaded.input)
    if run_data is not None:
        spec["class_names"] = list(run_data.info.class_names) or None
        samples = take(run_data.test, check, run_data, "test images")
    else:
        samples = random_samples(spec, check)
        if log is not None:
            log(f"kdlab: note: {why}; checking on {check} random inputs (pass --data NAME --data-root DIR for "
                f"test images)")
    meta = {"source": str(loaded.path), "member": loaded.member, "arch": loaded.arch}
    return loaded, spec, samples, run_data, meta


def export_run(path: str | Path, out: str | Path, fmt: str = "onnx", member: int | str | None = None,
               check: int = 8, data: str | None = None, data_root: str | None = None, force: bool = False,
               opset: int | None = None, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """`kdlab export`: a run directory or kdlab checkpoint to `out` (checked; `out`.json beside it)."""
    fmt = check_format(fmt)
    claim_target(out, force)  # before any work: a refused target costs nothing
    if check < 1:
        raise KdlabError(f"--check must be at least 1 image, got {check}")
    loaded, spec, samples, run_data, meta = prepare(path, member, check, data, data_root, log)
    return export_model(loaded.model, out, fmt, spec=spec, samples=samples,
                        run_data=run_data if data is not None else None, force=force,
                        opset=opset, meta=meta, log=log)
