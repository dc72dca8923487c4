"""Shared helpers of the throughput benchmarks: data, the trainer-driven step, interleaved timing, tables.

Timing is done through `kdlab.engine.trainer.Trainer.train_epoch` itself (fed by a loader that yields a
fixed number of batches), so the numbers measure the loop `kdlab train` / `kdlab distill` really run,
not a copy of it. The machine is shared, so cases are interleaved (round-robin within every repeat) and
ratios are taken per repeat between cases measured next to each other, then the median is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kdlab
from kdlab import models
from kdlab.config import Config
from kdlab.data import InMemoryDataset, TensorLoader
from kdlab.data import load as load_dataset
from kdlab.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from kdlab.engine.precision import autocast
from kdlab.engine.trainer import Trainer

CPU = torch.device("cpu")
CLOCK = "wall"  # which clock the reported rates use; set from --clock by setup_runtime
LR = 0.05  # SGD learning rate of every step (the CIFAR recipe); set from --lr by setup_runtime

Seconds = tuple[float, float]  # (wall-clock, process CPU) seconds of one timed run

# Precision modes of the benchmarks: name -> (precision, channels_last).
MODES: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "channels_last": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+channels_last": ("bf16", True),
}


# ------------------------------------------------------------------------------------------------ CLI
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options both scripts share; None defaults are filled by `resolve` (full or --quick values)."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script in < 2 minutes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median reported)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each timed repeat")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (the CIFAR recipe)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (32 = CIFAR; --quick: 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    parser.add_argument("--data-root", default=None,
                        help="read real CIFAR-100 (cifar-100-python/) from here; default: synthetic uint8 data")
    parser.add_argument("--train-size", type=int, default=None,
                        help="synthetic training-set size (default 50000 like CIFAR; --quick: 1024)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: images per second; cpu: images per CPU-second of this process, which "
                             "ignores time spent descheduled on a busy machine (meaningful with --threads 1)")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="SGD learning rate (the CIFAR recipe's 0.05); 0 runs the identical computation "
                             "without moving the weights, for methods that diverge on random data")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")


def resolve(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> argparse.Namespace:
    """Fill every option left at None with its --quick or full-run default (explicit flags always win)."""
    defaults = quick if args.quick else full
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def split_names(text: str, known: Sequence[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'] ('all' -> every known name), with a one-line error for an unknown name."""
    if text.strip() == "all":
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown {what} '{name}'; choose from: {', '.join(known)}")
    return names


