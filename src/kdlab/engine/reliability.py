"""Reliability-diagram data: the last evaluation's calibration bins, saved in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILENAME = "reliability.json"


def save_bins(run_dir: str | Path, results: dict[str, Any], epoch: int) -> None:
    """Write {model name: bins} of the latest evaluation ('' is the single trained model)."""
    data = {"epoch": epoch, "models": {name: {"confidence": r.bin_confidence, "accuracy": r.bin_accuracy,
                                               "count": r.bin_count, "ece": r.ece}
                                        for name, r in results.items()}}
    Path(run_dir, FILENAME).write_text(json.dumps(data) + "\n")


def load_bins(run_dir: str | Path, model: str = "") -> tuple[list[float], list[float], list[int]]:
    """(mean confidence, accuracy, count) per bin of the last epoch of a run."""
    data = json.loads(Path(run_dir, FILENAME).read_text())
    bins = data["models"][model]
    return bins["confidence"], bins["accuracy"], bins["count"]
