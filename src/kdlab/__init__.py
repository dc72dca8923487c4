"""kdlab: knowledge distillation for image classifiers.

    import kdlab
    loss_fn = kdlab.DistillationLoss(teacher, student, method="kd")   # in your own loop
    kdlab.distill(teacher=t, student=s, train_loader=tr, test_loader=te, method="dkd")   # built-in trainer
    kdlab.models.create("resnet20", num_classes=100); kdlab.losses.kd(s_logits, t_logits, temperature=4)
    student = kdlab.load_model("runs/kd-r56-r20-s1")   # the plain nn.Module of a run (eval, CPU)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"DistillationLoss": ("kdlab.distillation", "DistillationLoss"), "distill": ("kdlab.api", "distill"),
         "train": ("kdlab.api", "train"), "load_model": ("kdlab.deploy.load", "load_model")}
_SUBMODULES = {"models": "kdlab.models", "losses": "kdlab.losses", "methods": "kdlab.methods", "data": "kdlab.data",
               "metrics": "kdlab.engine.metrics", "config": "kdlab.config", "engine": "kdlab.engine"}


def __getattr__(name: str) -> Any:
    """Import on first use, so `import kdlab` (and the CLI's start-up) stays fast."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'kdlab' has no attribute '{name}'")


__all__ = ["DistillationLoss", "distill", "train", "load_model", "__version__", *_SUBMODULES]
