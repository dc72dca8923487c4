"""`kdlab profile RUNS...`: teachers and students side by side, as deployed on this machine.

For every model of the runs (each run's model, a mutual cohort's students, and the teachers named in the runs'
config.yaml): parameters; multiply-accumulates per image, counted by torch.utils.flop_counter.FlopCounterMode
on one image (it counts 2 FLOPs per multiply-accumulate of convolutions and matrix products, so MACs = FLOPs / 2;
BatchNorm, activations and pooling are not counted); the checkpoint's size on disk (training state included)
and the sizes of its fp32 ONNX export and int8 model; latency p50/p90 at batch 1 and batch 64 per backend
(kdlab.deploy.latency); top-1 and ECE of the checkpoint's epoch from the run (summary.json and metrics.jsonl, read
by kdlab.experiments.report); and, where the run's data can be read, the int8 model's test top-1 beside the fp32
model's, measured here.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlab.deploy import latency
from kdlab.deploy.export import export_model
from kdlab.deploy.load import load
from kdlab.deploy.pareto import pareto_plot
from kdlab.deploy.quantize import quantize_model
from kdlab.deploy.samples import open_data, preprocess, random_samples, take
from kdlab.deploy.verify import top1
from kdlab.errors import KdlabError
from kdlab.experiments.report import RunRecord, find_runs

BATCHES = (1, 64)
FORMATS = ("markdown", "csv")


@dataclass
class Entry:
    """One model to profile: its checkpoint, the run it belongs to and its role there."""

    path: Path
    role: str  # teacher | student | baseline | mutual
    record: RunRecord | None
    member: str | None = None
    label: str = ""


@dataclass
class Profile:
    entry: Entry
    model: str
    params: int
    macs: int
    checkpoint_bytes: int
    onnx_bytes: int
    int8_bytes: int
    top1: float | None
    ece: float | None
    int8_top1: float | None = None
    fp32_top1_measured: float | None = None
    calibration: str = ""
    timings: dict[str, dict[int, latency.Timing]] = field(default_factory=dict)


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per image (FlopCounterMode's FLOPs / 2, divided by the batch)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops() // 2 // max(1, x.shape[0]))


def collect(paths: Sequence[str | Path]) -> list[Entry]:
    """The models of the runs under `paths` and their teachers (each checkpoint once)."""
    records = find_runs(paths).runs
    entries: dict[tuple[Path, str | None], Entry] = {}

    def add(entry: Entry) -> None:
        key = (entry.path.resolve(), entry.member)
        if key not in entries or entry.role == "teacher":
            entries[key] = entry

    for record in records:
        teachers = [Path(str(t)) for t in (record.config.get("teachers") or [])]
        role = "mutual" if record.member else ("student" if teachers else "baseline")
        add(Entry(record.run_dir / "last.pt", role, record, record.member or None))
        for index, teacher in enumerate(teachers):
            linked = record.teacher if index == 0 else None
            add(Entry(teacher, "teacher", linked))
    # a run that is both trained alone and some run's teacher is listed once, as a teacher
    chosen = [e for e in entries.values() if not (e.role == "baseline" and any(
        t.role == "teacher" and t.path.parent.resolve() == e.path.parent.resolve() for t in entries.values()))]
    for entry in chosen:
        where = entry.record.run_dir if entry.record is not None else entry.path.parent
        entry.label = f"{where.name}{'/' + entry.member if entry.member else ''}"
    order = {"teacher": 0, "baseline": 1, "student": 2, "mutual": 3}
    return sorted(chosen, key=lambda e: (order[e.role], str(e.path)))


def _run_metrics(entry: Entry) -> tuple[float | None, float | None]:
    """Top-1 and ECE of the profiled checkpoint's epoch: best.pt -> the best epoch, else the last."""
    if entry.record is None:
        return None, None
    line = entry.record.at("best" if entry.path.name == "best.pt" else "last")
    values = [line.get("test_top1"), line.get("test_ece")]
    return tuple(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values)  # type: ignore


def profile_entry(entry: Entry, data: str | None, data_root: str | None, calibration: int, warmup: int,
                  repeats: int, threads: int, batches: Sequence[int], work: Path,
                  log: Callable[[str], None] | None) -> Profile:
    loaded = load(entry.path, entry.member)
    model, spec = loaded.model, loaded.input
    run_data, why = open_data(loaded.arch, loaded.config, loaded.path, data, data_root)
    check = take(run_data.test, 32, run_data, "test images") if run_data is not None else random_samples(spec, 32)
    if run_data is not None:
        calib = take(run_data.train, calibration, run_data, "training images (unaugmented)")
    else:
        calib = random_samples(spec, calibration, seed=2)
        if log is not None:
            log(f"kdlab: note: {entry.label}: {why}; int8 calibrated on random inputs (its latency is real, its "
                f"accuracy unknown)")
    stem = f"{len(list(work.iterdir()))}"
    fp32, int8 = work / f"{stem}.onnx", work / f"{stem}.int8.onnx"
    export_model(model, fp32, "onnx", spec=spec, samples=check)
    quantize_model(model, int8, calib, spec=spec, check=check)
    top1_run, ece = _run_metrics(entry)
    result = Profile(entry, str(loaded.arch["model"]), sum(p.numel() for p in model.parameters()),
                     count_macs(model, preprocess(random_samples(spec, 1).pixels, spec)), loaded.path.stat().st_size,
                     fp32.stat().st_size, int8.stat().st_size, top1_run, ece, calibration=calib.source)
    runners = latency.backends(model, fp32, int8, threads)
    if run_data is not None:
        measured = top1(runners["onnxruntime int8"], runners["onnxruntime fp32"], run_data, spec)
        result.int8_top1, result.fp32_top1_measured = measured.exported, measured.reference
    for name, run in runners.items():
        result.timings[name] = {}
        for batch in batches:
            x = preprocess(random_samples(spec, batch, seed=3).pixels, spec)
            result.timings[name][batch] = latency.measure(run, x, warmup, repeats)
    if log is not None:
        log(f"kdlab: profiled {entry.label} ({result.model})")
    return result


