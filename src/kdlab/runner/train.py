"""`kdlab train` (and `kdlab.train(config)`): a model trained with cross-entropy, teachers and baselines."""

from __future__ import annotations

from typing import Any

from kdlab.config import Config
from kdlab.engine.distributed import convert_sync_bn, current, on_main, process_group
from kdlab.engine.objectives import SupervisedObjective
from kdlab.engine.rundir import prepare_run_dir
from kdlab.engine.trainer import Trainer
from kdlab.runner.common import (
    LowResolutionObjective,
    arch_of,
    build_data,
    create_trained_model,
    fake_quantize,
    fit,
    maybe_compile,
    prepare_model,
    refuse_dot,
    setup_runtime,
    student_view,
)


@process_group  # under torchrun: joins the process group for the run (docs/distributed.md)
def run_train(config: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train `config.model` with cross-entropy (teachers and baseline students)."""
    refuse_dot(config, "kdlab train")
    dist = current()
    device = setup_runtime(config, dist)
    train_loader, test_loader, info = build_data(config, device, dist, quiet)
    view = student_view(config, info)  # --student-resolution: the low-resolution baseline
    run_dir = on_main(dist, prepare_run_dir, config.out, f"{config.model}-{info.name}-s{config.seed}", resume)
    model = prepare_model(create_trained_model(config, info, view.size if view else info.image_size, run_dir, resume,
                                               quiet), config, device)
    model = convert_sync_bn(model, config.sync_bn, device)
    size = view.size if view else info.image_size
    fq = fake_quantize(model, config, (info.in_channels, size, size), run_dir, resume, dist, quiet)  # --qat
    objective = (SupervisedObjective(maybe_compile(model, config), config.label_smoothing) if view is None
                 else LowResolutionObjective(maybe_compile(model, config), view, config.label_smoothing))
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch_of(config.model, info, view),
                      device, eval_transform=view, distributed=dist, quiet=quiet, qat=fq)
    return fit(trainer, config, run_dir, resume)
