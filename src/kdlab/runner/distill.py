"""`kdlab distill` (and `kdlab.distill(config)`): teachers distilled into a student with a method,
including the initialisation stage of two-stage methods."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kdlab.config import Config
from kdlab.distillation.loss import DistillationLoss
from kdlab.distillation.teacher_cache import attach_teacher_cache
from kdlab.engine.distributed import Context, convert_sync_bn, current, on_main, process_group
from kdlab.engine.rundir import prepare_run_dir
from kdlab.engine.trainer import Trainer, resolve_optimizer
from kdlab.errors import KdlabError
from kdlab.methods import parse
from kdlab.runner.checkpoints import load_teachers
from kdlab.runner.common import (
    arch_of,
    build_data,
    compile_objective,
    create_trained_model,
    fake_quantize,
    fit,
    prepare_model,
    setup_runtime,
    student_view,
)


@process_group  # under torchrun: joins the process group for the run (docs/distributed.md)
def run_distill(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Distill the teacher(s) of `config` into `config.model` with `config.method`."""
    if not config.method:
        raise KdlabError("no method given; pass --method NAME (see 'kdlab list methods')")
    methods = parse(config.method, config.methods)  # validate names and hyperparameters before loading anything
    apply_method_optimizer(config, methods)
    refuse_dot_with_own_backward(config, methods)
    dist = current()
    device = setup_runtime(config, dist)
    train_loader, test_loader, info = build_data(config, device, dist, quiet)
    view = student_view(config, info)  # cross-quality: the student sees a downscaled view of the batch
    teachers = [prepare_model(t, config, device) for t in load_teachers(config, info)]
    teacher_name = ("+".join(Path(t).parent.name for t in config.teachers) if config.teachers
                    else (config.teacher_model or "none"))
    run_dir = on_main(dist, prepare_run_dir, config.out,
                      f"{config.method}-{teacher_name}-{config.model}-s{config.seed}", resume)
    student = prepare_model(create_trained_model(config, info, view.size if view else info.image_size, run_dir,
                                                 resume, quiet), config, device)
    student = convert_sync_bn(student, config.sync_bn, device)
    size = view.size if view else info.image_size
    fq = fake_quantize(student, config, (info.in_channels, size, size), run_dir, resume, dist, quiet)  # --qat
    objective = DistillationLoss(
        teachers or None, student, method=config.method, ce_weight=config.ce_weight,
        hparams=config.methods, input_shape=(info.in_channels, info.image_size, info.image_size),
        train_targets=getattr(getattr(train_loader, "dataset", None), "targets", None),
        train_indices=getattr(getattr(train_loader, "dataset", None), "indices", None),
        epochs=config.optim.epochs, num_classes=info.num_classes, student_input=view,
        teacher_mix=config.teacher_mix, label_smoothing=config.label_smoothing,
        normalization=(info.mean, info.std)).to(device)
    compile_objective(config, objective)
    record_run_length_defaults(config, objective, quiet or (dist is not None and not dist.is_main))
    # --cache-teacher: refuse non-deterministic inputs; load the disk cache or size the new one before training.
    attach_teacher_cache(config, objective, train_loader, (info.in_channels, info.image_size, info.image_size),
                         device, dist, quiet)
    arch = arch_of(config.model, info, view)
    run_init_stage(config, objective, train_loader, test_loader, run_dir, arch, device, resume, quiet, dist, fq)
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch, device, eval_transform=view,
                      distributed=dist, quiet=quiet, qat=fq)
    return fit(trainer, config, run_dir, resume)


def apply_method_optimizer(config: Config, methods: list) -> None:
    """A method that trains with its own optimizer (`--method dot`) sets optim.optimizer, so config.yaml and the
    schedule line say what runs; another optimizer asked for explicitly is refused in one line."""
    config.optim.optimizer = resolve_optimizer(config, next((m.optimizer for m in methods if m.optimizer), None))


def refuse_dot_with_own_backward(config: Config, methods: list) -> None:
    """KD-SVD and MHGD clip their distillation gradient to the task one inside the step; DOT keeps the two
    apart, so the combination has no meaning (refused before anything is loaded). Called after
    `apply_method_optimizer`, so optim.optimizer already says whether a method asked for DOT."""
    clipping = [m.name for m in methods if m.clip_to_ce]
    if config.optim.optimizer == "dot" and clipping:
        raise KdlabError(f"{', '.join(clipping)} clip their distillation gradient to the task gradient, and the DOT "
                         f"optimizer keeps the two apart: use --optimizer sgd with {', '.join(clipping)}")


def record_run_length_defaults(config: Config, objective: DistillationLoss, quiet: bool) -> None:
    """Put the defaults that followed the run's length into the config, so config.yaml says what ran: the
    init stage's epochs and each method's scaled `epoch_hparams` (DKD's warm-up), each said in one line."""
    notes = []
    if objective.init_methods() and config.init_epochs is None:
        config.init_epochs = init_epochs(config)
    for m in objective.methods:
        for key, reference in m.epoch_hparams.items():
            if key not in m.given and m.hp[key] != m.defaults[key]:
                config.methods.setdefault(m.name, {})[key] = m.hp[key]
                notes.append(f"{m.name}.{key} {m.hp[key]} (the default {m.defaults[key]} is for {reference} "
                             f"epochs; set method.{m.name}.{key} to choose)")
    if notes and not quiet:
        print(f"scaled to {config.optim.epochs} epochs: {'; '.join(notes)}", flush=True)


def init_epochs(config: Config) -> int:
    """Epochs of the init stage: --init-epochs, else on CIFAR 30 for the 240-epoch recipe (CRD's benchmark),
    scaled to the run's length (4 for 30 epochs), and 5 elsewhere."""
    if config.init_epochs is not None:
        return config.init_epochs
    if config.data.name in ("cifar10", "cifar100"):
        return max(1, int(30 * config.optim.epochs / 240 + 0.5))
    return 5


def run_init_stage(config: Config, objective, train_loader, test_loader, run_dir: Path, arch, device,
                   resume: bool, quiet: bool, distributed: Context | None = None, qat=None) -> None:
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
    init_config.ema_decay = None  # the main stage's student is the one averaged and reported
    if init_config.optim.optimizer == "dot":  # the init losses have no task/distillation split: plain SGD
        init_config.optim.optimizer = "sgd"
    objective.set_phase("init")
    trainer = Trainer(init_config, objective, train_loader, test_loader, init_dir, arch, device,
                      distributed=distributed, quiet=quiet, qat=qat)
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
