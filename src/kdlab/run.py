"""Runners behind `kdlab train` and `kdlab distill` (and `kdlab.train(config)` / `kdlab.distill(config)`).

They turn a validated Config into data loaders, models, an objective and a Trainer, own the run directory
(config.yaml, metrics.jsonl, checkpoints, summary.json) and refuse to overwrite an existing run.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import models
from .config import Config, dump
from .data.augment import resize
from .engine import checkpoint as ckpt
from .engine.distributed import Context, convert_sync_bn, current, on_main, process_group
from .engine.objectives import StepOutput, SupervisedObjective
from .engine.precision import pick_device, precision_warning
from .engine.trainer import Trainer
from .errors import KdlabError


def setup_runtime(config: Config, distributed: Context | None = None) -> torch.device:
    """Threads, seeds and determinism for this process; returns the device (cuda:LOCAL_RANK under torchrun).

    Every rank seeds with config.seed so that models are built identically; the Trainer reseeds ranks > 0."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt.seed_everything(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = distributed.device if distributed is not None else pick_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdlabError("device 'cuda' was requested but no GPU is available; use --device cpu")
    if config.sync_bn and device.type != "cuda":
        raise KdlabError("sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU; drop sync_bn or "
                         "run with --device cuda")
    warning = precision_warning(device, config.precision)
    if warning and (distributed is None or distributed.rank == 0):
        print(f"kdlab: warning: {warning}", file=sys.stderr)
    return device


# What kdlab writes in a run directory (docs/architecture.md); anything else there is the user's.
RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "reliability.json",
                       "tb", "init", "calibration.png", "calibration.md"})


def prepare_run_dir(out: str | None, default_name: str, resume: bool) -> Path:
    """The run directory. A run is never overwritten (resume it, or choose another --out), nor is a folder
    kdlab did not make; a run killed before its first checkpoint holds nothing to keep and starts again."""
    run_dir = Path(out) if out else Path("runs") / default_name
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise KdlabError(f"--out '{run_dir}' is not a folder: '{parent}' is a file; choose another --out")
    has_run = any((run_dir / name).is_file() for name in ("last.pt", "init/last.pt"))
    if has_run and not resume:
        raise KdlabError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out")
    if not has_run:
        entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
        foreign = [name for name in entries if name not in RUN_FILES and not name.endswith(".tmp")]
        if foreign or "best.pt" in entries:
            shown = ", ".join((foreign or ["best.pt"])[:5]) + (" ..." if len(foreign) > 5 else "")
            raise KdlabError(f"--out '{run_dir}' is not empty and holds no kdlab run to resume (it has {shown}); "
                             f"choose a new or empty --out")
        if resume and not entries:
            raise KdlabError(f"nothing to resume in '{run_dir}' (no last.pt); drop --resume to start a new run")
        if entries:
            print(f"kdlab: '{run_dir}' holds a run stopped before its first checkpoint; starting it again",
                  file=sys.stderr)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdlabError(f"cannot create --out '{run_dir}' ({exc.strerror}); choose a folder you can write to") \
            from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise KdlabError(f"--out '{run_dir}' is not writable; choose a folder you can write to")
    return run_dir


def build_data(config: Config, device: torch.device, distributed: Context | None = None):
    """Train/test loaders (this rank's shards under torchrun; data.batch_size is per process) and DataInfo."""
    d = config.data
    train_loader, test_loader, info = datasets.build_loaders(
        d.name, root=d.root, batch_size=d.batch_size, test_batch_size=d.test_batch_size, fraction=d.fraction,
        seed=config.seed, augment=d.augment, workers=d.workers,
        num_replicas=distributed.world_size if distributed else 1, rank=distributed.rank if distributed else 0,
        device=str(device), channels_last=config.channels_last, coarse=d.coarse, image_size=d.image_size,
        unreadable=d.unreadable)
    if d.fixed_augmentation and d.augment:  # one crop/flip per sample for all epochs (deterministic teacher inputs)
        if not hasattr(train_loader, "fixed_augmentation"):
            raise KdlabError(f"data.fixed_augmentation works with in-memory datasets (CIFAR, MNIST, digits), not "
                             f"{d.name}; drop it or set data.augment=false")
        train_loader.fixed_augmentation = True
    return train_loader, test_loader, info


