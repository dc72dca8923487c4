"""`kdlab mutual`: a cohort of students trained together from scratch with Deep Mutual Learning
(kdlab.distillation.mutual), in the same trainer loop as `kdlab train`."""

from __future__ import annotations

from typing import Any

from kdlab import models
from kdlab.config import Config
from kdlab.distillation.mutual import MutualObjective, cohort_names
from kdlab.engine.distributed import convert_sync_bn, current, on_main, process_group
from kdlab.engine.rundir import prepare_run_dir
from kdlab.engine.trainer import Trainer
from kdlab.errors import KdlabError
from kdlab.runner.common import (
    arch_of,
    build_data,
    compile_objective,
    fit,
    prepare_model,
    refuse_dot,
    setup_runtime,
)


@process_group  # under torchrun: joins the process group for the run (docs/distributed.md)
def run_mutual(config: Config, model_names: list[str], variant: str = "dml", resume: bool = False,
               quiet: bool = False) -> dict[str, Any]:

    if len(model_names) < 2:
        raise KdlabError("deep mutual learning needs at least 2 students; pass --models a,b[,c...]")
    refuse_dot(config, "kdlab mutual")
    if config.qat:
        raise KdlabError("kdlab mutual has no --qat: quantization-aware training fine-tunes one student; train the "
                         "cohort, then fine-tune a student with kdlab distill --qat --student-weights FILE")
    if config.weights:
        raise KdlabError("kdlab mutual trains every cohort member from scratch; drop weights= (start a single "
                         "student from weights with kdlab train --weights or kdlab distill --student-weights)")
    dist = current()
    device = setup_runtime(config, dist)
    train_loader, test_loader, info = build_data(config, device, dist, quiet)
    students = [convert_sync_bn(prepare_model(models.create(n, info.num_classes, in_channels=info.in_channels,
                                                            image_size=info.image_size), config, device),
                                config.sync_bn, device) for n in model_names]
    run_dir = on_main(dist, prepare_run_dir, config.out,
                      f"{variant}-{'-'.join(model_names)}-{info.name}-s{config.seed}", resume)
    names = cohort_names(model_names)
    objective = MutualObjective(students, names, variant, label_smoothing=config.label_smoothing)
    compile_objective(config, objective)
    arch = {**arch_of(model_names[0], info), "cohort": model_names, "variant": variant}
    trainer = Trainer(config, objective, train_loader, test_loader, run_dir, arch, device, distributed=dist,
                      quiet=quiet)
    summary = fit(trainer, config, run_dir, resume)
    last = summary["last"]
    summary["students"] = {n: {k[len(f"test_{n}_"):]: v for k, v in last.items() if k.startswith(f"test_{n}_")}
                           for n in [*names, "ensemble"]}
    return summary
