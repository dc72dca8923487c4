"""The plot of `kdlab profile --plot FILE`: test top-1 against batch-1 latency (log scale), one point per model
and runtime (the fastest fp32 backend, and the int8 model where its top-1 was measured), the Pareto front (no
other point is both faster and more accurate) drawn as a step line. matplotlib is imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlab.errors import KdlabError
from kdlab.experiments.labels import annotate_apart

FP32 = ("eager fp32", "channels_last fp32", "onnxruntime fp32")


def points(results: list[Any]) -> list[tuple[float, float, str, str]]:
    """(batch-1 p50 ms, top-1 %, label, kind) per model: its fastest fp32 backend and its int8 model."""
    found = []
    for r in results:
        fp32 = [(r.timings[b][1].p50_ms, b) for b in FP32 if b in r.timings and 1 in r.timings[b]]
        if fp32 and r.top1 is not None:
            ms, backend = min(fp32)
            found.append((ms, r.top1, f"{r.entry.label} fp32 ({backend.split()[0]})", "fp32"))
        if r.int8_top1 is not None and 1 in r.timings.get("onnxruntime int8", {}):
            found.append((r.timings["onnxruntime int8"][1].p50_ms, r.int8_top1, f"{r.entry.label} int8", "int8"))
    return found


def pareto_front(found: list[tuple[float, float, str, str]]) -> list[tuple[float, float, str, str]]:
    front, best = [], float("-inf")
    for point in sorted(found, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def pareto_plot(results: list[Any], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = points(results)
    if not found:
        raise KdlabError("nothing to plot: no profiled model has a top-1 (runs without summary.json?)")
    front = pareto_front(found)
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=150)
    for kind, marker in (("fp32", "o"), ("int8", "s")):
        xs = [p[0] for p in found if p[3] == kind]
        ys = [p[1] for p in found if p[3] == kind]
        if xs:
            ax.scatter(xs, ys, marker=marker, s=36, label=kind, zorder=3)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1.2,
            label="Pareto front", zorder=2)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=90, facecolors="none", edgecolors="black",
               zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1, p50 (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(0.12)  # room for the labels of the outermost points
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()  # the final layout first: labels are placed in display coordinates
    # Pareto points first (they get the nearest places); a label with no free place is left out.
    order = sorted(found, key=lambda p: p not in front)
    annotate_apart(ax, [(ms, top1, label) for ms, top1, label, _ in order], fontsize=7, color="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