def arch_of(model_name: str, info, view: InputView | None = None) -> dict[str, Any]:
    """What a checkpoint must record to rebuild its model and check it against data; a model trained on a
    downscaled view records the size it takes and the data size it was downscaled from."""
    arch = {"model": model_name, "num_classes": int(info.num_classes), "in_channels": int(info.in_channels),
            "image_size": int(info.image_size), "data": info.name}
    if view is not None:
        arch.update(image_size=view.size, downscaled_from=int(info.image_size), resize_mode=view.mode)
    return arch


class InputView:
    """The low-resolution view of a batch (cross-quality distillation): `resize` to `size` with `mode`."""

    def __init__(self, size: int, mode: str = "area"):
        self.size, self.mode = int(size), mode

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return resize(images, self.size, self.mode)


def student_view(config: Config, info) -> InputView | None:
    """The student's view from data.student_resolution / data.downscale, checked against the data's size."""
    d = config.data
    if d.student_resolution is None and d.downscale is None:
        return None
    size = d.student_resolution if d.student_resolution is not None else info.image_size // d.downscale
    flag = (f"--student-resolution {d.student_resolution}" if d.student_resolution is not None
            else f"--downscale {d.downscale}")
    if size > info.image_size:
        raise KdlabError(f"{flag} asks for {size}px but {info.name} images are {info.image_size}px; the student's "
                         f"view can only be smaller: choose 1..{info.image_size}")
    if size < 1:
        raise KdlabError(f"{flag} leaves less than 1px of {info.name}'s {info.image_size}px images; choose a "
                         f"factor of at most {info.image_size}")
    return None if size == info.image_size else InputView(size, d.student_resize_mode)


class DownscaledInput(nn.Module):
    """A model trained on a downscaled view, fed full-size batches: it downscales them itself (as trained).

    Used for low-resolution checkpoints as teachers and in `kdlab eval`; the tap table is the model's own.
    """

    def __init__(self, model: nn.Module, view: InputView):
        super().__init__()
        self.model = model
        self.view = view
        try:
            self.tap_points = {name: f"model.{path}" for name, path in models.tap_points(model).items()}
        except KdlabError:
            pass  # no tap table: logit methods still work

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.view(x))


class LowResolutionObjective(SupervisedObjective):
    """Cross-entropy on the downscaled view: the teacher-less baseline of cross-quality distillation."""

    def __init__(self, model: nn.Module, view: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(model)
        self.view = view

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1) -> StepOutput:
        return super().forward(self.view(images), targets, indices, epoch)


def prepare_model(model: nn.Module, config: Config, device: torch.device) -> nn.Module:
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, config: Config) -> nn.Module:
    return torch.compile(model) if config.compile else model


def refuse_compile(config: Config, command: str) -> None:
    """Distillation and mutual learning run eager: their taps are forward hooks toggled per step, which
    torch.compile would re-trace, and on the CPU compiling gave no gain (docs/architecture.md)."""
    if config.compile:
        raise KdlabError(f"--compile (compile=true) works with kdlab train only; {command} runs eager, so drop it")