def measure_all(paths: Sequence[str | Path], data: str | None = None, data_root: str | None = None,
                calibration: int = 256, warmup: int = 10, repeats: int = 50, threads: int | None = None,
                batches: Sequence[int] = BATCHES, log: Callable[[str], None] | None = None
                ) -> tuple[list[Profile], str]:
    """Profile every model of the runs under `paths`; returns the results and the line stating how."""
    if repeats < 1 or warmup < 0 or calibration < 1:
        raise KdlabError("--repeats and --calibration must be at least 1 and --warmup at least 0")
    entries = collect(paths)
    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="kdlab-profile-") as work:
            results = [profile_entry(e, data, data_root, calibration, warmup, repeats, threads, batches,
                                     Path(work), log) for e in entries]
    finally:
        torch.set_num_threads(previous)
    header = (f"{latency.environment(threads)}; latency in ms per batch, p50 / p90 of {repeats} timed calls after "
              f"{warmup} warm-up calls")
    return results, header


def profile(paths: Sequence[str | Path], data: str | None = None, data_root: str | None = None,
            fmt: str = "markdown", plot: str | Path | None = None, calibration: int = 256, warmup: int = 10,
            repeats: int = 50, threads: int | None = None, batches: Sequence[int] = BATCHES,
            log: Callable[[str], None] | None = None) -> str:
    """`kdlab profile`: the tables (markdown or csv) for the runs under `paths`; `plot` writes the Pareto plot."""
    fmt = "markdown" if str(fmt).lower() == "md" else str(fmt).lower()
    if fmt not in FORMATS:
        raise KdlabError(f"unknown --format '{fmt}'; choose markdown or csv")
    if plot is not None and Path(plot).exists():
        raise KdlabError(f"--plot '{plot}' already exists; choose another file")
    results, header = measure_all(paths, data, data_root, calibration, warmup, repeats, threads, batches, log)
    text = markdown(results, header, batches) if fmt == "markdown" else to_csv(results, threads or 0, batches)
    if plot is not None:
        pareto_plot(results, plot)
    return text


# ------------------------------------------------------------------------------------------------ tables
def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f}"


def _si(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def model_rows(results: list[Profile]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        delta = (r.int8_top1 - r.fp32_top1_measured if r.int8_top1 is not None
                 and r.fp32_top1_measured is not None else None)
        rows.append({"run": r.entry.label, "role": r.entry.role, "model": r.model, "checkpoint": str(r.entry.path),
                     "params": r.params, "macs_per_image": r.macs, "checkpoint_mib": r.checkpoint_bytes / 2**20,
                     "onnx_fp32_mib": r.onnx_bytes / 2**20, "onnx_int8_mib": r.int8_bytes / 2**20,
                     "top1": r.top1, "ece": r.ece, "int8_top1": r.int8_top1, "fp32_top1_measured":
                     r.fp32_top1_measured, "int8_delta": delta})
    return rows


def markdown(results: list[Profile], header: str, batches: Sequence[int] = BATCHES) -> str:
    lines = [header, "", "| run | role | model | params | MACs/image | checkpoint MiB | ONNX fp32 MiB | int8 MiB | "
             "top-1 % (run) | ECE % (run) | int8 top-1 % (Δ vs fp32, measured) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in model_rows(results):
        int8 = ("—" if row["int8_top1"] is None else f"{row['int8_top1']:.2f} ({row['int8_delta']:+.2f})")
        lines.append(f"| {row['run']} | {row['role']} | {row['model']} | {_si(row['params'])} | "
                     f"{_si(row['macs_per_image'])} | {row['checkpoint_mib']:.2f} | {row['onnx_fp32_mib']:.2f} | "
                     f"{row['onnx_int8_mib']:.2f} | {_num(row['top1'])} | {_num(row['ece'])} | {int8} |")
    cols = " | ".join(f"batch {b} p50 / p90" for b in batches)
    lines += ["", f"| run | backend | {cols} | images/s (batch {batches[-1]}, p50) |",
              "|---|---|" + "---:|" * (len(batches) + 1)]
    for r in results:
        for name, by_batch in r.timings.items():
            cells = " | ".join(f"{by_batch[b].p50_ms:.3f} / {by_batch[b].p90_ms:.3f}" for b in batches)
            lines.append(f"| {r.entry.label} | {name} | {cells} | {by_batch[batches[-1]].images_per_second:.0f} |")
    lines += ["", "MACs: multiply-accumulates of convolutions and matrix products per image "
              "(torch.utils.flop_counter FLOPs / 2). Checkpoint size includes the training state."]
    return "\n".join(lines) + "\n"


def to_csv(results: list[Profile], threads: int, batches: Sequence[int] = BATCHES) -> str:
    buffer = io.StringIO()
    writer = None
    for row, r in zip(model_rows(results), results):
        for name, by_batch in r.timings.items():
            for batch in batches:
                t = by_batch[batch]
                line = {**row, "backend": name, "batch": batch, "p50_ms": t.p50_ms, "p90_ms": t.p90_ms,
                        "min_ms": t.min_ms, "repeats": t.repeats, "warmup": t.warmup, "threads": threads}
                if writer is None:
                    writer = csv.DictWriter(buffer, fieldnames=list(line), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(line)
    return buffer.getvalue()
