"""Calibration of teaching signals (P. Čuk's MSc thesis, github.com/PiaCuk/distillistic): the Tf-KD virtual
teacher and `kdlab calibration`.

Tf-KD's virtual teacher (Yuan et al. 2020; docs/methods.md#tfkd_virtual) distills q = softmax(p_d / τ) with
p_d = a on the label and b = (1 - a)/(K - 1) elsewhere. q depends only on the label, never on the image, so
its confidence is one number per (K, a, τ):

    q_y = 1 / (1 + (K - 1)·exp(-(a - b)/τ))

With the authors' CIFAR-100 values (a 0.99, τ 20) q_y ≈ 0.0105: an almost uniform, very under-confident
signal; Čuk finds that it biases students to under-confident, high-entropy predictions and that making the
signal better calibrated helps. A signal is calibrated when its confidence equals the accuracy that goes
with it. For a student that imitates q, that is the accuracy the student reaches, so `calibrate=A` solves
q_y = A for the temperature (closed form, `calibrated_temperature`), keeping a:

    τ = (a - b) / log((K - 1)·A / (1 - A)),    valid for 1/K < A < 1 and a > 1/K.

The temperature is the knob because the correct-class probability cannot reach such targets: with τ 20, even
a = 1 gives q_y ≈ 0.11 for K = 10. A is a number the user chooses; `kdlab calibration` prints a suggestion
from a baseline run's final *training* accuracy (test accuracy would leak the test set into training).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kdlab import config as cfg
from kdlab import data as datasets
from kdlab import methods
from kdlab.engine.logging import read_metrics
from kdlab.engine.metrics import ClassificationMeter
from kdlab.engine.precision import pick_device
from kdlab.errors import KdlabError
from kdlab.losses import virtual_teacher_probs
from kdlab.losses.calibration import calibrated_temperature
from kdlab.runner.checkpoints import load_trained_model


# ------------------------------------------------------------------------------------------------- the study
def calibration_study(run_dirs: list[str | Path], out: str | Path | None = None, checkpoint: str = "last",
                      data_root: str | None = None, device: str = "auto", quiet: bool = False) -> list[dict[str, Any]]:
    """Evaluate each run's model on its test set and write reliability diagrams (PNG) and an ECE table (.md).

    A run whose method includes tfkd_virtual also gets a row for its teaching signal: q on the test labels,
    measured with the same binned ECE as the students. Returns one dict per run (numbers in percent).
    """
    if not run_dirs:
        raise KdlabError("no run given; pass --run DIR (a kdlab run directory), once per run")
    torch_device = pick_device(device)
    rows = [_study_run(Path(d), checkpoint, data_root, torch_device) for d in run_dirs]
    png = Path(out) if out else Path(run_dirs[0]) / "calibration.png"
    if png.suffix.lower() != ".png":
        raise KdlabError(f"--out '{png}' must name a .png file (the table is written beside it as .md)")
    png.parent.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    _plot(rows, png)
    png.with_suffix(".md").write_text(table + "\n")
    if not quiet:
        print(table)
        print(f"\nreliability diagrams: {png}\ntable: {png.with_suffix('.md')}")
    return rows


def _study_run(run_dir: Path, checkpoint: str, data_root: str | None, device: torch.device) -> dict[str, Any]:
    if not (run_dir / "config.yaml").is_file():
        raise KdlabError(f"'{run_dir}' holds no kdlab run (no config.yaml); pass a run directory to --run")
    config = cfg.build([cfg.load_yaml(run_dir / "config.yaml")])
    d = config.data
    _, test_loader, info = datasets.build_loaders(d.name, root=data_root or d.root, test_batch_size=d.test_batch_size,
                                                  coarse=d.coarse, image_size=d.image_size, device=str(device),
                                                  workers=d.workers)
    model, arch = load_trained_model(run_dir / f"{checkpoint}.pt", info, role="checkpoint")
    model = model.to(device).eval()
    student = ClassificationMeter(info.num_classes)
    entropy = 0.0
    targets_seen = []
    with torch.inference_mode():
        for images, targets, _ in test_loader:
            images, targets = images.to(device), targets.to(device)
            logits = model(images).float()
            student.update(logits, targets)
            entropy += float(-(logits.softmax(1) * logits.log_softmax(1)).sum())
            targets_seen.append(targets.cpu())
    targets_all = torch.cat(targets_seen)
    result = student.compute()
    row: dict[str, Any] = {
        "run": run_dir.name, "model": arch["model"], "method": config.method or "ce", "resolution": arch["image_size"],
        "num_classes": info.num_classes, **_summary(result, entropy), "train_top1": _last_train_top1(run_dir),
        "signal": None,
    }
    names = [n.strip() for n in (config.method or "").split("+")]
    if "tfkd_virtual" in names:
        method = methods.create("tfkd_virtual", **config.methods.get("tfkd_virtual", {}))
        temperature = method.signal_temperature(info.num_classes)
        q = virtual_teacher_probs(targets_all, info.num_classes, correct_prob=method.hp["correct_prob"],
                                  temperature=temperature, dtype=torch.float64)
        signal = ClassificationMeter(info.num_classes)
        signal.update_probs(q, targets_all)
        q_entropy = float(-(torch.special.xlogy(q, q)).sum())
        row["signal"] = {"name": f"virtual teacher q (τ={temperature:.3g})", "temperature": temperature,
                         **_summary(signal.compute(), q_entropy)}
    return row


def _summary(result, entropy_sum: float) -> dict[str, Any]:
    count = max(result.count, 1)
    confidence = sum(c * n for c, n in zip(result.bin_confidence, result.bin_count, strict=True)) / count
    return {"top1": result.top1, "ece": result.ece, "nll": result.nll, "confidence": 100.0 * confidence,
            "entropy": entropy_sum / count, "count": result.count,
            "bins": {"confidence": result.bin_confidence, "accuracy": result.bin_accuracy, "count": result.bin_count}}


def _last_train_top1(run_dir: Path) -> float | None:
    """The last epoch's training top-1 (percent) from metrics.jsonl, or None."""
    records = read_metrics(run_dir)
    value = records[-1].get("train_top1") if records else None
    return float(value) if value is not None else None


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: each run's model and, for Tf-KD runs, its virtual teacher's signal; then suggestions."""
    lines = ["| run | predictor | px | top-1 % | mean confidence % | ECE % | entropy (nats) | "
             "confidence − student top-1 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['model']} ({r['method']}) | {r['resolution']} | {r['top1']:.2f} | "
                     f"{r['confidence']:.2f} | {r['ece']:.2f} | {r['entropy']:.3f} | "
                     f"{r['confidence'] - r['top1']:+.2f} |")
        s = r["signal"]
        if s is not None:  # q is always right on the labels: its own ECE is 1 - q_y; the gap to the student matters
            lines.append(f"| {r['run']} | {s['name']} | — | {s['top1']:.2f} | {s['confidence']:.2f} | "
                         f"{s['ece']:.2f} | {s['entropy']:.3f} | {s['confidence'] - r['top1']:+.2f} |")
    notes = []
    for r in rows:
        train = r["train_top1"]
        if r["method"] == "ce" and train is not None and 100.0 / r["num_classes"] < train < 100.0:
            target = round(train / 100.0, 3)
            tau = calibrated_temperature(r["num_classes"], target)
            notes.append(f"- {r['run']}: final training accuracy {train:.2f}%; a virtual teacher calibrated to it: "
                         f"`method.tfkd_virtual.calibrate={target}` (τ = {tau:.4g} at correct_prob 0.99)")
    if notes:
        lines += ["", "Calibrating Tf-KD's virtual teacher to a baseline's training accuracy:", *notes]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(rows), 4)
    grid = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(3.4 * cols, 3.4 * grid), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_axis_off()
    for ax, r in zip(axes.flat, rows, strict=False):
        bins = r["bins"]
        n = len(bins["count"])
        centres = [(i + 0.5) / n for i in range(n)]
        used = [i for i, c in enumerate(bins["count"]) if c > 0]
        ax.bar([centres[i] for i in used], [bins["accuracy"][i] for i in used], width=1.0 / n, alpha=0.7,
               edgecolor="k", label=f"{r['model']} (ECE {r['ece']:.1f}%)")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        s = r["signal"]
        if s is not None:
            sb = s["bins"]
            points = [i for i, c in enumerate(sb["count"]) if c > 0]
            ax.plot([sb["confidence"][i] for i in points], [sb["accuracy"][i] for i in points], "r*", ms=12,
                    label=f"virtual teacher q (ECE {s['ece']:.1f}%)")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="confidence", ylabel="accuracy",
               title=f"{r['run']} ({r['method']}, {r['resolution']}px)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
