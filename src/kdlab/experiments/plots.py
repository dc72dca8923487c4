"""PNG plots for `kdlab report --plots DIR` and `kdlab demo` (matplotlib, Agg backend: no display needed).

Per teacher→student column of a report: test top-1 per epoch for each method (mean over seeds, min-max
band), accuracy against ECE at the last epoch (one point per run), and reliability diagrams of the last
epoch (the first seed of each method).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlab.engine.reliability import load_bins
from kdlab.experiments.report import TEACHER

if TYPE_CHECKING:
    from kdlab.experiments.report import Column, Table


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (plots are files; this also works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^vP*Xh<>p"
MAX_PANELS_PER_ROW = 6


def style(index: int) -> tuple[Any, str]:
    """A colour and marker per series that stay distinct for 20+ methods (tab20 colours x 11 markers)."""
    import matplotlib

    return matplotlib.colormaps["tab20"](index % 20), MARKERS[index % len(MARKERS)]


def outside_legend(ax: Any, count: int) -> None:
    """The legend to the right of the axes (never over the data), in two columns for long lists."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              ncol=1 if count <= 16 else 2, frameon=False)


def draw_reliability(ax: Any, confidence: list[float], accuracy: list[float], count: list[int], title: str) -> None:
    """One reliability diagram: accuracy per confidence bin (empty bins drawn at 0) against the diagonal."""
    bins = len(confidence)
    centers = [(i + 0.5) / bins for i in range(bins)]
    ax.bar(centers, [a if c else 0 for a, c in zip(accuracy, count)], width=1 / bins, edgecolor="k",
           color="tab:orange", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def slug(column: Column) -> str:
    """File-name stem of a report column, e.g. 'cifar100-f0.25_resnet56-resnet20'."""
    fraction = "" if column.fraction >= 1 else f"-f{column.fraction:g}"
    pair = f"{column.teacher}-{column.student}" if column.teacher else column.student
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{column.data}{fraction}_{pair}")


def report_plots(table: Table, out_dir: Path) -> list[Path]:
    """Training curves, accuracy-vs-ECE and reliability diagrams for every column; returns the files."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for column in table.columns:
        rows = [(label, table.cells[(column, label)]) for label in table.rows if (column, label) in table.cells]
        stem = out_dir / slug(column)
        title = f"{column.data}: {column.teacher} → {column.student}" if column.teacher else column.student
        if column.fraction < 1:
            title += f" ({column.fraction:.0%} data)"
        written.append(_curves(plt, rows, title, stem.with_name(stem.name + "-curves.png"), TEACHER))
        written.append(_scatter(plt, rows, title, stem.with_name(stem.name + "-acc-ece.png")))
        path = _reliability(plt, rows, title, stem.with_name(stem.name + "-reliability.png"))
        if path is not None:
            written.append(path)
    return written


def _curves(plt: Any, rows: list, title: str, path: Path, teacher_label: str) -> Path:
    fig, ax = plt.subplots(figsize=(7.0 if len(rows) <= 16 else 8.6, 4.4))
    for index, (label, cell) in enumerate(rows):
        color, marker = style(index)
        if label == teacher_label:
            mean = sum(r.at("last")["test_top1"] for r in cell.runs) / len(cell.runs)
            ax.axhline(mean, color=color, ls="--", lw=1, label=f"{label} (last epoch)")
            continue
        by_epoch: dict[int, list[float]] = {}
        for run in cell.runs:
            for record in run.metrics:
                if isinstance(record.get("test_top1"), (int, float)):
                    by_epoch.setdefault(int(record["epoch"]), []).append(float(record["test_top1"]))
        epochs = sorted(by_epoch)
        ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], color=color, marker=marker,
                markersize=3, lw=1.2, label=f"{label} [n={len(cell.runs)}]")
        if len(cell.runs) > 1:
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                            color=color, alpha=0.15, lw=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish_top1_axes(plt, fig, ax, "epoch", f"{title}: test top-1 per epoch (mean, min-max over seeds)",
                             len(rows), path)


def _finish_top1_axes(plt: Any, fig: Any, ax: Any, xlabel: str, title: str, entries: int, path: Path) -> Path:
    """Labels (top-1 on the y axis), title, grid and the legend beside the axes; then save."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    outside_legend(ax, entries)
    return _save(plt, fig, path)


def _scatter(plt: Any, rows: list, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0 if len(rows) <= 16 else 8.6, 4.4))
    for index, (label, cell) in enumerate(rows):
        points = [(r.at("last").get("test_ece"), r.at("last").get("test_top1")) for r in cell.runs]
        points = [(x, y) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))]
        if points:
            color, marker = style(index)
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, marker=marker, label=label,
                       s=28)
            x, y = sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points)
            ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6, color="0.25")
    return _finish_top1_axes(plt, fig, ax, "ECE (%) — lower is better",
                             f"{title}: accuracy vs calibration, last epoch (one point per run)", len(rows), path)


def _reliability(plt: Any, rows: list, title: str, path: Path) -> Path | None:
    panels = []
    for label, cell in rows:
        run = cell.runs[0]
        try:
            confidence, accuracy, count = load_bins(run.run_dir, run.member)
        except (OSError, KeyError, ValueError):
            continue  # a run from before reliability.json existed
        panels.append((label, run, confidence, accuracy, count))
    if not panels:
        return None
    ncols = min(len(panels), MAX_PANELS_PER_ROW)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (label, run, confidence, accuracy, count) in zip(flat, panels):
        ece = run.at("last").get("test_ece")
        name = f"{label} (seed {run.seed})"
        draw_reliability(ax, confidence, accuracy, count, f"{name}\nECE {ece:.2f}%" if ece is not None else name)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=6)
    fig.suptitle(f"{title}: reliability, last epoch", fontsize=9)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
