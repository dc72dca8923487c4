"""Device, mixed precision and memory-format choices shared by training and evaluation."""

from __future__ import annotations

import contextlib

import torch

SLOW_CPU_BF16 = ("bf16 on this CPU is emulated (no AVX512-BF16/AMX; oneDNN reports no bf16 support) and runs "
                 "several times slower than fp32; use --precision fp32 (with channels_last) here")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """Autocast context for bf16/fp16 (bf16 works on CPU too); a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only; disabled (a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def cpu_bf16_is_native() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 / AMX class hardware).

    Without it, bf16 autocast still works but is emulated: we measured resnet20 training about 10x slower
    than fp32 on an AVX2-only EPYC (benchmarks/README.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A one-line warning when the chosen precision is known to be slow on this device, else None."""
    if device.type == "cpu" and precision == "bf16" and not cpu_bf16_is_native():
        return SLOW_CPU_BF16
    return None
