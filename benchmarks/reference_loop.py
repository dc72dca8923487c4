"""kdlab's KD loop against the standard reference distillation loop, side by side in one run.

The reference loop is the one most CIFAR KD code runs (the CRD/RepDistiller `train_distill` pattern),
implemented here from its description, not copied:
  data     a torch Dataset that turns each uint8 image into a PIL image and runs RandomCrop(32, padding=4),
           RandomHorizontalFlip, ToTensor, Normalize per sample, batched by a DataLoader with worker
           processes (CRD's default is 8; --ref-workers times several counts and the fastest is the baseline);
  step     fp32, teacher forward under no_grad in eval mode, student forward, 0.1 x CE + 0.9 x KL(T=4) x T²,
           zero_grad / backward / SGD step, and per-step loss and top-1/top-5 read out with .item() for the
           running averages (as that loop's AverageMeters do).
kdlab's loop is `Trainer.train_epoch` on `DistillationLoss(method='kd')` fed by kdlab's TensorLoader (batched
crop + flip on uint8 tensors), in fp32 (the loop's own gain at equal precision), fp32 + channels_last, and
bf16 + channels_last where the CPU runs bf16 natively (emulated bf16 is several times slower than fp32, so
it is skipped elsewhere unless --modes names it). Every case sees the same images, batch size, models and
optimiser; cases are interleaved per repeat and the ratios are medians of per-repeat ratios.
Target: kdlab KD in its fastest mode >= 2x the fastest reference variant. With --cached, one more case: kdlab KD
with a warm teacher-output cache (`--cache-teacher`, which needs fixed augmentation: one crop/flip per sample
for all epochs), reported with its own check because it trains on less varied inputs than the reference.
The reference's DataLoader workers persist across repeats and warm-up steps are excluded, so its worker
start-up is never counted against it.
torchdistill, the maintained KD library users would otherwise pick, runs its own KD step side by side when it
is installed (`pip install 'kdlab[bench]'`; benchmarks/torchdistill_step.py says what it runs), one case per
worker count as the reference. Targets: kdlab fp32 >= 1.2x torchdistill, and kdlab in its fastest mode >= 2x
torchdistill where bf16 is native.
The arithmetic ceiling section puts the target in terms of the hardware: the reference step's FLOPs per image
(counted by torch.utils.flop_counter: teacher forward + student forward and backward) times the reference's rate
is the GFLOP/s it sustains; a large fp32 matrix product measured in the same run is the CPU's practical fp32 peak.
When 2x the reference needs more than that peak, no fp32 loop doing the same arithmetic can reach the target
here: only less arithmetic (native bf16, a cached teacher) can.

On a GPU (`--device cuda`) every loop trains there: the reference and torchdistill copy each batch from their
DataLoader to the device (a blocking copy, as the reference code's `.cuda()`), kdlab's TensorLoader holds the
split on the device (data.on_device); the matrix-product peaks are the GPU's, and bf16 counts as native.

    python benchmarks/reference_loop.py --quick                       # < 2 minutes, checks the script
    python benchmarks/reference_loop.py --threads 2 --data-root $KDLAB_DATA --json reference.json
    python benchmarks/reference_loop.py --device cuda --ref-workers 8 --data-root $KDLAB_DATA   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torchdistill_step
from common import (
    CPU,
    MODES,
    Case,
    LimitedLoader,
    Seconds,
    TrainerStep,
    add_common_args,
    case_record,
    describe_environment,
    environment,
    log,
    markdown_table,
    paired_ratio,
    parse_pairs,
    prepare,
    rate_unit,
    resolve,
    run_interleaved,
    setup_runtime,
    split_names,
    spread,
    synchronize,
    train_loader,
    training_set,
    warm_teacher_cache,
    write_json,
)
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.precision import cpu_bf16_is_native

PAIRS = (("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"))
TARGET = 2.0  # kdlab KD in its fastest mode on this CPU over the fastest reference loop
TD_TARGET_FP32, TD_TARGET_BF16 = 1.2, 2.0  # kdlab over torchdistill: fp32, and the fastest mode where bf16 is native
TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9  # the CRD codebase's KD defaults (docs/methods.md#kd)

FULL = {"repeats": 5, "iters": 10, "warmup": 3, "batch_size": 64, "image_size": 32, "train_size": 50_000}
QUICK = {"repeats": 1, "iters": 2, "warmup": 1, "batch_size": 16, "image_size": 16, "train_size": 512}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(f"{t}:{s}" for t, s in PAIRS),
                        help="pairs TEACHER:STUDENT or a model name, comma list, or all")
    parser.add_argument("--ref-workers", default="2,8",
                        help="DataLoader worker counts of the reference loop, comma list (the fastest is the "
                             "baseline; 8 is CRD's default, 2 one per core here)")
    parser.add_argument("--modes", default=None,
                        help=f"kdlab modes, comma list ({', '.join(MODES)}); default fp32,channels_last, plus "
                             f"bf16+channels_last where bf16 is native")
    parser.add_argument("--cached", action="store_true",
                        help="add kdlab KD with a warm --cache-teacher cache (fixed augmentation: one crop/flip per "
                             "sample), on the first --cache-size training images so the fill pass stays short")
    parser.add_argument("--cache-size", type=int, default=4096, help="training images of the --cached case")
    parser.add_argument("--torchdistill", choices=["auto", "yes", "no"], default="auto",
                        help="run torchdistill's KD step side by side: auto = when it is installed "
                             "(pip install 'kdlab[bench]'), yes = required")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where every loop trains (default cpu)")
    add_common_args(parser)
    args = resolve(parser.parse_args(argv), FULL, QUICK)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is available here; use --device cpu")
    if args.modes is None:
        args.modes = ("fp32,channels_last,bf16,bf16+channels_last" if args.device.type == "cuda" else
                      "fp32,channels_last" + (",bf16+channels_last" if cpu_bf16_is_native() else ""))
    args.mode_list = split_names(args.modes, list(MODES), "mode")
    args.pairs = parse_pairs(args.models, PAIRS)
    try:
        args.worker_counts = [int(w) for w in args.ref_workers.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"--ref-workers takes a comma list of integers, got '{args.ref_workers}'") from None
    if args.quick:
        args.worker_counts = [min(args.worker_counts)]
    if args.torchdistill == "yes" and not torchdistill_step.available():
        raise SystemExit("--torchdistill yes: torchdistill is not installed; pip install 'kdlab[bench]'")
    args.with_torchdistill = args.torchdistill != "no" and torchdistill_step.available()
    return args


# ------------------------------------------------------------------------------------------------ reference
class PILAugmentedDataset(Dataset):
    """CIFAR as the reference loop reads it: HWC uint8 arrays, one PIL image and transform per sample."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean, std, padding: int):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # N,H,W,C as in the CIFAR pickles
        self.targets = targets.tolist()
        size = self.images.shape[1]
        self.transform = transforms.Compose([
            transforms.RandomCrop(size, padding=padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.targets[index], index


class ReferenceBatches:
    """`steps` batches from one persistent DataLoader iterator (re-opened when an epoch ends)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.iterator: Iterator | None = None

    def take(self, steps: int) -> Iterator:
        for _ in range(steps):
            try:
                batch = next(self.iterator) if self.iterator is not None else None
            except StopIteration:
                batch = None
            if batch is None:
                self.iterator = iter(self.loader)
                batch = next(self.iterator)
            yield batch


class ReferenceStep:
    """The reference distillation step: fp32, teacher under no_grad, KD + CE, per-step .item() read-outs."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, batches: ReferenceBatches,
                 device: torch.device = CPU):
        self.device = device
        self.teacher = teacher.to(device).eval()
        self.student = student.to(device).train()
        self.batches = batches
        self.optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.meters: dict[str, list[float]] = {"loss": [], "top1": [], "top5": []}

    def run(self, steps: int) -> Seconds:
        synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        for images, targets, _index in self.batches.take(steps):
            images, targets = images.to(self.device), targets.to(self.device)
            with torch.no_grad():
                logits_t = self.teacher(images)
            logits_s = self.student(images)
            kd = F.kl_div(F.log_softmax(logits_s / TEMPERATURE, dim=1), F.softmax(logits_t / TEMPERATURE, dim=1),
                          reduction="batchmean") * TEMPERATURE ** 2
            loss = CE_WEIGHT * F.cross_entropy(logits_s, targets) + KD_WEIGHT * kd
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            top5 = logits_s.topk(5, dim=1).indices.eq(targets[:, None])
            self.meters["loss"].append(loss.item())
            self.meters["top1"].append(top5[:, 0].float().mean().item())
            self.meters["top5"].append(top5.any(dim=1).float().mean().item())
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu


# ------------------------------------------------------------------------------------------------ cases
def pair_cases(teacher_name: str, student_name: str, args: argparse.Namespace, dataset) -> dict[str, Case]:
    """The reference loop (one case per worker count) and kdlab's KD loop in each of --modes."""
    torch.manual_seed(1)
    teacher = models.create(teacher_name, dataset.num_classes, image_size=args.image_size).eval()
    torch.manual_seed(0)
    student = models.create(student_name, dataset.num_classes, image_size=args.image_size)
    reference_data = PILAugmentedDataset(dataset.images, dataset.targets, dataset.mean, dataset.std,
                                         padding=max(1, args.image_size // 8))
    cases: dict[str, Case] = {}
    for workers in args.worker_counts:
        loader = DataLoader(reference_data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, persistent_workers=workers > 0)
        step = ReferenceStep(copy.deepcopy(teacher), copy.deepcopy(student), ReferenceBatches(loader), args.device)
        name = f"reference fp32, {workers} workers"
        cases[name] = Case(name, step.run, lambda n: n, args.batch_size)
        if args.with_torchdistill:
            td = torchdistill_step.TorchdistillStep(copy.deepcopy(teacher), copy.deepcopy(student), reference_data,
                                                    args.batch_size, workers, TEMPERATURE, CE_WEIGHT,
                                                    device=args.device)
            name = f"torchdistill fp32, {workers} workers"
            cases[name] = Case(name, td.run, lambda n: n, args.batch_size)
    for mode in args.mode_list:
        precision, channels_last = MODES[mode]
        objective = kd_objective(teacher, student, dataset, args, channels_last)
        loader = train_loader(dataset, args.batch_size, channels_last, device=args.device)
        name = f"kdlab {mode}"
        cases[name] = Case(name, TrainerStep(objective, precision, channels_last, args.device).run,
                           lambda n, ld=loader: LimitedLoader(ld, n), args.batch_size)
    if args.cached:
        mode = args.mode_list[-1]
        precision, channels_last = MODES[mode]
        subset = dataset.subset(torch.arange(min(args.cache_size, len(dataset))))
        objective = kd_objective(teacher, student, subset, args, channels_last)
        log(f"  filling the teacher cache: {len(subset)} images through {teacher_name}")
        seconds = warm_teacher_cache(objective, subset, args.batch_size, channels_last, precision, args.device)
        log(f"  {objective.teacher_cache.describe()} in {seconds:.1f} s")
        loader = train_loader(subset, args.batch_size, channels_last, fixed_augmentation=True, device=args.device)
        name = f"kdlab {mode}, cached teacher"
        cases[name] = Case(name, TrainerStep(objective, precision, channels_last, args.device).run,
                           lambda n, ld=loader: LimitedLoader(ld, n), args.batch_size)
    return cases


def kd_objective(teacher, student, dataset, args: argparse.Namespace, channels_last: bool) -> DistillationLoss:
    """kdlab's KD objective in its main phase, as kdlab.runner.common builds it, on copies of the models."""
    device = getattr(args, "device", torch.device("cpu"))
    objective = DistillationLoss(
        prepare(copy.deepcopy(teacher).to(device), channels_last), prepare(copy.deepcopy(student).to(device),
                                                                            channels_last),
        method="kd", input_shape=(dataset.in_channels, args.image_size, args.image_size),
        train_targets=dataset.targets, epochs=240, num_classes=dataset.num_classes,
        hparams={"kd": {"weight": KD_WEIGHT, "temperature": TEMPERATURE}}, ce_weight=CE_WEIGHT).to(device)
    objective.set_phase("main")
    return objective


# ------------------------------------------------------------------------------------------------ ceiling
def step_flops_per_image(teacher_name: str, student_name: str, args: argparse.Namespace, dataset) -> float:
    """FLOPs of one reference KD step per image: teacher forward + student forward and backward."""
    teacher = models.create(teacher_name, dataset.num_classes, image_size=args.image_size).eval()
    student = models.create(student_name, dataset.num_classes, image_size=args.image_size)
    images = torch.randn(args.batch_size, dataset.in_channels, args.image_size, args.image_size)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            teacher(images)
        student(images).sum().backward()
    return counter.get_total_flops() / args.batch_size


def fp32_matmul_peak(repeats: int, size: int = 2048, products: int = 4,
                     dtype: torch.dtype = torch.float32, device: torch.device = CPU) -> list[float]:
    """GFLOP/s of a large matrix product (fp32, or bf16 where it is native), one value per repeat: the CPU's
    practical peak in that precision (on the benchmark's clock, so it compares with the loops' rates under
    --clock cpu too). On a GPU: 8192x8192 products, 16 per repeat, synchronised, on the wall clock (fp32 matrix
    products there run without TF32, torch's default, while convolutions use TF32 by default)."""
    import common

    if device.type == "cuda":
        size, products = 8192, 16
    clock = time.process_time if common.CLOCK == "cpu" and device.type != "cuda" else time.perf_counter
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b  # warm-up: thread pool and caches
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        for _ in range(products):
            a @ b
        synchronize(device)
        rates.append(products * 2 * size ** 3 / (clock() - start) / 1e9)
    return rates


def bf16_native(args: argparse.Namespace) -> bool:
    """bf16 runs natively on GPUs, and on CPUs with AVX512-BF16/AMX."""
    return getattr(args, "device", torch.device("cpu")).type == "cuda" or cpu_bf16_is_native()


def ceiling_rows(results: list[dict], peak: float) -> list[list]:
    """Per pair: the reference's sustained GFLOP/s, what 2x of it needs, and that as a share of the fp32 peak."""
    rows = []
    for r in results:
        sustained = r["baseline_median"] * r["flops_per_image"] / 1e9
        needed = TARGET * sustained
        rows.append([f"{r['teacher']} -> {r['student']}", f"{r['flops_per_image'] / 1e9:.3f}",
                     f"{sustained:.0f}", f"{needed:.0f}", f"{needed / peak:.2f}",
                     "yes" if needed <= peak else "no: above the fp32 peak"])
    return rows


def peak_share_rows(results: list[dict], peaks: dict[str, float]) -> list[list]:
    """Per loop: the GFLOP/s it sustains (rate x FLOPs per image) and its share of the peak that bounds it
    (the bf16 peak for bf16 modes, else the fp32 one). Cached-teacher cases skip the teacher's forward, so
    their FLOPs per image are not the step's and they are left out."""
    rows = []
    for r in results:
        for name, c in r["cases"].items():
            if name.endswith("cached teacher"):
                continue
            bound = "bf16" if "bf16" in name and "bf16" in peaks else "fp32"
            sustained = c["median"] * r["flops_per_image"] / 1e9
            rows.append([f"{r['teacher']} -> {r['student']}", name, f"{sustained:.0f}", bound,
                         f"{100 * sustained / peaks[bound]:.0f}%"])
    return rows


def bench_pair(teacher: str, student: str, args: argparse.Namespace, dataset) -> dict:
    log(f"{teacher} -> {student}:")
    flops = step_flops_per_image(teacher, student, args, dataset)
    cases = pair_cases(teacher, student, args, dataset)
    run_interleaved(list(cases.values()), args.repeats, args.warmup, args.iters, log)
    references = {name: c for name, c in cases.items() if name.startswith("reference")}
    # The baseline per repeat is the fastest reference variant of that repeat: the strictest comparison.
    baseline = [max(rates) for rates in zip(*(c.rates for c in references.values()))]
    return {
        "teacher": teacher, "student": student, "flops_per_image": flops,
        "cases": {name: {"median": c.median, "spread_pct": spread(c.rates), "raw": case_record(c)}
                  for name, c in cases.items()},
        "baseline_images_per_s": baseline,
        "baseline_median": statistics.median(baseline),
        "speedup": {name: paired_ratio(c.rates, baseline) for name, c in cases.items()
                    if name.startswith("kdlab")},
        "vs_torchdistill": vs_fastest(cases, "torchdistill"),
    }


def vs_fastest(cases: dict[str, Case], prefix: str) -> dict[str, float]:
    """Each kdlab case's median per-repeat ratio to the fastest `prefix` case of that repeat ({} without any)."""
    others = [c for name, c in cases.items() if name.startswith(prefix)]
    if not others:
        return {}
    fastest = [max(rates) for rates in zip(*(c.rates for c in others))]
    return {name: paired_ratio(c.rates, fastest) for name, c in cases.items() if name.startswith("kdlab")}


def torchdistill_checks(r: dict, native_bf16: bool) -> list[list]:
    """kdlab in fp32 (its faster fp32 layout: plain or channels_last) >= 1.2x torchdistill; where bf16 is native,
    kdlab's fastest mode >= 2x."""
    ratios = {k: v for k, v in r["vs_torchdistill"].items() if not k.endswith("cached teacher")}
    if not ratios:
        return []
    pair = f"{r['teacher']}->{r['student']}"
    checks = []
    fp32 = {k: v for k, v in ratios.items() if "bf16" not in k and "fp16" not in k}
    if fp32:
        best = max(fp32, key=fp32.get)
        checks.append([f"{best} (fastest fp32) KD / fastest torchdistill, {pair}", f">= {TD_TARGET_FP32:.1f}x",
                       f"{fp32[best]:.2f}x", "met" if fp32[best] >= TD_TARGET_FP32 else "NOT met"])
    if native_bf16:
        best = max(ratios, key=ratios.get)
        checks.append([f"{best} KD / fastest torchdistill, {pair}", f">= {TD_TARGET_BF16:.1f}x",
                       f"{ratios[best]:.2f}x", "met" if ratios[best] >= TD_TARGET_BF16 else "NOT met"])
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_runtime(args)
    env = environment()
    dataset = training_set(args)
    print(f"# kdlab KD loop vs the reference loop, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{dataset.name} ({len(dataset)} images), on {args.device}\n")
    print(describe_environment(env))
    print(f"median of {args.repeats} repeats x {args.iters} steps ({args.warmup} warm-up steps excluded); "
          f"cases interleaved per repeat; speed-ups = median of per-repeat ratios to the fastest reference\n")
    started = time.perf_counter()
    results = [bench_pair(t, s, args, dataset) for t, s in args.pairs]

    unit = rate_unit()
    rows = []
    for r in results:
        for name, c in r["cases"].items():
            ratio, td = r["speedup"].get(name), r["vs_torchdistill"].get(name)
            rows.append([f"{r['teacher']} -> {r['student']}", name, c["median"],
                         "-" if ratio is None else f"{ratio:.2f}x", "-" if td is None else f"{td:.2f}x",
                         f"{c['spread_pct']:.0f}"])
    print(markdown_table(["teacher -> student", "loop", unit, "vs fastest reference", "vs fastest torchdistill",
                          "spread %"], rows))
    if not args.with_torchdistill:
        print("\n(torchdistill not run: " + ("--torchdistill no" if args.torchdistill == "no" else
                                              "not installed; pip install 'kdlab[bench]'") + ")")
    print("\n## Targets\n")
    checks = []
    for r in results:
        for cached in (False, True):
            speedups = {k: v for k, v in r["speedup"].items() if k.endswith("cached teacher") == cached}
            if not speedups:
                continue
            best = max(speedups, key=speedups.get)
            ratio = speedups[best]
            checks.append([f"{best} KD / fastest reference, {r['teacher']}->{r['student']}",
                           f">= {TARGET:.1f}x", f"{ratio:.2f}x", "met" if ratio >= TARGET else "NOT met"])
        checks += torchdistill_checks(r, bf16_native(args))
    print(markdown_table(["check", "target", "measured", "status"], checks))
    peak_rates = fp32_matmul_peak(args.repeats, device=args.device)
    peak = statistics.median(peak_rates)
    bf16_rates = (fp32_matmul_peak(args.repeats, dtype=torch.bfloat16, device=args.device) if bf16_native(args)
                  else [])
    peaks = {"fp32": peak, **({"bf16": statistics.median(bf16_rates)} if bf16_rates else {})}
    print(f"\n## Arithmetic ceiling (fp32 matrix product {peak:.0f} GFLOP/s, median of {len(peak_rates)})\n")
    print(markdown_table(["teacher -> student", "GFLOP per image", "reference GFLOP/s", f"{TARGET:.0f}x needs GFLOP/s",
                          "share of fp32 peak", f"{TARGET:.0f}x possible in fp32"], ceiling_rows(results, peak)))
    bf16_text = f", bf16 {peaks['bf16']:.0f} GFLOP/s" if "bf16" in peaks else " (bf16 not native here)"
    print(f"\n## Share of the peak (matrix products: fp32 {peak:.0f} GFLOP/s{bf16_text})\n")
    print(markdown_table(["teacher -> student", "loop", "GFLOP/s", "bounded by", "share of that peak"],
                         peak_share_rows(results, peaks)))
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.0f} s)")
    write_json(args.json, {"benchmark": "reference_loop",
                           "args": {k: str(v) if k == "device" else v for k, v in vars(args).items()
                                    if k != "pairs"},
                           "environment": env, "results": results,
                           "fp32_matmul_gflops": peak_rates, "bf16_matmul_gflops": bf16_rates,
                           "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