def parse_pairs(text: str, known: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """'resnet56:resnet20,wrn_16_2' -> pairs; a bare name picks the known pairs with that student or teacher."""
    if text.strip() == "all":
        return list(known)
    pairs: list[tuple[str, str]] = []
    zoo = models.list_models(include_torchvision=False)
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if ":" in item:
            teacher, student = (s.strip() for s in item.split(":", 1))
            for name in (teacher, student):
                if name not in zoo:
                    raise SystemExit(f"unknown model '{name}' in '{item}'; see 'kdlab list models'")
            found = [(teacher, student)]
        else:
            found = [p for p in known if item in p]
            if not found:
                raise SystemExit(f"'{item}' is in no default pair ({', '.join(f'{t}:{s}' for t, s in known)}); "
                                 f"name a pair as TEACHER:STUDENT")
        pairs += [p for p in found if p not in pairs]
    return pairs


def setup_runtime(args: argparse.Namespace) -> None:
    global CLOCK, LR
    CLOCK, LR = args.clock, args.lr
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions, CPU, bf16 hardware support, threads, load on the machine."""
    flags = cpu_flags()
    return {
        "kdlab": kdlab.__version__,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "load_average_start": os.getloadavg(),
        "clock": CLOCK,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe_environment(env: dict[str, Any]) -> str:
    return (f"kdlab {env['kdlab']}, torch {env['torch']}, {env['cpu']} ({env['cpu_count']} CPUs), "
            f"threads {env['threads']}, mkldnn {'on' if env['mkldnn_enabled'] else 'off'}, "
            f"ISA {env['cpu_capability']}, bf16 flags: {', '.join(env['bf16_flags']) or 'none'}, "
            + (f"GPU {env['gpu']}, " if env.get("gpu") else "") +
            f"load average at start {env['load_average_start'][0]:.2f}; rates on the {env['clock']} clock"
            + (" (images per CPU-second of this process)" if env["clock"] == "cpu" else ""))


# ------------------------------------------------------------------------------------------------ data
def synthetic_cifar(size: int, image_size: int = 32, num_classes: int = 100, seed: int = 0) -> InMemoryDataset:
    """CIFAR-shaped uint8 training set (random pixels, balanced labels) with the CIFAR augmentation."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    targets = torch.arange(size) % num_classes
    targets = targets[torch.randperm(size, generator=g)]
    return InMemoryDataset(name="synthetic-cifar100", images=images, targets=targets, num_classes=num_classes,
                           class_names=[str(i) for i in range(num_classes)], mean=CIFAR100_MEAN, std=CIFAR100_STD,
                           crop_padding=max(1, image_size // 8), flip=True)


def training_set(args: argparse.Namespace) -> InMemoryDataset:
    """Real CIFAR-100 (train split) with --data-root, else synthetic data; resized to --image-size."""
    if args.data_root:
        dataset = load_dataset("cifar100", root=args.data_root, train=True)
        return dataset.resized(args.image_size)
    return synthetic_cifar(args.train_size, args.image_size)


def train_loader(dataset: InMemoryDataset, batch_size: int, channels_last: bool,
                 fixed_augmentation: bool = False, device: str | torch.device = "cpu") -> TensorLoader:
    """The training loader `kdlab.data.build_loaders` makes: shuffled, augmented, on `device` (on CUDA the split
    is device-resident, data.on_device=auto); with fixed_augmentation, one crop/flip per sample for all epochs
    (what `--cache-teacher` needs)."""
    return TensorLoader(dataset, batch_size, shuffle=True, drop_last=True, augment=True, seed=0,
                        device=device, channels_last=channels_last, fixed_augmentation=fixed_augmentation)


class LimitedLoader:
    """The first `steps` batches of a loader per epoch (its set_epoch passed through)."""

    def __init__(self, loader, steps: int):
        self.loader = loader
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if i >= self.steps:
                return
            yield batch


class RepeatLoader:
    """Pre-made batches already in memory, cycled for `steps` steps: the loader costs nothing."""

    def __init__(self, batches: Sequence[tuple[torch.Tensor, ...]], steps: int):
        self.batches = list(batches)
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]


def premade_batches(loader: TensorLoader, count: int) -> list[tuple[torch.Tensor, ...]]:
    """`count` augmented batches from the loader, kept in memory (distinct images, valid dataset indices)."""
    loader.set_epoch(0)
    return [batch for _, batch in zip(range(count), loader)]


# ------------------------------------------------------------------------------------------------ steps
def bench_config(precision: str, channels_last: bool) -> Config:
    """The CIFAR recipe's optimiser settings; logging as rarely as the trainer allows (it syncs on step 1)."""
    config = Config(precision=precision, channels_last=channels_last, device="cpu", log_every=10**9)
    config.optim.epochs = 10**6  # the LR schedule never matters for speed; keep it off its milestones
    config.optim.lr, config.optim.momentum, config.optim.weight_decay = LR, 0.9, 5e-4
    return config


def prepare(model: nn.Module, channels_last: bool) -> nn.Module:
    """What kdlab.runner.common.prepare_model does on the CPU."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


_RUN_DIR = tempfile.mkdtemp(prefix="kdlab-bench-")  # Trainer wants one; train_epoch never writes to it


class TrainerStep:
    """`Trainer.train_epoch` over a loader of `len(loader)` batches; `run(loader)` returns the seconds taken (on a
    CUDA device, up to the end of the queued work: synchronised before and after)."""

    def __init__(self, objective: nn.Module, precision: str, channels_last: bool, device: torch.device = CPU):
        config = bench_config(precision, channels_last)
        config.device = torch.device(device).type
        self.trainer = Trainer(config, objective, None, None, _RUN_DIR, {}, torch.device(device), quiet=True)
        self.device = torch.device(device)
        self.epoch = 0

    def run(self, loader) -> Seconds:
        self.trainer.train_loader = loader
        self.epoch += 1
        synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        self.trainer.train_epoch(self.epoch)
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TeacherForward:
    """The teacher's share of a distillation step: eval mode, inference mode, autocast as the trainer sets."""

    def __init__(self, model: nn.Module, precision: str):
        self.model = model.eval().requires_grad_(False)
        self.precision = precision

    def run(self, loader) -> Seconds:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode(), autocast(CPU, self.precision):
            for images, _targets, _indices in loader:
                self.model(images)
        return time.perf_counter() - start, time.process_time() - cpu


def warm_teacher_cache(objective, dataset: InMemoryDataset, batch_size: int, channels_last: bool,
                       precision: str, device: torch.device = CPU) -> float:
    """Attach a TeacherCache to a KD objective and fill it with one fixed-augmentation pass of the teacher over
    `dataset` (what the first epoch of a `--cache-teacher` run does); returns the seconds the fill took."""
    from kdlab.distillation.teacher_cache import TeacherCache

    objective.teacher_cache = TeacherCache(dataset.indices, num_teachers=1)
    full = TensorLoader(dataset, batch_size, shuffle=False, augment=True, seed=0, channels_last=channels_last,
                        fixed_augmentation=True, device=device)
    start = time.perf_counter()
    with autocast(torch.device(device), precision):
        for images, _targets, indices in full:
            objective.teacher_outputs(images, 0, indices)
    assert objective.teacher_cache.complete, "the fill pass must cover every sample"
    return time.perf_counter() - start


def loader_only(loader) -> Seconds:
    """Iterate a loader without training: the data pipeline's own cost per batch."""
    start, cpu = time.perf_counter(), time.process_time()
    for _batch in loader:
        pass
    return time.perf_counter() - start, time.process_time() - cpu


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Case:
    """One thing to time: `run(loader)` over `steps` batches; `loader(steps)` makes a loader for it."""

    name: str
    run: Callable[[Any], Seconds]
    loader: Callable[[int], Any]
    batch_size: int
    wall_rates: list[float] = field(default_factory=list)  # images/s, one per repeat
    cpu_rates: list[float] = field(default_factory=list)  # images per process CPU-second, one per repeat

    def measure(self, warmup: int, iters: int) -> float:
        """Time one repeat (after `warmup` untimed steps); returns its rate on the selected clock."""
        if warmup:
            self.run(self.loader(warmup))
        wall, cpu = self.run(self.loader(iters))
        images = iters * self.batch_size
        self.wall_rates.append(images / wall)
        self.cpu_rates.append(images / cpu if cpu > 0 else float("nan"))
        return self.rates[-1]

    @property
    def rates(self) -> list[float]:
        return self.cpu_rates if CLOCK == "cpu" else self.wall_rates

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


def rate_unit() -> str:
    """Unit of the reported rates: images per wall-clock second, or per CPU-second of this process."""
    return "img/CPU-s" if CLOCK == "cpu" else "img/s"


def case_record(case: Case) -> dict[str, list[float]]:
    """Both clocks' per-repeat rates of a case, for the JSON output."""
    return {"wall_images_per_s": case.wall_rates, "cpu_images_per_s": case.cpu_rates}


def run_interleaved(cases: Sequence[Case], repeats: int, warmup: int, iters: int,
                    progress: Callable[[str], None] | None = None) -> None:
    """Round-robin: every repeat times every case once, so load from other users hits all cases alike."""
    for r in range(repeats):
        for case in cases:
            rate = case.measure(warmup, iters)
            if progress:
                progress(f"  repeat {r + 1}/{repeats} {case.name}: {rate:.1f} {rate_unit()}")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of numerator[r] / denominator[r] (cases timed next to each other)."""
    ratios = [n / d for n, d in zip(numerator, denominator) if d > 0]
    return statistics.median(ratios) if ratios else float("nan")


def spread(rates: Sequence[float]) -> float:
    """(max - min) / median in %, a rough noise indicator for a case."""
    if len(rates) < 2:
        return 0.0
    med = statistics.median(rates)
    return 100.0 * (max(rates) - min(rates)) / med if med else float("nan")


# ------------------------------------------------------------------------------------------------ output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        payload = dict(payload)
        payload.setdefault("environment", {})["load_average_end"] = os.getloadavg()
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {path}")


def log(message: str) -> None:
    """Progress to stderr, so stdout holds only the tables."""
    import sys

    print(message, file=sys.stderr, flush=True)
