"""What every runner does: runtime set-up (threads, seeds, device), data loaders, the student's input
view (cross-quality), model placement, and fitting a Trainer in its run directory (kdlab.engine.rundir)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import data as datasets
from kdlab import models
from kdlab.config import Config, dump, parse_randaugment
from kdlab.data.augment import resize
from kdlab.data.folder_recipe import describe as describe_folder
from kdlab.data.folder_recipe import folder_stats
from kdlab.data.fractions import stratified_count
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import qat
from kdlab.engine.distributed import Context, on_main
from kdlab.engine.objectives import StepOutput, SupervisedObjective
from kdlab.engine.precision import pick_device, precision_warning
from kdlab.engine.schedule import describe as describe_schedule
from kdlab.engine.trainer import Trainer
from kdlab.errors import KdlabError


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


def build_data(config: Config, device: torch.device, distributed: Context | None = None, quiet: bool = False):
    """Train/test loaders (this rank's shards under torchrun; data.batch_size is per process) and DataInfo; for a
    class folder, one line says what was found and the settings chosen from it."""
    d = config.data
    train_loader, test_loader, info = datasets.build_loaders(
        d.name, root=d.root, batch_size=d.batch_size, test_batch_size=d.test_batch_size, fraction=d.fraction,
        seed=config.seed, augment=d.augment, workers=d.workers,
        num_replicas=distributed.world_size if distributed else 1, rank=distributed.rank if distributed else 0,
        device=str(device), channels_last=config.channels_last, coarse=d.coarse, image_size=d.image_size,
        unreadable=d.unreadable, on_device=d.on_device, decode=d.decode)
    in_memory = hasattr(train_loader, "on_device")
    if str(d.on_device).lower() == "true" and not in_memory:
        raise KdlabError(f"data.on_device=true holds in-memory datasets (CIFAR, MNIST, digits) on the device; {d.name} "
                         f"is read from image files: use data.decode=gpu to decode them on the device, and drop "
                         f"data.on_device")
    if d.decode == "gpu" and in_memory:
        raise KdlabError(f"data.decode=gpu decodes image files (imagefolder, imagenet); {d.name} is held in memory "
                         f"already decoded: drop data.decode (data.on_device keeps it on the device)")
    if d.fixed_augmentation and d.augment:  # one crop/flip per sample for all epochs (deterministic teacher inputs)
        if not hasattr(train_loader, "fixed_augmentation"):
            raise KdlabError(f"data.fixed_augmentation works with in-memory datasets (CIFAR, MNIST, digits), not "
                             f"{d.name}; drop it or set data.augment=false")
        train_loader.fixed_augmentation = True
    if d.randaugment and d.augment:
        if not hasattr(train_loader, "randaugment"):
            raise KdlabError(f"data.randaugment works with in-memory datasets (CIFAR, MNIST, digits), not {d.name} "
                             f"(its images are augmented per file by torchvision); drop data.randaugment")
        train_loader.randaugment = parse_randaugment(d.randaugment)
    if config.eval_subset is not None:
        restrict_test_set(test_loader, config.eval_subset)
    if d.name == "imagefolder" and not quiet and (distributed is None or distributed.is_main):
        stats = folder_stats(datasets.data_root(d.root) / "train")
        if stats is not None:
            print(describe_folder(stats, config), flush=True)
    return train_loader, test_loader, info


EVAL_SUBSET_SEED = 0  # the same test images in every run, whatever its --seed, so that runs stay comparable


def restrict_test_set(test_loader, count: int) -> None:
    """--eval-subset N: the test loader keeps a fixed class-stratified subset of N test images (seeded with
    EVAL_SUBSET_SEED, not the run's seed); nothing changes when N is at least the test set's size. The loader's
    `eval_subset` (N, or None) tells the Trainer to name the subset in its epoch lines."""
    dataset = test_loader.dataset
    test_loader.eval_subset = None
    if count >= len(dataset):
        return
    test_loader.eval_subset = count
    positions = stratified_count(dataset.targets, count, EVAL_SUBSET_SEED)
    if isinstance(dataset, datasets.InMemoryDataset):
        test_loader.dataset = dataset.subset(positions)
    else:  # IndexedImageFolder: positions of its kept samples
        dataset.indices, dataset.targets = dataset.indices[positions], dataset.targets[positions]


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

    def __init__(self, model: nn.Module, view: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float = 0.0):
        super().__init__(model, label_smoothing)
        self.view = view

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1, mix=None) -> StepOutput:
        return super().forward(self.view(images), targets, indices, epoch, mix)


def create_trained_model(config: Config, info: Any, image_size: int, run_dir: Path, resume: bool,
                         quiet: bool) -> nn.Module:
    """The model a run trains (`config.model`), started from `config.weights` when given: a pretrained model
    to fine-tune, whose classifier is replaced when the class count differs (said in one line). A resumed run
    takes its weights from last.pt instead, so the file is not read then."""
    resuming = resume and (Path(run_dir) / "last.pt").exists()
    model = models.create(config.model, info.num_classes, in_channels=info.in_channels, image_size=image_size,
                          weights=None if resuming else config.weights, new_head=True)
    note = getattr(model, "kdlab_weights_note", None)
    if note and not quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"kdlab: {note}", file=sys.stderr, flush=True)
    return model


def prepare_model(model: nn.Module, config: Config, device: torch.device) -> nn.Module:
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, config: Config) -> nn.Module:
    return torch.compile(model) if config.compile else model


def compile_objective(config: Config, objective: nn.Module) -> None:
    """--compile: the objective's networks run through torch.compile (distillation: student and teachers with their
    taps; mutual learning: every student). The first step compiles (77 s for resnet20 -> resnet8 on a 2-core CPU);
    what it gains per step: benchmarks/compile_step.py."""
    if config.compile:
        objective.compile_networks()


def refuse_dot(config: Config, command: str) -> None:
    """optim.optimizer=dot treats the distillation gradient apart from the task one; without a distillation loss
    (kdlab train) or with the cohort's own losses (kdlab mutual) there is nothing to split."""
    if config.optim.optimizer == "dot":
        raise KdlabError(f"optim.optimizer=dot separates the distillation gradient from the task gradient, and "
                         f"{command} has no distillation loss; use --optimizer sgd (DOT is for kdlab distill)")


def fake_quantize(model: nn.Module, config: Config, input_shape: tuple[int, int, int], run_dir: Path, resume: bool,
                  distributed: Context | None = None, quiet: bool = False) -> qat.FakeQuant | None:
    """--qat: attach fake quantization to the trained model (kdlab.engine.qat), saying what it covers in one line
    and, when the run starts from no trained weights, that QAT usually fine-tunes one; None without --qat."""
    if not config.qat:
        return None
    if distributed is not None and distributed.world_size > 1:
        raise KdlabError("--qat observes its activation ranges in one process; run it without torchrun (one "
                         "process, CPU or one GPU)")
    fq = qat.attach(model, input_shape)
    if not quiet and (distributed is None or distributed.is_main):
        print(fq.describe(), flush=True)
        if not config.weights and not (resume and (Path(run_dir) / "last.pt").exists()):
            print("kdlab: note: --qat without starting weights trains from random initialisation; QAT usually "
                  "fine-tunes a trained model for a few epochs at a small LR (--weights / --student-weights FILE, "
                  "docs/deploy.md)", file=sys.stderr, flush=True)
    return fq


def fit(trainer: Trainer, config: Config, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Fit `trainer` in `run_dir`: with `resume`, continue from its last.pt if there is one (saying so when the
    run has no epochs left); write config.yaml (rank 0); train. Returns the summary with `run_dir` added.
    Every runner and `kdlab.distill` on the user's own objects end here."""
    if resume and on_main(trainer.dist, (run_dir / "last.pt").exists):  # rank 0 decides for all
        trainer.resume()
        if trainer.start_epoch > trainer.epochs and trainer.is_main:
            print(f"kdlab: the run in '{run_dir}' finished all {trainer.epochs} epochs; nothing to train (pass "
                  f"--extend-to N to train it longer)", file=sys.stderr)
    if trainer.is_main:  # only rank 0 writes the run directory
        dump(config, run_dir / "config.yaml")
        if not trainer.quiet:
            print(describe_schedule(config.optim, trainer.base_lr), flush=True)
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    return summary
