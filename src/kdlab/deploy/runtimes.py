"""Run an exported file as a function of a batch: ONNX Runtime for .onnx, torch.jit.load for TorchScript,
torch.export.load for PT2 (files kdlab itself just wrote, or the user's exports)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdlab.deploy import extras
from kdlab.errors import KdlabError

Runner = Callable[[torch.Tensor], torch.Tensor]


def onnx_session(path: str | Path, threads: int | None = None):
    ort = extras.onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise KdlabError(f"ONNX Runtime cannot open '{path}' ({str(exc).splitlines()[0][:200]}); re-export it") \
            from None


def open_exported(path: str | Path, fmt: str, threads: int | None = None) -> Runner:
    """A function logits = f(batch) running the exported file at `path` (format onnx, torchscript or pt2)."""
    if fmt == "onnx":
        session = onnx_session(path, threads)
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            array = np.ascontiguousarray(x.detach().float().cpu().numpy())
            return torch.from_numpy(session.run(None, {name: array})[0])

        return run_onnx
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    elif fmt == "pt2":
        module = torch.export.load(str(path)).module()
    else:
        raise KdlabError(f"unknown format '{fmt}'; choose onnx, torchscript or pt2")

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.float()).float()

    return run_torch
