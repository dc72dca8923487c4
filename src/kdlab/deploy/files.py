"""Where exported files go: never over an existing file (unless --force), written under a temporary name in the
target's folder and renamed only once checked, so a failed or refused export leaves nothing behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kdlab.errors import KdlabError


def sidecar(out: str | Path) -> Path:
    """The preprocessing JSON beside an exported file: FILE + '.json'."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def claim_target(out: str | Path, force: bool = False, flag: str = "--out", can_force: bool = True) -> Path:
    """Check that `out` (and its JSON) may be written: not a folder, not an existing file unless `force`, in a
    folder that exists (or can be made) and is writable."""
    out = Path(out)
    if not out.name or out.is_dir():
        raise KdlabError(f"{flag} '{out}' is a folder; name the file to write, e.g. {out / 'model.onnx'}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise KdlabError(f"cannot write {flag} '{out}': '{parent}' is a file, not a folder; choose another {flag}")
    existing = [str(p) for p in (out, sidecar(out)) if p.exists()]
    if existing and not force:
        fix = f" or pass --force to replace {'it' if len(existing) == 1 else 'them'}" if can_force else ""
        raise KdlabError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; choose "
                         f"another {flag}{fix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdlabError(f"cannot create the folder of {flag} '{out}' ({exc.strerror}); choose a folder you can "
                         f"write to") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise KdlabError(f"{flag} '{out}' is in a folder that is not writable; choose a folder you can write to")
    return out


def temporary(out: Path) -> Path:
    """A fresh temporary path beside `out`, with its suffix (exporters look at it)."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=f".tmp{out.suffix}")
    os.close(fd)
    os.unlink(name)
    return Path(name)


def remove(path: Path | None) -> None:
    if path is None:
        return
    for p in (path, path.with_name(path.name + ".data")):  # ONNX external data, if an exporter wrote it
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def publish(tmp: Path, out: Path, meta: dict[str, Any]) -> None:
    """Move the checked file to `out` and write its JSON beside it (both by rename)."""
    meta_tmp = temporary(sidecar(out))
    try:
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out)
        os.replace(meta_tmp, sidecar(out))
    except OSError as exc:
        remove(meta_tmp)
        raise KdlabError(f"writing '{out}' failed ({exc.strerror}); check that folder's free space and "
                         f"permissions") from None
