"""`kdlab eval`: a run's model(s) on a test split: top-1, top-5, NLL, ECE, and optionally how often the student
predicts its teacher's class.

The checkpoint may be a run directory (its last.pt) or a file; its data default to the ones it was trained on,
at the size it was trained at (an ImageFolder model at its own image size, a cross-quality student on full-size
images downscaled as in training). A deep-mutual-learning checkpoint is evaluated student by student, and as
the cohort's ensemble (the mean of the students' probabilities), unless `member` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdlab import data as datasets
from kdlab.deploy.load import checkpoint_file, load
from kdlab.distillation.mutual import Ensemble, cohort_names
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.evaluate import evaluate
from kdlab.engine.metrics import EvalResult
from kdlab.engine.precision import autocast
from kdlab.errors import KdlabError
from kdlab.runner.checkpoints import check_against_data, fit_to_data, load_trained_model

DATA_KEYS = ("root", "workers", "coarse", "test_batch_size")  # data.<key>=value overrides eval accepts


@dataclass
class Evaluated:
    name: str  # the architecture, or a cohort student's name, or "ensemble"
    result: EvalResult
    agreement: float | None = None  # % of test images where the student predicts the teacher's class


def models_of(path: str, member: str | None) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(name, model, arch) of every model to evaluate in the checkpoint at `path`."""
    file = checkpoint_file(path)
    arch = ckpt.load(file, "checkpoint").get("arch") or {}
    cohort = arch.get("cohort") if isinstance(arch, dict) else None
    if not cohort or member is not None:
        loaded = load(file, member)
        return [(loaded.member or loaded.arch["model"], loaded.model, loaded.arch)]
    members = [load(file, i) for i in range(len(cohort))]
    found = [(m.member, m.model, m.arch) for m in members]
    return [*found, ("ensemble", Ensemble([m.model for m in members]), members[0].arch)]


def evaluate_checkpoint(path: str, data: str | None = None, root: str | None = None, batch_size: int = 256,
                        precision: str = "fp32", device: torch.device | None = None, member: str | None = None,
                        teacher: str | None = None, overrides: dict[str, Any] | None = None
                        ) -> tuple[str, list[Evaluated]]:
    """(dataset name, one Evaluated per model) for the checkpoint or run at `path`."""
    device = device or torch.device("cpu")
    found = models_of(path, member)
    arch = found[0][2]
    name = data or arch.get("data")
    if not name or name == "user":
        raise KdlabError(f"'{path}' does not record kdlab data it was trained on; pass --data NAME")
    extra = dict(overrides or {})
    unknown = [k for k in extra if k not in DATA_KEYS]
    if unknown:
        raise KdlabError(f"kdlab eval takes data.{{{','.join(DATA_KEYS)}}}=value, not data.{unknown[0]}; drop it")
    image_size = arch.get("downscaled_from") or arch["image_size"]
    _, test_loader, info = datasets.build_loaders(
        name, root=extra.pop("root", root), test_batch_size=int(extra.pop("test_batch_size", batch_size)),
        device=str(device), workers=int(extra.pop("workers", 2)), coarse=bool(extra.pop("coarse", False)),
        image_size=image_size if name in ("imagefolder", "imagenet") else None)
    reference = None
    if teacher is not None:
        reference, _ = load_trained_model(teacher, info, role="teacher")
        reference = reference.to(device).eval()
    out = []
    for label, model, model_arch in found:
        check_against_data(model_arch, info, path, "checkpoint")
        model = fit_to_data(model, model_arch).to(device).eval()
        result = evaluate(model, test_loader, device, precision, num_classes=info.num_classes)
        agreement = None if reference is None else agree(model, reference, test_loader, device, precision)
        out.append(Evaluated(label, result, agreement))
    return info.name, out


@torch.no_grad()
def agree(student: nn.Module, teacher: nn.Module, loader, device: torch.device, precision: str) -> float:
    """% of the test images on which the student's top-1 class is the teacher's."""
    same = total = 0
    for images, _, _ in loader:
        images = images.to(device)
        with autocast(device, precision):
            same += int((student(images).argmax(1) == teacher(images).argmax(1)).sum())
        total += images.shape[0]
    return 100.0 * same / max(total, 1)


def describe(data: str, item: Evaluated) -> str:
    r = item.result
    line = (f"{item.name} on {data} ({r.count} test images): top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  "
            f"NLL {r.nll:.4f}  ECE {r.ece:.2f}%")
    return line if item.agreement is None else f"{line}  agrees with the teacher on {item.agreement:.2f}%"


__all__ = ["Evaluated", "evaluate_checkpoint", "describe", "cohort_names"]
