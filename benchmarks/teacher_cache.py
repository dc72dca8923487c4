"""Teacher-output caching: KD throughput with a warm teacher cache against plain student training.

Three cases, interleaved per repeat in the same run, all through `Trainer.train_epoch` and the same loader:
  student    the student alone (SupervisedObjective),
  kd         DistillationLoss(method='kd'): the teacher runs on every batch,
  kd_cached  the same objective with a complete TeacherCache: no teacher forward at all.
Target: kd_cached >= 0.90 x student (median of per-repeat ratios). The loader is kdlab's TensorLoader with
fixed augmentation (crop + flip, one view per sample), shuffled anew every timed epoch; with --bare the
cases cycle 8 pre-made batches instead (no data-pipeline cost, so the ratio is stricter). The cache is
filled once before timing by a full pass of the teacher over the training set (its rate is reported).

    python benchmarks/teacher_cache.py --quick                     # < 1 minute: checks the script
    python benchmarks/teacher_cache.py --threads 1 --json cache.json
    python benchmarks/teacher_cache.py --threads 1 --data-root $KDLAB_DATA --train-size 4096
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import (
    Case,
    LimitedLoader,
    RepeatLoader,
    TrainerStep,
    add_common_args,
    case_record,
    describe_environment,
    environment,
    log,
    markdown_table,
    paired_ratio,
    premade_batches,
    prepare,
    rate_unit,
    resolve,
    run_interleaved,
    setup_runtime,
    spread,
    train_loader,
    training_set,
    warm_teacher_cache,
    write_json,
)

from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.objectives import SupervisedObjective

TARGET = 0.90  # cached KD within 10% of plain student training

FULL = {"repeats": 5, "iters": 10, "warmup": 2, "batch_size": 64, "image_size": 32, "train_size": 2048}
QUICK = {"repeats": 2, "iters": 2, "warmup": 1, "batch_size": 16, "image_size": 16, "train_size": 128}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true", help="channels_last models and batches")
    parser.add_argument("--bare", action="store_true", help="cycle 8 pre-made batches instead of the loader")
    add_common_args(parser)
    return resolve(parser.parse_args(argv), FULL, QUICK)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_runtime(args)
    env = environment()
    dataset = training_set(args)
    if len(dataset) > args.train_size:  # real CIFAR-100: the first --train-size samples (cache fill time)
        dataset = dataset.subset(torch.arange(args.train_size))
    num_classes, shape = dataset.num_classes, (dataset.in_channels, args.image_size, args.image_size)
    loader = train_loader(dataset, args.batch_size, args.channels_last, fixed_augmentation=True)

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return prepare(models.create(args.student, num_classes, image_size=args.image_size), args.channels_last)

    torch.manual_seed(1)
    teacher = prepare(models.create(args.teacher, num_classes, image_size=args.image_size), args.channels_last)

    def kd_objective() -> DistillationLoss:
        objective = DistillationLoss(copy.deepcopy(teacher), student(), method="kd", input_shape=shape,
                                     train_targets=dataset.targets, epochs=240, num_classes=num_classes)
        objective.set_phase("main")
        return objective

    cached = kd_objective()
    log(f"filling the teacher cache: {len(dataset)} samples through {args.teacher}")
    loader.set_epoch(0)
    fill_seconds = warm_teacher_cache(cached, dataset, args.batch_size, args.channels_last, args.precision)
    log(f"  {cached.teacher_cache.describe()} in {fill_seconds:.1f} s ({len(dataset) / fill_seconds:.0f} img/s)")

    if args.bare:
        batches = premade_batches(loader, 8)

        def make_loader(steps: int):
            return RepeatLoader(batches, steps)
    else:
        def make_loader(steps: int):
            return LimitedLoader(loader, steps)

    cases = [
        Case("student", TrainerStep(SupervisedObjective(student()), args.precision, args.channels_last).run,
             make_loader, args.batch_size),
        Case("kd", TrainerStep(kd_objective(), args.precision, args.channels_last).run, make_loader,
             args.batch_size),
        Case("kd_cached", TrainerStep(cached, args.precision, args.channels_last).run, make_loader,
             args.batch_size),
    ]
    hits_before, misses_before = cached.teacher_cache.hits, cached.teacher_cache.misses
    run_interleaved(cases, args.repeats, args.warmup, args.iters, log)
    steps = args.repeats * (args.warmup + args.iters)
    assert cached.teacher_cache.hits - hits_before == steps and cached.teacher_cache.misses == misses_before, \
        "every cached step must be answered by the cache"
    s, kd, kc = cases
    ratio = paired_ratio(kc.rates, s.rates)
    print(f"# Teacher-output cache: {args.teacher} -> {args.student}, {args.precision}"
          f"{' channels_last' if args.channels_last else ''}, {'pre-made batches' if args.bare else 'TensorLoader'}"
          f", batch {args.batch_size}, {args.image_size}px, {len(dataset)} samples"
          f" ({'CIFAR-100' if args.data_root else 'synthetic'})\n")
    print(describe_environment(env) + "\n")
    print(markdown_table(
        ["case", f"median {rate_unit()}", "spread %", "vs student"],
        [[c.name, c.median, spread(c.rates), paired_ratio(c.rates, s.rates)] for c in cases]))
    print(f"\ncached KD / student = {ratio:.3f} (target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'MISSED'}); "
          f"cached KD / uncached KD = {paired_ratio(kc.rates, kd.rates):.2f}x; "
          f"cache fill {len(dataset) / fill_seconds:.0f} img/s ({fill_seconds:.1f} s, once per key)")
    write_json(args.json, {
        "environment": env, "args": {k: v for k, v in vars(args).items() if k != "json"},
        "fill_seconds": fill_seconds, "cached_over_student": ratio,
        "cached_over_kd": paired_ratio(kc.rates, kd.rates),
        "medians": {c.name: c.median for c in cases}, "raw": {c.name: case_record(c) for c in cases},
    })


if __name__ == "__main__":
    main()
