"""Run logging: one JSON line per epoch in metrics.jsonl, and the same epoch to the run's trackers
(TensorBoard by default; MLflow, W&B: kdlab.engine.trackers)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kdlab.engine.trackers import open_trackers


class RunLogger:
    """Writes metrics of a run directory; only the process that owns the directory (rank 0) creates one."""

    def __init__(self, run_dir: str | Path, trackers: list[str] | None = None, config: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.trackers = open_trackers(self.run_dir, list(trackers or []), config or {})

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop lines of epochs after the checkpoint (a killed run may have logged one more, or
        torn its last line); the file is replaced atomically, so a kill here loses nothing."""
        if not self.metrics_path.exists():
            return
        keep = [json.dumps(r) for r in read_metrics(self.run_dir) if r.get("epoch", 0) <= epoch]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.metrics_path)

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
        for tracker in self.trackers:
            tracker.log(record, int(record.get("epoch", 0)))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs' lines of metrics.jsonl; a line a killed process left torn (not JSON) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
