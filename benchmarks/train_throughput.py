"""Training throughput (images/s) of CIFAR models through kdlab's trainer, per precision mode.

For every model and mode (fp32, channels_last, bf16, bf16+channels_last) it times
  (a) the bare step: Trainer.train_epoch over pre-made batches already in memory (forward, backward, SGD),
  (b) the whole pipeline: the same trainer fed by TensorLoader (index, random crop + flip, normalise),
and reports (b)/(a) (target >= 0.90) and each mode's speed-up over fp32 (target for resnet20
bf16+channels_last: >= 1.8x). It also times (c) the loader alone and prints (a)/(a + loader) = 1 / (1 + a/c):
the ratio (b)/(a) would have if the loader's time just added to the step's, a noise-robust reading of the
pipeline's cost. Cases are interleaved per repeat; ratios are medians of per-repeat ratios.

    python benchmarks/train_throughput.py --quick                 # < 2 minutes, checks the script
    python benchmarks/train_throughput.py --threads 2 --json train.json
    python benchmarks/train_throughput.py --data-root $KDLAB_DATA --models resnet20 --modes fp32,bf16
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import (
    MODES,
    Case,
    LimitedLoader,
    RepeatLoader,
    TrainerStep,
    add_common_args,
    case_record,
    describe_environment,
    environment,
    loader_only,
    log,
    markdown_table,
    paired_ratio,
    premade_batches,
    prepare,
    rate_unit,
    resolve,
    run_interleaved,
    setup_runtime,
    split_names,
    spread,
    train_loader,
    training_set,
    write_json,
)

from kdlab import models
from kdlab.engine.objectives import SupervisedObjective

MODELS = ("resnet20", "resnet56", "resnet8x4", "wrn_16_2")
PIPELINE_TARGET = 0.90
BF16_TARGET = 1.8  # resnet20, bf16+channels_last over fp32, bare step

FULL = {"repeats": 5, "iters": 20, "warmup": 3, "batch_size": 64, "image_size": 32, "train_size": 50_000}
QUICK = {"repeats": 1, "iters": 2, "warmup": 1, "batch_size": 16, "image_size": 16, "train_size": 512}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list or 'all' ({', '.join(MODELS)})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list or 'all' ({', '.join(MODES)})")
    parser.add_argument("--no-pipeline", action="store_true", help="time only the bare step (a)")
    add_common_args(parser)
    args = resolve(parser.parse_args(argv), FULL, QUICK)
    args.models = split_names(args.models, models.list_models(include_torchvision=False), "model")
    args.modes = split_names(args.modes, list(MODES), "mode")
    return args


def bench_model(name: str, args: argparse.Namespace, dataset, num_classes: int) -> dict[str, dict]:
    """Bare-step and pipeline cases of one model in every mode, interleaved; returns per-mode results."""
    cases: list[Case] = []
    per_mode: dict[str, dict] = {}
    loaders: dict[bool, Case] = {}
    for mode in args.modes:
        precision, channels_last = MODES[mode]
        torch.manual_seed(0)
        model = prepare(models.create(name, num_classes, image_size=args.image_size), channels_last)
        step = TrainerStep(SupervisedObjective(model), precision, channels_last)
        loader = train_loader(dataset, args.batch_size, channels_last)
        batches = premade_batches(loader, 8)
        bare = Case(f"{name} {mode} step", step.run, lambda n, b=batches: RepeatLoader(b, n), args.batch_size)
        cases.append(bare)
        pipe = None
        if not args.no_pipeline:
            pipe = Case(f"{name} {mode} pipeline", step.run, lambda n, ld=loader: LimitedLoader(ld, n),
                        args.batch_size)
            cases.append(pipe)
            if channels_last not in loaders:
                # The loader's own cost depends only on the memory format: timed once per format.
                only = Case(f"{name} {mode} loader only", loader_only, lambda n, ld=loader: LimitedLoader(ld, n),
                            args.batch_size)
                cases.append(only)
                loaders[channels_last] = only
        per_mode[mode] = {"bare": bare, "pipeline": pipe, "loader": loaders.get(channels_last)}
    run_interleaved(cases, args.repeats, args.warmup, args.iters, log)
    results: dict[str, dict] = {}
    base = per_mode.get("fp32")
    for mode, c in per_mode.items():
        bare, pipe = c["bare"], c["pipeline"]
        results[mode] = {
            "step_images_per_s": bare.rates,
            "pipeline_images_per_s": pipe.rates if pipe else None,
            "step_median": bare.median,
            "pipeline_median": pipe.median if pipe else None,
            "pipeline_over_step": paired_ratio(pipe.rates, bare.rates) if pipe else None,
            "step_speedup_over_fp32": paired_ratio(bare.rates, base["bare"].rates) if base else None,
            "pipeline_speedup_over_fp32": paired_ratio(pipe.rates, base["pipeline"].rates)
            if base and pipe and base["pipeline"] else None,
            "loader_median": c["loader"].median if c["loader"] else None,
            # What (b)/(a) would be if the loader's own time simply added to the step's: a noise-robust check
            # of the pipeline's cost, next to the measured ratio (which a busy machine can move by +-10%).
            "loader_bound": 1.0 / (1.0 + bare.median / c["loader"].median) if c["loader"] else None,
            "step_spread_pct": spread(bare.rates),
            "raw": {"step": case_record(bare), "pipeline": case_record(pipe) if pipe else None,
                    "loader": case_record(c["loader"]) if c["loader"] else None},
        }
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_runtime(args)
    env = environment()
    dataset = training_set(args)
    print(f"# Training throughput, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{dataset.name} ({len(dataset)} images)\n")
    print(describe_environment(env))
    print(f"median of {args.repeats} repeats x {args.iters} steps ({args.warmup} warm-up steps excluded); "
          f"cases interleaved per repeat; ratios = median of per-repeat ratios\n")
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for name in args.models:
        log(f"{name}:")
        results[name] = bench_model(name, args, dataset, dataset.num_classes)

    unit = rate_unit()
    headers = ["model", "mode", f"(a) step {unit}", f"(b) pipeline {unit}", "(b)/(a)", "step vs fp32",
               "pipeline vs fp32", f"loader only {unit}", "(a)/(a + loader)", "step spread %"]
    rows = []
    for name, per_mode in results.items():
        for mode, r in per_mode.items():
            ratio = r["pipeline_over_step"]
            flag = "" if ratio is None or ratio >= PIPELINE_TARGET else " (below 0.90)"
            rows.append([name, mode, r["step_median"], r["pipeline_median"] or "-",
                         "-" if ratio is None else f"{ratio:.3f}{flag}",
                         "-" if r["step_speedup_over_fp32"] is None else f"{r['step_speedup_over_fp32']:.2f}x",
                         "-" if r["pipeline_speedup_over_fp32"] is None
                         else f"{r['pipeline_speedup_over_fp32']:.2f}x",
                         "-" if r["loader_median"] is None else r["loader_median"],
                         "-" if r["loader_bound"] is None else f"{r['loader_bound']:.3f}",
                         f"{r['step_spread_pct']:.0f}"])
    print(markdown_table(headers, rows))

    print("\n## Targets\n")
    checks = []
    for name, per_mode in results.items():
        for mode, r in per_mode.items():
            if r["pipeline_over_step"] is not None:
                ok = r["pipeline_over_step"] >= PIPELINE_TARGET
                checks.append([f"pipeline/step {name} {mode}", f">= {PIPELINE_TARGET}",
                               f"{r['pipeline_over_step']:.3f}", "met" if ok else "NOT met"])
    r20 = results.get("resnet20", {}).get("bf16+channels_last")
    if r20 and r20["step_speedup_over_fp32"] is not None:
        ok = r20["step_speedup_over_fp32"] >= BF16_TARGET
        checks.append(["resnet20 bf16+channels_last / fp32 (step)", f">= {BF16_TARGET}x",
                       f"{r20['step_speedup_over_fp32']:.2f}x", "met" if ok else "NOT met"])
    print(markdown_table(["check", "target", "measured", "status"], checks))
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.0f} s)")
    write_json(args.json, {"benchmark": "train_throughput", "args": {k: v for k, v in vars(args).items()},
                           "environment": env, "results": results, "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
