"""The Python API: `kdlab.train(...)` and `kdlab.distill(...)`, on configs or on the user's own objects.

    kdlab.distill(teacher=my_teacher, student=my_student, train_loader=train, test_loader=test,
                  method="kd", epochs=30, lr=0.05, out="runs/mine")

runs the built-in trainer (checkpoints, metrics.jsonl, resume) on user models and loaders. Loaders may
yield (images, targets) or (images, targets, indices). With a `kdlab.config.Config` (or a dict of config
keys) it is the same as the command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import config as cfg
from kdlab.errors import KdlabError


def _as_config(config: cfg.Config | dict[str, Any] | None, overrides: dict[str, Any]) -> cfg.Config:
    if isinstance(config, cfg.Config):
        if overrides:
            return cfg.build([cfg.to_dict(config), overrides])
        return config
    return cfg.build([config or {}, overrides])


def train(config: cfg.Config | dict[str, Any] | None = None, resume: bool = False, **overrides: Any) -> dict:
    """Train `config.model` with cross-entropy, as `kdlab train`; returns the run summary."""
    from kdlab.runner.train import run_train

    return run_train(_as_config(config, overrides), resume=resume, quiet=True)


class _WithIndices:
    """Makes a loader of (images, targets) yield (images, targets, indices) as the trainer expects."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        for target in (self.loader, getattr(self.loader, "sampler", None)):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
                return

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for batch in self.loader:
            if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
                raise KdlabError("loaders must yield (images, targets) or (images, targets, indices) batches")
            yield batch[0], batch[1], batch[2] if len(batch) == 3 else None


def distill(config: cfg.Config | dict[str, Any] | None = None, *,
            teacher: nn.Module | Sequence[nn.Module] | None = None, student: nn.Module | None = None,
            train_loader: Iterable | None = None, test_loader: Iterable | None = None, method: str = "kd",
            epochs: int = 30, lr: float = 0.05, out: str | Path = "runs/distill", num_classes: int | None = None,
            input_shape: Sequence[int] | None = None, taps: dict | None = None, hparams: dict | None = None,
            ce_weight: float | None = None, resume: bool = False,
            normalization: tuple[Sequence[float], Sequence[float]] | None = None, **config_overrides: Any) -> dict:
    """Distill a teacher into a student: from a config (as `kdlab distill`) or from your own objects.

    With objects, `student`, `train_loader` and `test_loader` are required; `input_shape` (C, H, W) is needed
    by feature methods (it is read from the first batch when omitted); `normalization` (mean, std), the per-channel
    values your loader normalised with, by methods that augment in pixel space (mlkd); other training settings are
    config keys (`optim={"schedule": "cosine"}`, `precision="bf16"`, ...).
    """
    from kdlab.runner.distill import run_distill

    if student is None and train_loader is None:
        return run_distill(_as_config(config, config_overrides), resume=resume, quiet=True)
    if student is None or train_loader is None or test_loader is None:
        raise KdlabError("kdlab.distill on your own objects needs student=, train_loader= and test_loader=")
    from kdlab.distillation.loss import DistillationLoss
    from kdlab.engine.rundir import prepare_run_dir
    from kdlab.engine.trainer import Trainer
    from kdlab.runner.common import fake_quantize, fit, setup_runtime

    layer = {"model": type(student).__name__, "out": str(out), "method": method,
             "optim": {"epochs": epochs, "lr": lr, "schedule": "cosine"}}
    conf = cfg.build([layer, config_overrides])
    device = setup_runtime(conf)
    train_batches, test_batches = _WithIndices(train_loader), _WithIndices(test_loader)
    if input_shape is None:
        input_shape = tuple(next(iter(train_batches))[0].shape[1:])
    student = student.to(device)
    fq = fake_quantize(student, conf, tuple(input_shape), Path(conf.out), resume, quiet=True)  # qat=True
    loss_fn = DistillationLoss(teacher, student, method=method, taps=taps, ce_weight=ce_weight, hparams=hparams,
                               input_shape=input_shape, epochs=epochs, num_classes=num_classes,
                               teacher_mix=conf.teacher_mix, label_smoothing=conf.label_smoothing,
                               normalization=normalization).to(device)
    run_dir = prepare_run_dir(conf.out, "distill", resume)
    arch = {"model": type(student).__name__, "num_classes": num_classes, "in_channels": int(input_shape[0]),
            "image_size": int(input_shape[-1]), "data": "user"}
    trainer = Trainer(conf, loss_fn, train_batches, test_batches, run_dir, arch, device, quiet=True, qat=fq)
    return fit(trainer, conf, run_dir, resume)
