"""The run directory's layout and the decision whether --out may hold a new run (the only code that
knows which files kdlab writes there)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kdlab.errors import KdlabError

# What kdlab writes in a run directory (docs/architecture.md); anything else there is the user's.
RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "reliability.json",
                       "tb", "init", "calibration.png", "calibration.md", "trackers.json", "wandb",
                       "progress.log"})
PROGRESS_LOG = "progress.log"  # the training's progress lines and epoch lines (kdlab.engine.progress)


def prepare_run_dir(out: str | None, default_name: str, resume: bool) -> Path:
    """The run directory. A run is never overwritten (resume it, or choose another --out), nor is a folder
    kdlab did not make; a run killed before its first checkpoint holds nothing to keep and starts again."""
    run_dir = Path(out) if out else Path("runs") / default_name
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise KdlabError(f"--out '{run_dir}' is not a folder: '{parent}' is a file; choose another --out")
    has_run = any((run_dir / name).is_file() for name in ("last.pt", "init/last.pt"))
    if has_run and not resume:
        raise KdlabError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out")
    if not has_run:
        entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
        foreign = [name for name in entries if name not in RUN_FILES and not name.endswith(".tmp")]
        if foreign or "best.pt" in entries:
            shown = ", ".join((foreign or ["best.pt"])[:5]) + (" ..." if len(foreign) > 5 else "")
            raise KdlabError(f"--out '{run_dir}' is not empty and holds no kdlab run to resume (it has {shown}); "
                             f"choose a new or empty --out")
        if resume and not entries:
            raise KdlabError(f"nothing to resume in '{run_dir}' (no last.pt); drop --resume to start a new run")
        if entries:
            print(f"kdlab: '{run_dir}' holds a run stopped before its first checkpoint; starting it again",
                  file=sys.stderr)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdlabError(f"cannot create --out '{run_dir}' ({exc.strerror}); choose a folder you can write to") \
            from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise KdlabError(f"--out '{run_dir}' is not writable; choose a folder you can write to")
    return run_dir
