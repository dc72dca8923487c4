"""Distillation throughput (images/s) against plain student training, through kdlab's trainer.

Pair table: for each teacher->student pair and precision, in the same run (interleaved per repeat):
  student  Trainer.train_epoch of the student alone (SupervisedObjective),
  teacher  the teacher's forward only (eval, inference mode, autocast: its share of a KD step),
  kd       Trainer.train_epoch of DistillationLoss(method='kd'),
  floor    1 / (1/student + 1/teacher): a KD step cannot beat student step + teacher forward;
  target   kd >= 0.90 x floor.
Method table (--methods all, or a comma list): every method's images/s relative to KD on the same pair and
its overhead beyond KD (time_method / time_kd - 1), flagged above 25%. KD is re-timed every few methods
("anchors"), and each method is compared with the mean of the KD anchors around it, so drift in the
machine's load cancels. Methods with an init stage run their main phase; CRD gets the training labels.
All steps use pre-made augmented batches in memory (the data pipeline is train_throughput.py's subject).
Where the flagged methods' time goes: for each method over 25%, one training step of it and of KD under
torch.utils.flop_counter (matrix products and convolutions, forward and backward) and torch.profiler: its
FLOPs per image relative to KD's, and its extra CPU time over KD's (per image, from the profiles) split by
operator kind: matrix operators (convolutions and matrix products, the FLOPs the counter sees), matrix
decompositions (SVD, eigendecomposition, QR: the counter does not see them) and everything else (norms,
elementwise, pooling, resizing, copies: memory-bound work the counter does not see either). A method whose
extra time sits in its own arithmetic costs what that arithmetic costs; the split says which arithmetic.

    python benchmarks/distill_throughput.py --quick                  # every method, < 2 minutes
    python benchmarks/distill_throughput.py --threads 2 --json distill.json
    python benchmarks/distill_throughput.py --methods all --models resnet32x4:resnet8x4 --precisions fp32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from common import (
    Case,
    RepeatLoader,
    TeacherForward,
    TrainerStep,
    add_common_args,
    case_record,
    describe_environment,
    environment,
    log,
    markdown_table,
    paired_ratio,
    parse_pairs,
    premade_batches,
    prepare,
    rate_unit,
    resolve,
    run_interleaved,
    setup_runtime,
    spread,
    train_loader,
    training_set,
    write_json,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlab import methods as method_registry
from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.objectives import SupervisedObjective

PAIRS = (("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"))
METHOD_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"))
FLOOR_TARGET = 0.90  # KD within 10% of the student-step + teacher-forward floor
OVERHEAD_FLAG = 25.0  # % of the KD step

FULL = {"repeats": 5, "iters": 10, "warmup": 2, "batch_size": 64, "image_size": 32, "train_size": 50_000,
        "methods": "kd"}
QUICK = {"repeats": 1, "iters": 1, "warmup": 1, "batch_size": 16, "image_size": 16, "train_size": 256,
         "methods": "all"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all",
                        help="pairs of the KD-vs-floor table: TEACHER:STUDENT or a model name, comma list, or all")
    parser.add_argument("--methods", default=None,
                        help="'kd' (default: pair table only), 'all' or a comma list: add the method table "
                             "(--quick: all)")
    parser.add_argument("--method-models", default="all",
                        help="pairs of the method table (default resnet32x4:resnet8x4, wrn_40_2:wrn_16_2)")
    parser.add_argument("--precisions", default="fp32,bf16", help="precisions of the pair table")
    parser.add_argument("--method-precisions", default="fp32", help="precisions of the method table")
    parser.add_argument("--channels-last", action="store_true", help="channels_last models and batches")
    parser.add_argument("--anchor-every", type=int, default=4, help="re-time KD after this many methods")
    add_common_args(parser)
    args = resolve(parser.parse_args(argv), FULL, QUICK)
    args.pairs = parse_pairs(args.models, PAIRS)
    args.method_pairs = parse_pairs(args.method_models, METHOD_PAIRS)
    names = method_registry.list_methods()
    if args.methods.strip() == "all":
        args.method_names = names
    else:
        args.method_names = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in args.method_names:
            method_registry.get(m)  # unknown names fail here with the closest-name hint
    args.precision_list = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.method_precision_list = [p.strip() for p in args.method_precisions.split(",") if p.strip()]
    for p in args.precision_list + args.method_precision_list:
        if p not in ("fp32", "bf16"):
            raise SystemExit(f"unknown precision '{p}' (fp32 or bf16 on the CPU)")
    return args


class Setup:
    """Teacher, student factory and batches of one pair; every objective gets its own copies of the models."""

    def __init__(self, teacher: str, student: str, args: argparse.Namespace, dataset):
        self.args = args
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.student_name = student
        torch.manual_seed(1)
        self.teacher = prepare(models.create(teacher, self.num_classes, image_size=args.image_size),
                               args.channels_last).eval()
        loader = train_loader(dataset, args.batch_size, args.channels_last)
        self.batches = premade_batches(loader, 8)

    def student(self) -> nn.Module:
        torch.manual_seed(0)
        return prepare(models.create(self.student_name, self.num_classes, image_size=self.args.image_size),
                       self.args.channels_last)

    def distill_objective(self, method: str) -> DistillationLoss:
        """What kdlab.runner.distill.run_distill builds, in the main phase."""
        args = self.args
        objective = DistillationLoss(
            copy.deepcopy(self.teacher), self.student(), method=method,
            input_shape=(3, args.image_size, args.image_size), train_targets=self.dataset.targets,
            epochs=240, num_classes=self.num_classes, normalization=(self.dataset.mean, self.dataset.std))
        objective.set_phase("main")
        return objective

    def loader(self, steps: int) -> RepeatLoader:
        return RepeatLoader(self.batches, steps)

    def case(self, name: str, run) -> Case:
        return Case(name, run, self.loader, self.args.batch_size)


def pair_table(args: argparse.Namespace, dataset) -> list[dict]:
    """Student step, teacher forward and KD step of each pair and precision, interleaved."""
    results = []
    for teacher, student in args.pairs:
        setup = Setup(teacher, student, args, dataset)
        for precision in args.precision_list:
            label = f"{teacher}->{student} {precision}"
            log(f"{label}:")
            s = setup.case("student", TrainerStep(SupervisedObjective(setup.student()), precision,
                                                  args.channels_last).run)
            t = setup.case("teacher", TeacherForward(copy.deepcopy(setup.teacher), precision).run)
            kd = setup.case("kd", TrainerStep(setup.distill_objective("kd"), precision, args.channels_last).run)
            run_interleaved([s, t, kd], args.repeats, args.warmup, args.iters, log)
            floors = [1.0 / (1.0 / a + 1.0 / b) for a, b in zip(s.rates, t.rates)]
            results.append({
                "teacher": teacher, "student": student, "precision": precision,
                "student_images_per_s": s.rates, "teacher_forward_images_per_s": t.rates,
                "kd_images_per_s": kd.rates, "floor_images_per_s": floors,
                "student_median": s.median, "teacher_median": t.median, "kd_median": kd.median,
                "floor_median": statistics.median(floors),
                "kd_over_floor": paired_ratio(kd.rates, floors),
                "kd_over_student": paired_ratio(kd.rates, s.rates),
                "kd_spread_pct": spread(kd.rates),
                "raw": {"student": case_record(s), "teacher": case_record(t), "kd": case_record(kd)},
            })
    return results


def method_table(args: argparse.Namespace, dataset) -> list[dict]:
    """Every method relative to KD anchors timed around it (same pair, same precision, same run)."""
    results = []
    for teacher, student in args.method_pairs:
        setup = Setup(teacher, student, args, dataset)
        for precision in args.method_precision_list:
            log(f"methods {teacher}->{student} {precision}:")
            kd_step = TrainerStep(setup.distill_objective("kd"), precision, args.channels_last)
            anchor = setup.case("kd anchor", kd_step.run)
            cases: list[Case] = []
            errors: dict[str, str] = {}
            for name in args.method_names:
                try:
                    step = TrainerStep(setup.distill_objective(name), precision, args.channels_last)
                except Exception as e:  # report a method that cannot be built for this pair, keep going
                    errors[name] = f"{type(e).__name__}: {e}"
                    log(f"  {name}: cannot be built: {errors[name]}")
                    continue
                cases.append(setup.case(name, step.run))
            ratios: dict[str, list[float]] = {c.name: [] for c in cases}
            failed: dict[str, str] = {}
            every = max(1, args.anchor_every)
            for r in range(args.repeats):
                before = anchor.measure(args.warmup, args.iters)
                chunks = [cases[i:i + every] for i in range(0, len(cases), every)]
                for chunk in chunks:
                    rates = {}
                    for case in chunk:
                        if case.name in failed:
                            continue
                        try:
                            rates[case.name] = case.measure(args.warmup, args.iters)
                        except Exception as e:  # a method failing at run time is reported, not fatal
                            failed[case.name] = f"{type(e).__name__}: {e}"
                            log(f"  {case.name}: failed: {failed[case.name]}")
                    after = anchor.measure(args.warmup, args.iters)
                    reference = 0.5 * (before + after)
                    for name, rate in rates.items():
                        ratios[name].append(rate / reference)
                        log(f"  repeat {r + 1}/{args.repeats} {name}: {rate:.1f} {rate_unit()}, "
                            f"{rate / reference:.3f} x KD")
                    before = after
            rows = []
            for case in cases:
                if case.name in failed or not ratios[case.name]:
                    rows.append({"method": case.name, "error": failed.get(case.name, "not timed")})
                    continue
                overheads = [100.0 * (1.0 / q - 1.0) for q in ratios[case.name]]
                rows.append({"method": case.name, "images_per_s": case.rates, "median": case.median,
                             "ratio_to_kd": statistics.median(ratios[case.name]),
                             "overhead_pct": statistics.median(overheads), "raw": case_record(case)})
            rows += [{"method": name, "error": message} for name, message in errors.items()]
            results.append({"teacher": teacher, "student": student, "precision": precision,
                            "kd_anchor_images_per_s": anchor.rates, "kd_anchor_median": anchor.median,
                            "kd_anchor_raw": case_record(anchor),
                            "methods": rows})
    return results


DECOMPOSITIONS = ("svd", "eigh", "eig", "linalg_qr", "cholesky")  # profiler op names of matrix decompositions
# Operators with a FLOP formula in torch.utils.flop_counter: convolutions (forward and backward) and matrix products.
MATRIX_OPS = ("conv", "mm", "matmul", "linear", "addbmm", "baddbmm", "einsum", "_scaled_dot_product")
OP_KINDS = ("matrix", "decomposition", "other")


def op_kind(name: str) -> str:
    """'decomposition', 'matrix' or 'other' for a profiler operator name (e.g. 'aten::mkldnn_convolution')."""
    name = name.lower()
    if any(d in name for d in DECOMPOSITIONS):
        return "decomposition"
    if any(m in name.split("::")[-1] for m in MATRIX_OPS):
        return "matrix"
    return "other"


def step_cost(setup: Setup, method: str, precision: str) -> dict[str, float]:
    """FLOPs per image of one training step of `method` and its profiled CPU seconds per image by operator kind."""
    step = TrainerStep(setup.distill_objective(method), precision, setup.args.channels_last)
    step.run(setup.loader(1))  # warm-up: lazily built state, allocator
    with FlopCounterMode(display=False) as counter:
        step.run(setup.loader(1))
    steps = 2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step.run(setup.loader(steps))
    images = steps * setup.args.batch_size
    seconds = dict.fromkeys(OP_KINDS, 0.0)
    for e in prof.key_averages():  # self times: each microsecond counted once, in the operator that spent it
        seconds[op_kind(e.key)] += e.self_cpu_time_total / 1e6 / images
    return {"flops_per_image": counter.get_total_flops() / setup.args.batch_size,
            **{f"{kind}_s_per_image": seconds[kind] for kind in OP_KINDS}}


def cost_table(args: argparse.Namespace, dataset, methods: list[dict]) -> list[dict]:
    """For every method over the flag: its step's FLOPs relative to KD's and its extra time by operator kind."""
    results = []
    for r in methods:
        flagged = [m for m in r["methods"] if m.get("overhead_pct", 0.0) > OVERHEAD_FLAG]
        if not flagged:
            continue
        setup = Setup(r["teacher"], r["student"], args, dataset)
        kd = step_cost(setup, "kd", r["precision"])
        kd_total = sum(kd[f"{kind}_s_per_image"] for kind in OP_KINDS)
        rows = []
        for m in flagged:
            cost = step_cost(setup, m["method"], r["precision"])
            extra = {f"extra_{kind}_pct": 100 * (cost[f"{kind}_s_per_image"] - kd[f"{kind}_s_per_image"]) / kd_total
                     for kind in OP_KINDS}
            rows.append({"method": m["method"], "overhead_pct": m["overhead_pct"], **cost, **extra,
                         "profiled_overhead_pct": sum(extra.values()),
                         "flops_ratio": cost["flops_per_image"] / kd["flops_per_image"]})
        results.append({"teacher": r["teacher"], "student": r["student"], "precision": r["precision"],
                        "kd_flops_per_image": kd["flops_per_image"], "kd_profiled_s_per_image": kd_total,
                        "methods": rows})
    return results


def print_cost_tables(results: list[dict]) -> None:
    for r in results:
        print(f"\n## Where the flagged methods' time goes, {r['teacher']} -> {r['student']}, {r['precision']} "
              f"(KD step: {r['kd_flops_per_image'] / 1e9:.3f} GFLOP per image)\n")
        rows = [[m["method"], f"{m['flops_per_image'] / 1e9:.3f}", f"{m['flops_ratio']:.2f}x",
                 f"{m['overhead_pct']:+.0f}%", f"{m['profiled_overhead_pct']:+.0f}%",
                 *(f"{m[f'extra_{kind}_pct']:+.0f}%" for kind in OP_KINDS)] for m in r["methods"]]
        print(markdown_table(["method", "GFLOP per image", "FLOPs x KD", "measured overhead", "profiled overhead",
                              "of it: convolutions + matrix products", "decompositions",
                              "other operators (norms, elementwise, copies)"], rows))


def print_pair_table(results: list[dict]) -> None:
    headers = ["teacher -> student", "precision", "student step", "teacher fwd", "floor", "KD step",
               "KD / floor", "KD / student", "KD spread %"]
    rows = []
    for r in results:
        flag = "" if r["kd_over_floor"] >= FLOOR_TARGET else " (below 0.90)"
        rows.append([f"{r['teacher']} -> {r['student']}", r["precision"], r["student_median"], r["teacher_median"],
                     r["floor_median"], r["kd_median"], f"{r['kd_over_floor']:.3f}{flag}",
                     f"{r['kd_over_student']:.3f}", f"{r['kd_spread_pct']:.0f}"])
    print(f"## KD against the physical floor ({rate_unit()}, medians)\n")
    print(markdown_table(headers, rows))


def print_method_tables(results: list[dict]) -> None:
    for r in results:
        print(f"\n## Methods on {r['teacher']} -> {r['student']}, {r['precision']} "
              f"(KD anchors: median {r['kd_anchor_median']:.1f} {rate_unit()})\n")
        rows = []
        for m in sorted(r["methods"], key=lambda m: m.get("overhead_pct", float("inf"))):
            if "error" in m:
                rows.append([m["method"], "-", "-", "-", f"error: {m['error']}"])
                continue
            flag = f"over {OVERHEAD_FLAG:.0f}%" if m["overhead_pct"] > OVERHEAD_FLAG else ""
            rows.append([m["method"], m["median"], f"{m['ratio_to_kd']:.3f}", f"{m['overhead_pct']:+.1f}", flag])
        print(markdown_table(["method", rate_unit(), "x KD", "overhead vs KD %", "flag"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_runtime(args)
    env = environment()
    dataset = training_set(args)
    print(f"# Distillation throughput, batch {args.batch_size}, {args.image_size}x{args.image_size}"
          f"{', channels_last' if args.channels_last else ''}\n")
    print(describe_environment(env))
    print(f"median of {args.repeats} repeats x {args.iters} steps ({args.warmup} warm-up steps excluded); "
          f"cases interleaved per repeat; ratios = median of per-repeat ratios\n")
    started = time.perf_counter()
    pairs = pair_table(args, dataset) if args.pairs and args.precision_list else []
    methods = []
    if args.method_names != ["kd"] and args.method_pairs and args.method_precision_list:
        methods = method_table(args, dataset)
    if pairs:
        print_pair_table(pairs)
    costs = cost_table(args, dataset, methods) if methods else []
    if methods:
        print_method_tables(methods)
    if costs:
        print_cost_tables(costs)
    print("\n## Targets\n")
    checks = [[f"KD / floor {r['teacher']}->{r['student']} {r['precision']}", f">= {FLOOR_TARGET}",
               f"{r['kd_over_floor']:.3f}", "met" if r["kd_over_floor"] >= FLOOR_TARGET else "NOT met"]
              for r in pairs]
    for r in methods:
        over = [m["method"] for m in r["methods"] if m.get("overhead_pct", 0.0) > OVERHEAD_FLAG]
        broken = [m["method"] for m in r["methods"] if "error" in m]
        checks.append([f"methods over {OVERHEAD_FLAG:.0f}% beyond KD, {r['teacher']}->{r['student']} "
                       f"{r['precision']}", "none", ", ".join(over) or "none",
                       "flagged" if over else "ok"])
        if broken:
            checks.append([f"methods that failed, {r['teacher']}->{r['student']}", "none", ", ".join(broken),
                           "FAILED"])
    print(markdown_table(["check", "target", "measured", "status"], checks))
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.0f} s)")
    write_json(args.json, {"benchmark": "distill_throughput",
                           "args": {k: v for k, v in vars(args).items() if k not in ("pairs", "method_pairs")},
                           "environment": env, "pairs": pairs, "methods": methods, "costs": costs,
                           "seconds": elapsed})
    return 1 if any("error" in m for r in methods for m in r["methods"]) else 0


if __name__ == "__main__":
    sys.exit(main())
