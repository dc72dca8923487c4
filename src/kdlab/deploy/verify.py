"""The check of an exported model: its logits against PyTorch's on the same images, and its test top-1.

The exported model is fed as a deployment would feed it, from pixels through its preprocessing JSON (resize for
a cross-quality student, then mean/std); PyTorch gets the images as kdlab's loader gave them in training. So a
wrong mean/std in the JSON fails the check as surely as a wrong weight in the file.

Tolerance: two fp32 implementations of one network (PyTorch's kernels and ONNX Runtime's, or a traced graph
with folded BatchNorm) sum in different orders and fuse differently; each layer adds a few units in the last
place (ulp, 2^-23 relative), growing with depth and roughly with the square root of the sums' lengths. The check
allows TOLERANCE_ULPS = 1024 ulps of the largest logit, 1024 * 2^-23 * max(1, max|logit|) (about 1.2e-4 of the
logit scale): room for networks of about a hundred layers, while a wrong mean/std, a perturbed weight or a
missing layer moves logits by orders of magnitude more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdlab.deploy.runtimes import Runner
from kdlab.deploy.samples import RunData, Samples, preprocess, reference_input, training_view
from kdlab.errors import KdlabError

TOLERANCE_ULPS = 1024
FP32_EPS = float(torch.finfo(torch.float32).eps)  # 2^-23
TOP1_LIMIT = 0.1  # points: exported and PyTorch top-1 on the test set must agree within this


def tolerance(reference: torch.Tensor) -> float:
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return TOLERANCE_ULPS * FP32_EPS * scale


@dataclass
class Check:
    max_diff: float
    tolerance: float
    count: int
    source: str
    batches: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_diff) and self.max_diff <= self.tolerance

    def line(self) -> str:
        batches = " and ".join(str(b) for b in self.batches)
        sign = "<=" if self.ok else ">"
        return (f"{self.count} {self.source} at batch {batches}: max |logit diff| {self.max_diff:.3g} {sign} "
                f"tolerance {self.tolerance:.3g} ({TOLERANCE_ULPS} fp32 ulps of the largest logit)")

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.count, "source": self.source, "batches": list(self.batches),
                "max_abs_logit_diff": self.max_diff, "tolerance": self.tolerance, "passed": self.ok}


def torch_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).float()


def check_logits(run: Runner, model: nn.Module, samples: Samples, spec: dict[str, Any]) -> Check:
    """Max |logit difference| of the exported model (at batch N and at batch 1) against PyTorch."""
    reference = torch_logits(model, reference_input(samples, spec))
    deployed = preprocess(samples.pixels, spec)
    outputs = [run(deployed)]
    batches = [deployed.shape[0]]
    if deployed.shape[0] > 1:  # a batch size other than the export's: the batch dimension is dynamic
        outputs.append(run(deployed[:1]))
        batches.append(1)
    worst = 0.0
    for out, batch in zip(outputs, batches):
        if tuple(out.shape) != (batch, reference.shape[1]):
            raise KdlabError(f"the exported model gave outputs of shape {tuple(out.shape)} for a batch of {batch}; "
                             f"expected ({batch}, {reference.shape[1]}): the export is broken")
        diff = (out.float() - reference[:batch]).abs().max()
        worst = max(worst, float(diff) if torch.isfinite(diff) else math.inf)
    return Check(worst, tolerance(reference), samples.pixels.shape[0], samples.source, tuple(batches))


@dataclass
class Top1:
    exported: float
    reference: float
    count: int
    split: str

    @property
    def difference(self) -> float:
        return self.exported - self.reference

    def line(self, exported: str = "exported", reference: str = "PyTorch") -> str:
        return (f"top-1 on the {self.split} ({self.count} images): {exported} {self.exported:.2f}%, {reference} "
                f"{self.reference:.2f}% (difference {self.difference:+.2f} points)")

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "images": self.count, "exported": self.exported, "pytorch": self.reference,
                "difference_points": self.difference}


def top1(run: Runner, reference: Runner | nn.Module, run_data: RunData, spec: dict[str, Any]) -> Top1:
    """Test top-1 of `run` (fed its preprocessing) and of `reference` (an nn.Module fed as in training, or
    another runner fed the same preprocessed batch) on the whole test split."""
    hits, ref_hits, count = 0, 0, 0
    for batch in run_data.test:
        images, targets = batch[0].float(), batch[1]
        deployed = preprocess(run_data.denormalise(images), spec)
        if isinstance(reference, nn.Module):
            ref_logits = torch_logits(reference, training_view(images, spec).contiguous())
        else:
            ref_logits = reference(deployed)
        hits += int((run(deployed).argmax(1) == targets).sum())
        ref_hits += int((ref_logits.argmax(1) == targets).sum())
        count += int(targets.numel())
    if count == 0:
        raise KdlabError(f"the {run_data.info.name} test split holds no images")
    return Top1(100.0 * hits / count, 100.0 * ref_hits / count, count, f"{run_data.info.name} test split")
