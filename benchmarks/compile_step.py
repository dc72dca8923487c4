"""torch.compile in a distillation step: the tapped KD step of `kdlab distill` with eager networks against the same
step with `DistillationLoss.compile_networks()` (student and teacher, their tap hooks traced with them).

Both cases run `Trainer.train_epoch` on the same pre-made batches, interleaved per repeat; the compiled case's
first step (dynamo tracing + inductor code generation) is timed on its own and reported as the compile cost.
The median of the per-repeat ratios compiled / eager is what `kdlab distill --compile` would gain per step; the
refusal of --compile on the CPU (kdlab.runner.common.CPU_COMPILE_MEASURED) quotes this script's result.

    python benchmarks/compile_step.py --quick                          # checks the script (compiles: minutes)
    python benchmarks/compile_step.py --threads 2 --pair resnet56:resnet20
    python benchmarks/compile_step.py --device cuda --precision bf16 --pair resnet56:resnet20
"""

from __future__ import annotations

import argparse
import time

import torch
from common import (
    RepeatLoader,
    add_common_args,
    bench_config,
    describe_environment,
    environment,
    log,
    markdown_table,
    paired_ratio,
    resolve,
    setup_runtime,
    spread,
    synthetic_cifar,
    train_loader,
    write_json,
)

from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.trainer import Trainer

FULL = {"repeats": 5, "iters": 10, "warmup": 2, "batch_size": 64, "image_size": 32, "train_size": 1024}
QUICK = {"repeats": 2, "iters": 2, "warmup": 1, "batch_size": 16, "image_size": 16, "train_size": 64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet56:resnet20", help="teacher:student (zoo names)")
    parser.add_argument("--method", default="kd", help="distillation method (its taps are compiled too)")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: tracing only, fast; "
                        "the tests use it to check the script)")
    add_common_args(parser)
    return resolve(parser.parse_args(argv), FULL, QUICK)


class Step:
    """`Trainer.train_epoch` of a KD objective over a loader; `run(loader)` returns wall seconds (synchronised)."""

    def __init__(self, args: argparse.Namespace, compiled: bool, device: torch.device):
        teacher_name, student_name = args.pair.split(":")
        torch.manual_seed(0)
        teacher = models.create(teacher_name, 100, image_size=args.image_size).to(device).eval()
        student = models.create(student_name, 100, image_size=args.image_size).to(device)
        if args.channels_last:
            teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
        objective = DistillationLoss(teacher, student, method=args.method,
                                     input_shape=(3, args.image_size, args.image_size)).to(device)
        if compiled:
            objective.compile_networks(lambda m: torch.compile(m, backend=args.backend))
        config = bench_config(args.precision, args.channels_last)
        config.device = device.type
        self.trainer = Trainer(config, objective, None, None, "/tmp", {}, device, quiet=True)
        self.device, self.epoch = device, 0

    def run(self, loader) -> float:
        self.trainer.train_loader = loader
        self.epoch += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.trainer.train_epoch(self.epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_runtime(args)
    device = torch.device(args.device)
    env = environment()
    print(describe_environment(env))
    batches = [tuple(t.to(device) for t in batch) for _, batch in
               zip(range(4), train_loader(synthetic_cifar(args.train_size, args.image_size), args.batch_size,
                                          args.channels_last))]
    eager, compiled = Step(args, False, device), Step(args, True, device)
    start = time.perf_counter()
    compiled.run(RepeatLoader(batches, 1))  # tracing and code generation happen here
    compile_seconds = time.perf_counter() - start
    log(f"first compiled step (compilation): {compile_seconds:.1f} s")
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.repeats):
        for name, step in (("eager", eager), ("compiled", compiled)):
            step.run(RepeatLoader(batches, args.warmup))
            seconds = step.run(RepeatLoader(batches, args.iters))
            rates[name].append(args.iters * args.batch_size / seconds)
            log(f"  repeat {r + 1}/{args.repeats} {name}: {rates[name][-1]:.1f} img/s")
    ratio = paired_ratio(rates["compiled"], rates["eager"])
    median = {name: sorted(v)[len(v) // 2] for name, v in rates.items()}
    print(f"\n{args.method} {args.pair} on {args.device}, {args.precision}, backend {args.backend}"
          f"{' + channels_last' if args.channels_last else ''}, batch {args.batch_size}, {args.image_size} px:")
    print(markdown_table(["case", "img/s (median)", "spread %", "x eager (median of per-repeat ratios)"],
                         [["eager", median["eager"], spread(rates["eager"]), 1.0],
                          ["compiled", median["compiled"], spread(rates["compiled"]), ratio]]))
    print(f"compilation (first compiled step): {compile_seconds:.0f} s")
    result = {"args": vars(args), "environment": env, "rates": rates, "ratio": ratio,
              "compile_seconds": compile_seconds}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
