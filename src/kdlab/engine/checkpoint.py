"""Checkpoints: atomic writes (temp file + rename), RNG state capture, and weights-only loading.

Nothing kdlab reads can run code: every file is opened with `torch.load(weights_only=True)`, which unpickles
only tensors and plain Python containers. kdlab's own checkpoints hold nothing else (RNG states are stored
as tensors, ints and tuples), so `torch.load("best.pt", weights_only=True)` works for users too.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.errors import KdlabError


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not isinstance(exc, OSError) and not _is_write_failure(exc):
            raise
        if _disk_full(exc, path.parent):
            raise KdlabError(f"the disk holding '{path.parent}' is full: writing {path.name} failed; free space "
                             f"there (or move the run) and continue with --resume") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise KdlabError(f"writing '{path}' failed ({reason}); check that folder's free space and permissions, "
                         f"then continue with --resume") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _is_write_failure(exc: BaseException) -> bool:
    """PyTorch's zip writer reports a failed write as RuntimeError "enforce fail at inline_container.cc"."""
    return "inline_container" in str(exc) or "file write failed" in str(exc)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    try:  # the zip writer does not say why: look at the free space
        stats = os.statvfs(folder)
        return stats.f_bavail * stats.f_frsize < 64 * 2**20
    except OSError:
        return False


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temp files of writes that a killed process left behind (`.last.pt.*.tmp`)."""
    for stale in Path(folder).glob(".*.pt.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


# kdlab 0.1 stored numpy's RNG state as an ndarray: allow just what rebuilds a plain array (no code runs).
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
_OLD_RNG_GLOBALS = [_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load(path: str | Path, role: str = "checkpoint") -> dict[str, Any]:
    """Load a kdlab checkpoint (or a plain state_dict file) on the CPU, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{role} file '{path}' does not exist; check the path (runs keep last.pt and best.pt)")
    try:
        with torch.serialization.safe_globals(_OLD_RNG_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise KdlabError(f"{role} file '{path}' holds Python code references ({found.group(1)}), not just "
                             f"weights; kdlab loads weights only, so that no code runs from a file: use a "
                             f"checkpoint of tensors (a state_dict)") from None
        raise KdlabError(f"{role} file '{path}' cannot be read (UnpicklingError); it is corrupt or not a "
                         f"PyTorch file: use another checkpoint") from None
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise KdlabError(f"{role} file '{path}' cannot be read ({type(exc).__name__}); it is corrupt or not "
                         f"a PyTorch file: use another checkpoint") from None
    if not isinstance(obj, dict):
        raise KdlabError(f"{role} file '{path}' does not hold a state dict or kdlab checkpoint")
    return obj


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in types `weights_only` loading accepts."""
    state = {"python": random.getstate(), "numpy": numpy_state_to_plain(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def numpy_state_to_plain(state: tuple) -> tuple:
    """np.random.get_state()'s (name, uint32 keys, pos, has_gauss, gauss) with the keys as an int64 tensor."""
    name, keys, pos, has_gauss, gauss = state
    return (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))


def numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), pos, has_gauss, gauss)


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
