"""PNG plots for `kdlab report --plots DIR` and `kdlab demo` (matplotlib, Agg backend: no display needed).

Per teacher→student column of a report: test top-1 per epoch for each method (mean over seeds, min-max
band), accuracy against ECE at the last epoch (one point per run), each method's gain over the baseline
(sorted bars with the seeds' spread), and reliability diagrams of the last epoch (the first seed of each method,
with the share of samples per bin).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdlab.engine.reliability import load_bins
from kdlab.experiments.labels import annotate_apart
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


MIN_BIN = 5  # reliability bins with fewer samples are drawn faded and hatched: their accuracy is mostly noise


def draw_reliability(ax: Any, confidence: list[float], accuracy: list[float], count: list[int], title: str,
                     other_seeds: list[tuple[list[float], list[int]]] = ()) -> None:
    """One reliability diagram: accuracy per confidence bin against the diagonal, with the share of the test
    samples in each bin as grey bars behind; bins of fewer than MIN_BIN samples are faded and hatched (a bin of
    one sample drawn as a full bar would mislead). Empty bins draw nothing. `other_seeds` ((accuracy, count) of
    the same bins for each further run) are drawn as dots on their bins of at least MIN_BIN samples."""
    bins = len(confidence)
    total = max(1, sum(count))
    centers = [(i + 0.5) / bins for i in range(bins)]
    solid = [(x, a) for x, a, c in zip(centers, accuracy, count) if c >= MIN_BIN]
    sparse = [(x, a) for x, a, c in zip(centers, accuracy, count) if 0 < c < MIN_BIN]
    if solid:
        ax.bar([x for x, _ in solid], [a for _, a in solid], width=1 / bins, edgecolor="k", color="tab:orange",
               alpha=0.85, label="accuracy")
    if sparse:
        ax.bar([x for x, _ in sparse], [a for _, a in sparse], width=1 / bins, edgecolor="0.4", color="tab:orange",
               alpha=0.25, hatch="//", label=f"accuracy, < {MIN_BIN} samples")
    ax.bar(centers, [c / total for c in count], width=0.3 / bins, color="0.25", zorder=3,
           label="share of samples")  # narrow, on top: visible inside the accuracy bars
    for index, (acc, cnt) in enumerate(other_seeds):
        dots = [(x, a) for x, a, c in zip(centers, acc, cnt) if c >= MIN_BIN]
        ax.scatter([x for x, _ in dots], [a for _, a in dots], s=9, color="white", edgecolors="k", linewidths=0.7,
                   zorder=4, label="other runs' accuracy" if index == 0 else None)
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
        for path in (_gains(plt, rows, title, stem.with_name(stem.name + "-gains.png")),
                     _reliability(plt, rows, title, stem.with_name(stem.name + "-reliability.png"))):
            if path is not None:
                written.append(path)
    return written


SMALL_MULTIPLES = 8  # more methods than this: one small panel per method instead of one crowded plot


def _top1_by_epoch(cell: Any) -> dict[int, list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for run in cell.runs:
        for record in run.metrics:
            if isinstance(record.get("test_top1"), (int, float)):
                by_epoch.setdefault(int(record["epoch"]), []).append(float(record["test_top1"]))
    return by_epoch


def _band(ax: Any, cell: Any, color: Any, label: str, marker: str | None = None) -> None:
    """Mean test top-1 per epoch over the cell's runs, with the min-max band when there are several."""
    by_epoch = _top1_by_epoch(cell)
    epochs = sorted(by_epoch)
    ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], color=color, marker=marker,
            markersize=3, lw=1.2, label=label)
    if len(cell.runs) > 1:
        ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                        color=color, alpha=0.15, lw=0)


def _small_multiples(plt: Any, rows: list, title: str, path: Path, teacher_label: str) -> Path:
    """One small panel per method (its curve over the baseline's, same axes), for columns with many methods."""
    baseline = next((cell for label, cell in rows if label.startswith("baseline")), None)
    teacher = next((cell for label, cell in rows if label == teacher_label), None)
    methods = [(label, cell) for label, cell in rows if label != teacher_label and cell is not baseline]
    ncols = 5
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.1 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (label, cell) in zip(flat, methods):
        if baseline is not None:
            _band(ax, baseline, "0.55", "baseline")
        if teacher is not None:
            ax.axhline(sum(r.at("last")["test_top1"] for r in teacher.runs) / len(teacher.runs), color="tab:purple",
                       ls="--", lw=0.8, label="teacher")
        _band(ax, cell, "tab:blue", "the panel's method")
        ax.set_title(f"{label} [n={cell.seeds}]", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for index, ax in enumerate(flat[len(methods):], len(methods)):
        ax.set_visible(False)
        if index >= ncols:  # the panel above an empty slot is the lowest of its column: it names the x axis
            flat[index - ncols].tick_params(labelbottom=True)
            flat[index - ncols].set_xlabel("epoch", fontsize=8)
    for row in axes:
        row[0].set_ylabel("test top-1 (%)", fontsize=8)
    for ax in axes[-1]:
        if ax.get_visible():
            ax.set_xlabel("epoch", fontsize=8)
    # One legend for all panels, above them (inside a panel it would cover curves).
    handles, labels = flat[0].get_legend_handles_labels()
    inch = 1 / fig.get_figheight()  # figure fraction of an inch: the title, then the legend, then the panels
    fig.suptitle(f"{title}: test top-1 per epoch, each method (blue) against the baseline (grey); mean, min-max "
                 f"over seeds", fontsize=9, y=1 - 0.1 * inch, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.65 * inch))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.33 * inch))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curves(plt: Any, rows: list, title: str, path: Path, teacher_label: str) -> Path:
    if len(rows) > SMALL_MULTIPLES + 2:  # + teacher and baseline
        return _small_multiples(plt, rows, title, path, teacher_label)
    fig, ax = plt.subplots(figsize=(7.0 if len(rows) <= 16 else 8.6, 4.4))
    for index, (label, cell) in enumerate(rows):
        color, marker = style(index)
        if label == teacher_label:
            mean = sum(r.at("last")["test_top1"] for r in cell.runs) / len(cell.runs)
            ax.axhline(mean, color=color, ls="--", lw=1, label=f"{label} (last epoch)")
            continue
        _band(ax, cell, color, f"{label} [n={cell.seeds}]", marker)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish_top1_axes(plt, fig, ax, "epoch", f"{title}: test top-1 per epoch (mean, min-max over seeds)",
                             len(rows), path)


