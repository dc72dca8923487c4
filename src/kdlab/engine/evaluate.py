"""Evaluation of a classifier on a loader: top-1/top-5, NLL, ECE (see kdlab.engine.metrics)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from kdlab.engine.metrics import ClassificationMeter, EvalResult
from kdlab.engine.precision import autocast


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, num_classes: int | None = None, transform=None,
             reduce=None, progress: str | None = None) -> EvalResult:
    """Evaluate `model` in eval mode (its mode is restored after). `transform` maps the input batch (used
    for low-resolution student views); `reduce` all-reduces the meter state across processes; `progress`: the
    label of a progress bar, shown on a terminal only (tqdm's rule), or None for none."""
    was_training = model.training
    model.eval()
    meter = None
    try:
        batches = loader if progress is None else tqdm(loader, desc=progress, leave=False, disable=None,
                                                        dynamic_ncols=True)
        for images, targets, _ in batches:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if transform is not None:
                images = transform(images)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(images)
            if meter is None:
                meter = ClassificationMeter(num_classes or logits.shape[1])
            meter.update(logits, targets)
    finally:
        model.train(was_training)
    if meter is None:
        meter = ClassificationMeter(num_classes or 1)
    if reduce is not None:
        meter.state = reduce(meter.state)
    return meter.compute()
