"""`kdlab demo`: a real distillation on the embedded digits data, end to end in a few minutes on a CPU.

Trains a teacher and a baseline student, distills the teacher into the same student with several
logit-based methods, and prints a table (params, top-1, ECE, gain over the baseline) and writes a plot
(accuracy bars and reliability diagrams) into the run directory. Every number is measured here; where a
method does not beat the baseline the table says so.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from kdlab import config as cfg
from kdlab.engine.reliability import load_bins
from kdlab.errors import KdlabError
from kdlab.experiments.report import mean_std
from kdlab.runner.distill import run_distill
from kdlab.runner.train import run_train

TEACHER = "resnet20"
STUDENT = "resnet8"
METHODS = ("kd", "dkd", "dist", "lskd", "srd")
SEEDS = (0, 1, 2)
TEACHER_EPOCHS = 30
EPOCHS = 40
# The teacher learns from the whole digits training split; the students see 10% of it (stratified, seeded),
# the data-scarce setting (as the training fractions of github.com/sseung0703/Knowledge_distillation_via_TF2.0)
# where a teacher's soft labels carry the most information.
FRACTION = 0.1


def _config(model: str, out: Path, seed: int, epochs: int, fraction: float | None, **extra: Any) -> cfg.Config:
    layer = {"model": model, "out": str(out), "seed": seed,
             "data": {"name": "digits", "fraction": fraction}, "optim": {"epochs": epochs}}
    return cfg.build([layer, extra])


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None, force: bool = False) -> dict[str, Any]:
    out = Path(out)
    epochs = epochs or EPOCHS
    if out.exists() and any(out.iterdir()):
        if not force:
            raise KdlabError(f"'{out}' already holds a demo; pass --force to replace it or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"kdlab demo on digits (8x8 grey, 10 classes): teacher {TEACHER} trained on the full training split "
          f"({TEACHER_EPOCHS} epochs); student {STUDENT} on {int(FRACTION * 100)}% of it ({epochs} epochs), alone "
          f"and distilled with {', '.join(METHODS)}; seeds {list(SEEDS)}", flush=True)

    teacher = run_train(_config(TEACHER, out / "teacher", 0, TEACHER_EPOCHS, None), quiet=True)
    _report_line("teacher", teacher, start)
    results: dict[str, list[dict[str, Any]]] = {"teacher": [teacher]}
    for seed in SEEDS:
        base = run_train(_config(STUDENT, out / f"baseline-s{seed}", seed, epochs, FRACTION), quiet=True)
        results.setdefault("baseline", []).append(base)
        _report_line(f"baseline (seed {seed})", base, start)
        for method in METHODS:
            summary = run_distill(_config(STUDENT, out / f"{method}-s{seed}", seed, epochs, FRACTION, method=method,
                                          teachers=[str(out / "teacher" / "best.pt")]), quiet=True)
            results.setdefault(method, []).append(summary)
            _report_line(f"{method} (seed {seed})", summary, start)

    rows = summarise(results)
    table = format_table(rows)
    print("\n" + table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_path = plot(results, rows, out / "demo.png")
    print(f"\nplot: {plot_path}\nruns: {out}/  ({time.perf_counter() - start:.0f} s)")
    return {"rows": rows, "plot": str(plot_path)}


def _report_line(name: str, summary: dict[str, Any], start: float) -> None:
    last = summary["last"]
    print(f"  {name:<20} top-1 {last['test_top1']:6.2f}%  ECE {last['test_ece']:5.2f}%  "
          f"[{time.perf_counter() - start:5.0f} s]", flush=True)


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean ± std of last-epoch top-1 and ECE per row; gain against the baseline's mean."""
    rows = []
    for name, runs in results.items():
        top1, top1_std = mean_std(r["last"]["test_top1"] for r in runs)
        ece, ece_std = mean_std(r["last"]["test_ece"] for r in runs)
        rows.append({"name": name, "model": runs[0]["arch"]["model"], "params": runs[0]["params"], "runs": len(runs),
                     "top1": top1, "top1_std": top1_std, "ece": ece, "ece_std": ece_std})
    base = next(r for r in rows if r["name"] == "baseline")
    for row in rows:
        row["gain"] = None if row["name"] in ("teacher", "baseline") else row["top1"] - base["top1"]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | model | params | runs | top-1 % (last epoch) | ECE % | gain over baseline |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["gain"] is None:
            verdict = "—"
        elif r["gain"] > r["top1_std"] / 2 and r["gain"] > 0:
            verdict = f"{r['gain']:+.2f} (beats the baseline)"
        elif r["gain"] >= -0.25:
            verdict = f"{r['gain']:+.2f} (matches the baseline)"
        else:
            verdict = f"{r['gain']:+.2f} (did NOT beat the baseline)"
        lines.append(f"| {r['name']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['runs']} | "
                     f"{r['top1']:.2f} ± {r['top1_std']:.2f} | {r['ece']:.2f} ± {r['ece_std']:.2f} | {verdict} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], rows: list[dict[str, Any]], path: Path) -> Path:
    """A figure a KD paper would print: each method's gain over the baseline (sorted, seeds as dots), every run's
    top-1 with the teacher and baseline as reference lines, and the reliability diagrams of the first seeds."""
    from kdlab.experiments.plots import draw_gains, draw_reliability, pyplot

    plt = pyplot()
    base = next(r for r in rows if r["name"] == "baseline")
    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    methods = [r for r in rows if r["gain"] is not None]
    ncols = 4
    nrel = -(-len(rows) // ncols)
    fig = plt.figure(figsize=(12, 3.6 + 2.7 * nrel))
    grid = fig.add_gridspec(1 + nrel, ncols, height_ratios=[1.35] + [1.0] * nrel)
    gains = fig.add_subplot(grid[0, :2])
    draw_gains(gains, [r["name"] for r in methods],
               [[run["last"]["test_top1"] - base["top1"] for run in results[r["name"]]] for r in methods],
               "gain in test top-1 over the student alone (points)")
    gains.set_title(f"gain over the baseline ({base['top1']:.2f}%; mean ± std over seeds, dots: seeds)", fontsize=9)
    accuracy = fig.add_subplot(grid[0, 2:])
    for x, r in enumerate(rows):
        values = [run["last"]["test_top1"] for run in results[r["name"]]]
        accuracy.bar(x, r["top1"], color="tab:blue" if r["gain"] is not None else "0.6", alpha=0.6)
        accuracy.plot([x] * len(values), values, "k.", ms=4)
    accuracy.axhline(base["top1"], color="0.3", ls=":", lw=1, label="baseline mean")
    if teacher is not None:
        accuracy.axhline(teacher["top1"], color="tab:purple", ls="--", lw=1, label="teacher")
    accuracy.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    accuracy.set_ylim(0, 100)
    accuracy.set_ylabel("test top-1 (%), last epoch")
    accuracy.set_title("every run (bars: mean, dots: seeds)", fontsize=9)
    accuracy.legend(fontsize=7, loc="lower right")
    axes = [fig.add_subplot(grid[1 + i // ncols, i % ncols]) for i in range(len(rows))]
    for ax, row in zip(axes, rows):
        draw_reliability(ax, *load_bins(results[row["name"]][0]["run_dir"]),
                         f"{row['name']} (seed 0): ECE {results[row['name']][0]['last']['test_ece']:.2f}%")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=6)
    fig.suptitle("kdlab demo: resnet20 → resnet8 on 10% of the 8x8 digits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
