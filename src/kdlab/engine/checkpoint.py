"""Checkpoints: atomic writes (temp file + rename), RNG state capture, and loading with clear errors."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import KdlabError


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str | Path, role: str = "checkpoint") -> dict[str, Any]:
    """Load a kdlab checkpoint (or a plain state_dict file) on the CPU, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{role} file '{path}' does not exist; check the path (runs keep last.pt and best.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise KdlabError(f"{role} file '{path}' cannot be read ({type(exc).__name__}); it is corrupt or not "
                         f"a PyTorch file: use another checkpoint") from None
    if not isinstance(obj, dict):
        raise KdlabError(f"{role} file '{path}' does not hold a state dict or kdlab checkpoint")
    return obj


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
