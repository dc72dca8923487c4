"""Runners behind `kdlab train` and `kdlab distill` (and `kdlab.train(config)` / `kdlab.distill(config)`).

They turn a validated Config into data loaders, models, an objective and a Trainer, own the run directory
(config.yaml, metrics.jsonl, checkpoints, summary.json) and refuse to overwrite an existing run.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import models
from .config import Config, dump
from .engine import checkpoint as ckpt
from .engine.objectives import SupervisedObjective
from .engine.precision import pick_device
from .engine.trainer import Trainer
from .errors import KdlabError


def setup_runtime(config: Config) -> torch.device:
    """Threads, seeds and determinism for this process; returns the device."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt.seed_everything(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = pick_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdlabError("device 'cuda' was requested but no GPU is available; use --device cpu")
    return device


def prepare_run_dir(out: str | None, default_name: str, resume: bool) -> Path:
    """The run directory; an existing run is never overwritten (resume it, or choose another --out)."""
    run_dir = Path(out) if out else Path("runs") / default_name
    has_run = any((run_dir / name).exists() for name in ("last.pt", "metrics.jsonl", "init/last.pt"))
    if resume:
        if not has_run:
            raise KdlabError(f"nothing to resume in '{run_dir}' (no last.pt); drop --resume to start a new run")
    elif has_run:
        raise KdlabError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def build_data(config: Config, device: torch.device, distributed=None):
    d = config.data
    return datasets.build_loaders(
        d.name, root=d.root, batch_size=d.batch_size, test_batch_size=d.test_batch_size, fraction=d.fraction,
        seed=config.seed, augment=d.augment, workers=d.workers,
        num_replicas=distributed.world_size if distributed else 1, rank=distributed.rank if distributed else 0,
        device=str(device), channels_last=config.channels_last, coarse=d.coarse, image_size=d.image_size)


def arch_of(model_name: str, info) -> dict[str, Any]:
    """What a checkpoint must record to rebuild its model and check it against data."""
    return {"model": model_name, "num_classes": int(info.num_classes), "in_channels": int(info.in_channels),
            "image_size": int(info.image_size), "data": info.name}


def prepare_model(model: nn.Module, config: Config, device: torch.device) -> nn.Module:
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, config: Config) -> nn.Module:
    return torch.compile(model) if config.compile else model


