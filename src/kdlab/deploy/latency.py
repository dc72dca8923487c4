"""Latency measured as a benchmark: warm-up calls, then timed repeats of one call each; the median (p50), the
90th percentile (p90) and the fastest call are reported with the thread count. Used by `kdlab profile` and by
benchmarks/deploy_latency.py.

Backends: PyTorch eager fp32 (NCHW), eager fp32 channels_last, eager bf16 autocast (only where the CPU runs bf16
natively: kdlab.engine.precision.cpu_bf16_is_native), ONNX Runtime fp32 and ONNX Runtime int8 (QDQ).
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdlab.deploy.runtimes import Runner, open_exported
from kdlab.engine.precision import cpu_bf16_is_native

BACKENDS = ("eager fp32", "channels_last fp32", "eager bf16", "onnxruntime fp32", "onnxruntime int8")


@dataclass
class Timing:
    batch: int
    p50_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    warmup: int

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.p50_ms if self.p50_ms > 0 else float("nan")


def measure(fn: Callable[[torch.Tensor], object], x: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Timing:
    """Time `fn(x)`: `warmup` untimed calls, then `repeats` timed calls (perf_counter around each)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000.0)
    values = np.asarray(times)
    return Timing(int(x.shape[0]), float(np.percentile(values, 50)), float(np.percentile(values, 90)),
                  float(values.min()), repeats, warmup)


def eager(model: nn.Module, channels_last: bool = False, bf16: bool = False) -> Runner:
    """PyTorch eager inference (inference_mode), optionally channels_last and/or bf16 autocast."""
    model = copy.deepcopy(model).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x)

    return run


def backends(model: nn.Module, fp32_onnx: str | Path | None = None, int8_onnx: str | Path | None = None,
             threads: int | None = None, bf16: bool | None = None) -> dict[str, Runner]:
    """The runners to time, by backend name; bf16 only where native (or when `bf16` forces it)."""
    runners: dict[str, Runner] = {"eager fp32": eager(model), "channels_last fp32": eager(model, channels_last=True)}
    if cpu_bf16_is_native() if bf16 is None else bf16:
        runners["eager bf16"] = eager(model, bf16=True)
    if fp32_onnx is not None:
        runners["onnxruntime fp32"] = open_exported(fp32_onnx, "onnx", threads)
    if int8_onnx is not None:
        runners["onnxruntime int8"] = open_exported(int8_onnx, "onnx", threads)
    return runners


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> str:
    """The line that states where and how latencies were measured."""
    return (f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), threads: {threads} (torch intra-op and ONNX "
            f"Runtime intra-op), bf16 native: {'yes' if cpu_bf16_is_native() else 'no'}, torch {torch.__version__}")