@process_group  # under torchrun: joins the process group for the run (docs/distributed.md)
def run_train(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train `config.model` with cross-entropy (teachers and baseline students)."""
    dist = current()
    device = setup_runtime(config, dist)
    train_loader, test_loader, info = build_data(config, device, dist)
    view = student_view(config, info)  # --student-resolution: the low-resolution baseline
    run_dir = on_main(dist, prepare_run_dir, config.out, f"{config.model}-{info.name}-s{config.seed}", resume)
    model = prepare_model(models.create(config.model, info.num_classes, in_channels=info.in_channels,
                                        image_size=view.size if view else info.image_size), config, device)
    model = convert_sync_bn(model, config.sync_bn, device)
    objective = (SupervisedObjective(maybe_compile(model, config)) if view is None
                 else LowResolutionObjective(maybe_compile(model, config), view))
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch_of(config.model, info, view),
                      device, eval_transform=view, distributed=dist, quiet=quiet)
    return _fit(trainer, config, run_dir, resume and on_main(dist, (run_dir / "last.pt").exists))


def _fit(trainer: Trainer, config: Config, run_dir: Path, resume: bool) -> dict[str, Any]:
    if resume:
        trainer.resume()
        if trainer.start_epoch > trainer.epochs and trainer.is_main:
            print(f"kdlab: the run in '{run_dir}' finished all {trainer.epochs} epochs; nothing to train (pass "
                  f"--extend-to N to train it longer)", file=sys.stderr)
    if trainer.is_main:  # only rank 0 writes the run directory
        dump(config, run_dir / "config.yaml")
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    return summary


def load_trained_model(path: str | Path, info=None, role: str = "teacher") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdlab checkpoint (architecture read from it), checked against the data."""
    state, arch = read_checkpoint(path, role)
    if info is not None:
        check_against_data(arch, info, path, role)
    model = model_from_checkpoint(state, arch, path)
    return (fit_to_data(model, arch) if info is not None else model), arch


def read_checkpoint(path: str | Path, role: str = "teacher") -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint, its recorded architecture), with a clear error for files that are not kdlab checkpoints."""
    state = ckpt.load(path, role)
    arch = state.get("arch")
    if not isinstance(arch, dict) or "model" not in state:
        raise KdlabError(f"'{path}' is not a kdlab checkpoint (no architecture recorded); for outside weights use "
                         f"--teacher-model NAME --teacher-weights {path}")
    return state, arch


def model_from_checkpoint(state: dict[str, Any], arch: dict[str, Any], path: str | Path) -> nn.Module:
    model = models.create(arch["model"], arch["num_classes"], in_channels=arch["in_channels"],
                          image_size=arch["image_size"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise KdlabError(f"the weights in '{path}' do not fit a {arch['model']}; the checkpoint is damaged or "
                         f"was edited") from None
    return model


def fit_to_data(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """A model trained on a downscaled view gets full-size batches downscaled the same way (teacher, eval)."""
    if arch.get("downscaled_from") is None:
        return model
    return DownscaledInput(model, InputView(arch["image_size"], arch.get("resize_mode", "area")))


def check_against_data(arch: dict[str, Any], info, path, role: str) -> None:
    if arch["num_classes"] != info.num_classes:
        raise KdlabError(f"the {role} '{path}' predicts {arch['num_classes']} classes but {info.name} has "
                         f"{info.num_classes}; use a {role} trained on {info.name}")
    source = arch.get("downscaled_from")
    if source is not None:  # trained on a downscaled view (cross-quality): it needs the same full-size data
        if arch["in_channels"] != info.in_channels or source != info.image_size:
            raise KdlabError(f"the {role} '{path}' takes {arch['image_size']}px views of {arch['in_channels']}x"
                             f"{source}px images but {info.name} has {info.in_channels}x{info.image_size}px; "
                             f"use it on the data it was trained on")
        return
    if arch["in_channels"] != info.in_channels or arch["image_size"] != info.image_size:
        raise KdlabError(f"the {role} '{path}' takes {arch['in_channels']}x{arch['image_size']}px inputs but "
                         f"{info.name} has {info.in_channels}x{info.image_size}px; use a {role} trained on it")


def load_teachers(config: Config, info) -> list[nn.Module]:
    """Teachers from kdlab checkpoints (--teacher) or an outside model (--teacher-model/--teacher-weights).

    Several checkpoints must agree on classes and input size (checked before the data, for a clear message);
    one trained on a downscaled view gets the full-size batch downscaled as in its training.
    """
    loaded = [read_checkpoint(path) for path in config.teachers]
    inputs = [(a["num_classes"], a["in_channels"], a["image_size"], a.get("downscaled_from")) for _, a in loaded]
    if len(set(inputs)) > 1:
        described = ", ".join(f"{p}: {c} classes, {ch}x{s}px"
                              for p, (c, ch, s, _) in zip(config.teachers, inputs, strict=True))
        raise KdlabError(f"the teachers differ in classes or input size ({described}); use teachers trained "
                         f"on the same data at the same resolution")
    for path, (_, arch) in zip(config.teachers, loaded, strict=True):
        check_against_data(arch, info, path, "teacher")
    teachers = [fit_to_data(model_from_checkpoint(state, arch, path), arch)
                for path, (state, arch) in zip(config.teachers, loaded, strict=True)]
    if config.teacher_model:
        if not config.teacher_weights:
            raise KdlabError("--teacher-model needs --teacher-weights FILE (a local state_dict; nothing is "
                             "downloaded)")
        teachers.append(models.create(config.teacher_model, info.num_classes, in_channels=info.in_channels,
                                      image_size=info.image_size, weights=config.teacher_weights))
    elif config.teacher_weights:
        raise KdlabError("--teacher-weights needs --teacher-model NAME (its architecture)")
    return teachers


@process_group  # under torchrun: joins the process group for the run (docs/distributed.md)
def run_distill(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Distill the teacher(s) of `config` into `config.model` with `config.method`."""
    from .distillation import DistillationLoss, mix_weights
    from .methods import parse
    from .teacher_cache import attach_teacher_cache

    if not config.method:
        raise KdlabError("no method given; pass --method NAME (see 'kdlab list methods')")
    refuse_compile(config, "kdlab distill")
    parse(config.method, config.methods)  # validate names and hyperparameters before loading anything
    if config.teacher_mix is not None:
        mix_weights(config.teacher_mix, len(config.teachers) + bool(config.teacher_model))
    dist = current()
    device = setup_runtime(config, dist)
    train_loader, test_loader, info = build_data(config, device, dist)
    view = student_view(config, info)  # cross-quality: the student sees a downscaled view of the batch
    teachers = [prepare_model(t, config, device) for t in load_teachers(config, info)]
    teacher_name = ("+".join(Path(t).parent.name for t in config.teachers) if config.teachers
                    else (config.teacher_model or "none"))
    run_dir = on_main(dist, prepare_run_dir, config.out,
                      f"{config.method}-{teacher_name}-{config.model}-s{config.seed}", resume)
    student = prepare_model(models.create(config.model, info.num_classes, in_channels=info.in_channels,
                                          image_size=view.size if view else info.image_size), config, device)
    student = convert_sync_bn(student, config.sync_bn, device)
    objective = DistillationLoss(
        teachers or None, student, method=config.method, ce_weight=config.ce_weight,
        hparams=config.methods, input_shape=(info.in_channels, info.image_size, info.image_size),
        train_targets=getattr(getattr(train_loader, "dataset", None), "targets", None),
        train_indices=getattr(getattr(train_loader, "dataset", None), "indices", None),
        epochs=config.optim.epochs, num_classes=info.num_classes, student_input=view,
        teacher_mix=config.teacher_mix).to(device)
    # --cache-teacher: refuse non-deterministic inputs; load the disk cache or size the new one before training.
    attach_teacher_cache(config, objective, train_loader, (info.in_channels, info.image_size, info.image_size),
                         device, dist, quiet)
    arch = arch_of(config.model, info, view)
    run_init_stage(config, objective, train_loader, test_loader, run_dir, arch, device, resume, quiet, dist)
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch, device, eval_transform=view,
                      distributed=dist, quiet=quiet)
    return _fit(trainer, config, run_dir, resume and on_main(dist, (run_dir / "last.pt").exists))


def init_epochs(config: Config) -> int:
    """Epochs of the init stage: --init-epochs, else 30 on CIFAR (CRD's benchmark) and 5 elsewhere."""
    if config.init_epochs is not None:
        return config.init_epochs
    return 30 if config.data.name in ("cifar10", "cifar100") else 5


def run_init_stage(config: Config, objective, train_loader, test_loader, run_dir: Path, arch, device,
                   resume: bool, quiet: bool, distributed: Context | None = None) -> None:
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
    init_config.optim.extend_to = None  # --extend-to lengthens the main stage only
    objective.set_phase("init")
    trainer = Trainer(init_config, objective, train_loader, test_loader, init_dir, arch, device,
                      distributed=distributed, quiet=quiet)
    state_path = init_dir / "last.pt"
    if on_main(distributed, state_path.exists):  # rank 0 decides for all
        trainer.resume()
    if trainer.start_epoch <= epochs:
        if trainer.is_main:
            if not quiet:
                print(f"init stage: {epochs} epochs of {', '.join(m.name for m in objective.init_methods())}",
                      flush=True)
            init_dir.mkdir(parents=True, exist_ok=True)
        trainer.fit()
    objective.set_phase("main")