def run_train(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train `config.model` with cross-entropy (teachers and baseline students)."""
    device = setup_runtime(config)
    train_loader, test_loader, info = build_data(config, device)
    run_dir = prepare_run_dir(config.out, f"{config.model}-{info.name}-s{config.seed}", resume)
    model = prepare_model(models.create(config.model, info.num_classes, in_channels=info.in_channels,
                                        image_size=info.image_size), config, device)
    objective = SupervisedObjective(maybe_compile(model, config))
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch_of(config.model, info), device,
                      quiet=quiet)
    return _fit(trainer, config, run_dir, resume)


def _fit(trainer: Trainer, config: Config, run_dir: Path, resume: bool) -> dict[str, Any]:
    if resume:
        trainer.resume()
    dump(config, run_dir / "config.yaml")
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    return summary


def load_trained_model(path: str | Path, info=None, role: str = "teacher") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdlab checkpoint (architecture read from it), checked against the data."""
    state = ckpt.load(path, role)
    arch = state.get("arch")
    if not isinstance(arch, dict) or "model" not in state:
        raise KdlabError(f"'{path}' is not a kdlab checkpoint (no architecture recorded); for outside weights use "
                         f"--teacher-model NAME --teacher-weights {path}")
    if info is not None:
        check_against_data(arch, info, path, role)
    model = models.create(arch["model"], arch["num_classes"], in_channels=arch["in_channels"],
                          image_size=arch["image_size"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise KdlabError(f"the weights in '{path}' do not fit a {arch['model']}; the checkpoint is damaged or "
                         f"was edited") from None
    return model, arch


def check_against_data(arch: dict[str, Any], info, path, role: str) -> None:
    if arch["num_classes"] != info.num_classes:
        raise KdlabError(f"the {role} '{path}' predicts {arch['num_classes']} classes but {info.name} has "
                         f"{info.num_classes}; use a {role} trained on {info.name}")
    if arch["in_channels"] != info.in_channels or arch["image_size"] != info.image_size:
        raise KdlabError(f"the {role} '{path}' takes {arch['in_channels']}x{arch['image_size']}px inputs but "
                         f"{info.name} has {info.in_channels}x{info.image_size}px; use a {role} trained on it")


def load_teachers(config: Config, info) -> list[nn.Module]:
    """Teachers from kdlab checkpoints (--teacher) or an outside model (--teacher-model/--teacher-weights)."""
    teachers = [load_trained_model(path, info)[0] for path in config.teachers]
    if config.teacher_model:
        if not config.teacher_weights:
            raise KdlabError("--teacher-model needs --teacher-weights FILE (a local state_dict; nothing is "
                             "downloaded)")
        teachers.append(models.create(config.teacher_model, info.num_classes, in_channels=info.in_channels,
                                      image_size=info.image_size, weights=config.teacher_weights))
    elif config.teacher_weights:
        raise KdlabError("--teacher-weights needs --teacher-model NAME (its architecture)")
    return teachers


def run_distill(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Distill the teacher(s) of `config` into `config.model` with `config.method`."""
    from .distillation import DistillationLoss
    from .methods import parse

    if not config.method:
        raise KdlabError("no method given; pass --method NAME (see 'kdlab list methods')")
    parse(config.method, config.methods)  # validate names and hyperparameters before loading anything
    device = setup_runtime(config)
    train_loader, test_loader, info = build_data(config, device)
    teachers = [prepare_model(t, config, device) for t in load_teachers(config, info)]
    if len(teachers) > 1:
        raise KdlabError("several teachers are not supported yet; pass one --teacher")
    teacher_name = Path(config.teachers[0]).parent.name if config.teachers else (config.teacher_model or "none")
    run_dir = prepare_run_dir(config.out, f"{config.method}-{teacher_name}-{config.model}-s{config.seed}", resume)
    student = prepare_model(models.create(config.model, info.num_classes, in_channels=info.in_channels,
                                          image_size=info.image_size), config, device)
    objective = DistillationLoss(
        teachers[0] if teachers else None, student, method=config.method, ce_weight=config.ce_weight,
        hparams=config.methods, input_shape=(info.in_channels, info.image_size, info.image_size),
        train_targets=getattr(getattr(train_loader, "dataset", None), "targets", None),
        epochs=config.optim.epochs, num_classes=info.num_classes).to(device)
    arch = arch_of(config.model, info)
    run_init_stage(config, objective, train_loader, test_loader, run_dir, arch, device, resume, quiet)
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch, device, quiet=quiet)
    return _fit(trainer, config, run_dir, resume and (run_dir / "last.pt").exists())


def init_epochs(config: Config) -> int:
    """Epochs of the init stage: --init-epochs, else 30 on CIFAR (CRD's benchmark) and 5 elsewhere."""
    if config.init_epochs is not None:
        return config.init_epochs
    return 30 if config.data.name in ("cifar10", "cifar100") else 5


def run_init_stage(config: Config, objective, train_loader, test_loader, run_dir: Path, arch, device,
                   resume: bool, quiet: bool) -> None:
    """The initialisation stage of two-stage methods, in run_dir/init/ (checkpointed and resumable).

    RepDistiller's protocol: SGD at the base LR with the same momentum and weight decay, no CE, the
    methods' init losses only. A finished init stage is loaded rather than repeated on resume.
    """
    epochs = init_epochs(config)
    if not objective.init_methods() or epochs == 0:
        return
    init_dir = run_dir / "init"
    init_config = copy.deepcopy(config)
    init_config.optim.epochs = epochs
    init_config.optim.schedule = "constant"
    init_config.optim.warmup_epochs = 0
    objective.set_phase("init")
    trainer = Trainer(init_config, objective, train_loader, test_loader, init_dir, arch, device, quiet=quiet)
    state_path = init_dir / "last.pt"
    if state_path.exists():
        trainer.resume()
    if trainer.start_epoch <= epochs:
        if not quiet:
            print(f"init stage: {epochs} epochs of {', '.join(m.name for m in objective.init_methods())}", flush=True)
        init_dir.mkdir(parents=True, exist_ok=True)
        trainer.fit()
    objective.set_phase("main")