def _finish_top1_axes(plt: Any, fig: Any, ax: Any, xlabel: str, title: str, entries: int, path: Path) -> Path:
    """Labels (top-1 on the y axis), title, grid and the legend beside the axes; then save."""
    _finish_axes(ax, xlabel, title, entries)
    return _save(plt, fig, path)


def _finish_axes(ax: Any, xlabel: str, title: str, entries: int) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    outside_legend(ax, entries)


def _scatter(plt: Any, rows: list, title: str, path: Path) -> Path:
    """Top-1 against ECE, one point per run; each method's label at its runs' mean where it overlaps nothing
    (kdlab.experiments.labels), the legend naming every marker."""
    fig, ax = plt.subplots(figsize=(7.0 if len(rows) <= 16 else 8.6, 4.4))
    labels, markers = [], []
    for index, (label, cell) in enumerate(rows):
        points = [(r.at("last").get("test_ece"), r.at("last").get("test_top1")) for r in cell.runs]
        points = [(x, y) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))]
        if points:
            color, marker = style(index)
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, marker=marker, label=label,
                       s=28)
            markers += points
            labels.append((sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points), label))
    ax.margins(0.08)  # room for the labels of the outermost points
    fig.tight_layout()  # the final layout first: labels are placed in display coordinates
    _finish_axes(ax, "ECE (%) — lower is better", f"{title}: accuracy vs calibration, last epoch (one point per run)",
                 len(rows))
    fig.tight_layout()
    annotate_apart(ax, labels, markers)
    return _save(plt, fig, path)


def draw_gains(ax: Any, labels: list[str], seed_gains: list[list[float]], xlabel: str) -> None:
    """Horizontal bars of each method's mean gain over the baseline (sorted, best on top), the std over seeds as
    error bars and every seed as a dot; a line at zero. Long labels stay readable on the y axis."""
    order = sorted(range(len(labels)), key=lambda i: sum(seed_gains[i]) / len(seed_gains[i]))
    for y, i in enumerate(order):
        gains = seed_gains[i]
        mean = sum(gains) / len(gains)
        std = (sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5 if len(gains) > 1 else 0.0
        ax.barh(y, mean, xerr=std, color="tab:green" if mean > 0 else "tab:red", alpha=0.7, capsize=3,
                error_kw={"lw": 1})
        ax.plot(gains, [y] * len(gains), "k.", ms=4)
    ax.set_yticks(range(len(order)), [f"{labels[i]} [n={len(seed_gains[i])}]" for i in order], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def _gains(plt: Any, rows: list, title: str, path: Path) -> Path | None:
    """Each method's gain over its baseline at the last epoch: mean ± std over seeds, every seed as a dot."""
    labels, seed_gains = [], []
    for label, cell in rows:
        if cell.baseline is None or cell.baseline is cell:
            continue
        base = cell.baseline.stats("top1", "last")[0]
        gains = [v - base for v in cell.values("top1", "last")]
        if gains:
            labels.append(label)
            seed_gains.append(gains)
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 1.2 + 0.32 * len(labels))))
    draw_gains(ax, labels, seed_gains, "gain in test top-1 over the baseline (points), last epoch")
    ax.set_title(f"{title}\ngain over the baseline (mean ± std over seeds; dots: seeds)", fontsize=9)
    return _save(plt, fig, path)


def _reliability(plt: Any, rows: list, title: str, path: Path) -> Path | None:
    """One reliability diagram per row: the first run's bars, every other run's (seeds, cohort members) bin
    accuracies as dots, and every run's ECE in the panel title; one legend above the panels."""
    panels = []
    for label, cell in rows:
        seeds = []
        for run in cell.runs:
            try:
                seeds.append((run, *load_bins(run.run_dir, run.member)))
            except (OSError, KeyError, ValueError):
                continue  # a run from before reliability.json existed
        if seeds:
            panels.append((label, seeds))
    if not panels:
        return None
    ncols = min(len(panels), MAX_PANELS_PER_ROW)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows + 0.6), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (label, seeds) in zip(flat, panels):
        first, confidence, accuracy, count = seeds[0]
        eces = [run.at("last").get("test_ece") for run, *_ in seeds]
        ece = " / ".join(f"{e:.2f}" for e in eces if e is not None)
        name = f"{label} (seed {first.seed})" if len(seeds) == 1 else f"{label} ({len(seeds)} runs)"
        draw_reliability(ax, confidence, accuracy, count, f"{name}\nECE {ece}%" if ece else name,
                         [(acc, cnt) for _, _, acc, cnt in seeds[1:]])
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy")
    handles, labels = {}, []
    for ax in flat[:len(panels)]:  # every kind of mark that some panel drew, once
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in handles:
                handles[text] = handle
                labels.append(text)
    inch = 1 / fig.get_figheight()
    fig.suptitle(f"{title}: reliability, last epoch", fontsize=9, y=1 - 0.1 * inch, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.65 * inch))
    fig.legend([handles[t] for t in labels], labels, loc="upper center", ncol=len(labels), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.33 * inch))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
