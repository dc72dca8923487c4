"""kdlab's plain baseline (`kdlab train`) against the RepDistiller supervised loop, in accuracy, not speed.

Both sides train the same architecture on the same CIFAR-100 images with the same recipe (SGD 0.9, weight
decay 5e-4 on every parameter, batch 64, x0.1 at 62.5/75/87.5% of the epochs, as 150/180/210 of 240) and
several seeds each; the script prints per-seed last and best test top-1, mean ± std per side and the
difference with its standard error.

  kdlab      `kdlab.engine.trainer.Trainer.train_epoch` on `SupervisedObjective(models.create(...))`, fed
             by `TensorLoader` (batched crop + flip on uint8 tensors), evaluated by
             `kdlab.engine.evaluate.evaluate`: the pieces `kdlab train` (kdlab.runner.train.run_train) runs.
  reference  the loop of github.com/HobbitLong/RepDistiller (`train_teacher.py`, `helper/loops.py`
             train_vanilla, `helper/util.py` adjust_learning_rate, `dataset/cifar100.py`,
             `models/resnet.py`), written here from that description: a Dataset making one PIL image per
             sample with RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize (its
             mean/std); a shuffling DataLoader that keeps the last partial batch; its own ResNet (conv
             kaiming_normal_ fan_out, BN weight 1 / bias 0, Linear left at PyTorch's default); SGD over
             model.parameters(); the LR set at the start of each 1-indexed epoch to
             lr * 0.1 ** sum(epoch > milestones); nn.CrossEntropyLoss; model.eval() for the test pass.

The training images are one class-stratified subset (--fraction, drawn with --subset-seed, the same for
every run); the test set is CIFAR-100's test split (or its first --test-size images). Runs alternate
between the sides, so machine load affects neither side more than the other. Without a data root
(--data-root or $KDLAB_DATA) the script runs on synthetic CIFAR-shaped data, which only checks the code.

    python benchmarks/baseline_parity.py --quick                      # < 1 minute, checks the script
    python benchmarks/baseline_parity.py --data-root $KDLAB_DATA --json parity.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from common import cpu_model, log, markdown_table, synthetic_cifar, write_json
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import kdlab
from kdlab import models
from kdlab.config import Config
from kdlab.data import InMemoryDataset, TensorLoader
from kdlab.data import load as load_dataset
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.evaluate import evaluate
from kdlab.engine.objectives import SupervisedObjective
from kdlab.engine.trainer import Trainer

CPU = torch.device("cpu")
# RepDistiller's dataset/cifar100.py normalisation (kdlab's CIFAR100_MEAN/STD differ in the 4th decimal).
REF_MEAN, REF_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
MILESTONE_SHARES = (150 / 240, 180 / 240, 210 / 240)  # the CIFAR recipe's decays, as shares of the epochs
# Reference ResNets: depth and (stem, stage1, stage2, stage3) widths, as RepDistiller's models/resnet.py.
REF_RESNETS = {"resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)),
               "resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
               "resnet8x4": (8, (32, 64, 128, 256)), "resnet32x4": (32, (32, 64, 128, 256))}

FULL = {"fraction": 0.1, "epochs": 10, "seeds": "0,1,2", "test_size": 0, "train_size": 5000}
QUICK = {"fraction": 0.02, "epochs": 2, "seeds": "0", "test_size": 1000, "train_size": 512}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny protocol (1 seed, 2 epochs): checks the script")
    parser.add_argument("--model", default="resnet8", choices=sorted(REF_RESNETS),
                        help="architecture (default resnet8)")
    parser.add_argument("--data-root", default=os.environ.get("KDLAB_DATA") or None,
                        help="folder holding cifar-100-python/ (default $KDLAB_DATA; none: synthetic data)")
    parser.add_argument("--fraction", type=float, default=None, help="stratified share of the training split (0.1)")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the training subset (same for all runs)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (15)")
    parser.add_argument("--seeds", default=None, help="comma list of run seeds, used by both sides (0,1,2)")
    parser.add_argument("--sides", default="kdlab,reference", help="which loops to run, comma list")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-from", type=float, default=0.75,
                        help="evaluate every epoch from this share of the run on (best = max over those)")
    parser.add_argument("--test-size", type=int, default=None, help="first N test images (0: all 10,000)")
    parser.add_argument("--train-size", type=int, default=None, help="synthetic data only: training images")
    parser.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers of the reference loop")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write every number as JSON")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes a comma list of integers, got '{args.seeds}'") from None
    args.side_list = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.side_list) - set(SIDES))
    if unknown or not args.side_list or not args.seed_list:
        raise SystemExit(f"--sides takes a comma list of {', '.join(SIDES)} and --seeds at least one seed")
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    return args


def milestones(epochs: int) -> list[int]:
    """The recipe's decay epochs scaled to a run of `epochs` (240 -> 150, 180, 210)."""
    return sorted({max(1, round(share * epochs)) for share in MILESTONE_SHARES if round(share * epochs) < epochs})


def eval_epochs(epochs: int, eval_from: float) -> list[int]:
    first = min(epochs, max(1, math.ceil(eval_from * epochs)))
    return list(range(first, epochs + 1))


# ------------------------------------------------------------------------------------------------ data
def datasets(args: argparse.Namespace) -> tuple[InMemoryDataset, InMemoryDataset]:
    """The training subset and the test set, the same for every run of both sides."""
    if args.data_root:
        train = load_dataset("cifar100", root=args.data_root, train=True, fraction=args.fraction,
                             seed=args.subset_seed)
        test = load_dataset("cifar100", root=args.data_root, train=False)
    else:
        train = synthetic_cifar(args.train_size, seed=args.subset_seed)
        test = synthetic_cifar(max(args.test_size, 100), seed=args.subset_seed + 1)
    if args.test_size:
        test = test.subset(torch.arange(min(args.test_size, len(test))))
    return train, test


class PILDataset(Dataset):
    """CIFAR as RepDistiller's dataset reads it: HWC uint8 arrays, one PIL image and transform per sample."""

    def __init__(self, data: InMemoryDataset, train: bool):
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = data.targets.tolist()
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(REF_MEAN, REF_STD)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]


# ------------------------------------------------------------------------------------------------ reference
class RefBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN + shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet(nn.Module):
    """RepDistiller's CIFAR ResNet (models/resnet.py), written from its description, with its initialisation."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, inplanes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            layers.append(nn.Sequential(*(RefBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1)
                                          for i in range(n))))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # the Linear layer keeps PyTorch's default (uniform weight and bias)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))  # = AvgPool2d(8) at 32px


def reference_lr(base_lr: float, epoch: int, decay_epochs: list[int], rate: float = 0.1) -> float:
    """RepDistiller's adjust_learning_rate for 1-indexed `epoch`: base * rate ** #(milestones passed)."""
    return base_lr * rate ** int(np.sum(epoch > np.asarray(decay_epochs)))


def reference_set_lr(optimizer: torch.optim.Optimizer, base_lr: float, epoch: int, decay_epochs: list[int]) -> float:
    """The LR of 1-indexed `epoch`, written into every parameter group before the epoch starts."""
    lr = reference_lr(base_lr, epoch, decay_epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def reference_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: nn.Module) -> int:
    """train_vanilla: train mode, then per batch forward, loss, zero_grad, backward, step; returns images seen."""
    model.train()
    seen = 0
    for images, targets, *_ in loader:
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(targets)
    return seen


def run_reference(seed: int, train: InMemoryDataset, test: InMemoryDataset, args: argparse.Namespace) -> dict:
    ckpt.seed_everything(seed)
    depth, widths = REF_RESNETS[args.model]
    model = RefResNet(depth, widths, train.num_classes)
    loader = DataLoader(PILDataset(train, True), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.ref_workers, generator=torch.Generator().manual_seed(seed))
    test_loader = DataLoader(PILDataset(test, False), batch_size=256, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    decays, evaluated = milestones(args.epochs), eval_epochs(args.epochs, args.eval_from)
    curve, lrs, seen, train_seconds = {}, [], 0, 0.0
    for epoch in range(1, args.epochs + 1):
        lrs.append(reference_set_lr(optimizer, args.lr, epoch, decays))
        start = time.perf_counter()
        seen += reference_epoch(model, loader, optimizer, criterion)
        train_seconds += time.perf_counter() - start
        if epoch in evaluated:
            curve[epoch] = reference_top1(model, test_loader)
    return {"curve": curve, "lrs": lrs, "images_per_s": seen / max(train_seconds, 1e-9)}


@torch.no_grad()
def reference_top1(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for images, targets in loader:
        correct += int((model(images).argmax(1) == targets).sum())
        total += len(targets)
    return 100.0 * correct / total


# ------------------------------------------------------------------------------------------------ kdlab
def kdlab_config(seed: int, args: argparse.Namespace) -> Config:
    """The CIFAR recipe of `kdlab train`, shortened to --epochs with its milestones scaled."""
    config = Config(model=args.model, seed=seed, device="cpu", log_every=10**9)
    config.data.name, config.data.batch_size = "cifar100", args.batch_size
    config.optim.epochs, config.optim.lr, config.optim.milestones = args.epochs, args.lr, milestones(args.epochs)
    return config


def run_kdlab(seed: int, train: InMemoryDataset, test: InMemoryDataset, args: argparse.Namespace) -> dict:
    """kdlab.runner.train.run_train's pieces: seed, model, the train loader build_loaders makes, Trainer, evaluate."""
    config = kdlab_config(seed, args)
    ckpt.seed_everything(seed)
    model = models.create(args.model, train.num_classes, in_channels=train.in_channels, image_size=train.image_size)
    single = len(train) > args.batch_size and len(train) % args.batch_size == 1  # as build_loaders decides
    loader = TensorLoader(train, args.batch_size, shuffle=True, drop_last=single, augment=True, seed=seed)
    test_loader = TensorLoader(test, 256, shuffle=False, augment=False, pad_shards=False)
    with tempfile.TemporaryDirectory(prefix="kdlab-parity-") as run_dir:
        trainer = Trainer(config, SupervisedObjective(model), loader, test_loader, run_dir, {}, CPU, quiet=True)
        evaluated = eval_epochs(args.epochs, args.eval_from)
        curve, lrs, seen, train_seconds = {}, [], 0, 0.0
        for epoch in range(1, trainer.epochs + 1):
            record = trainer.train_epoch(epoch)
            lrs.append(record["lr"])
            seen += round(record["images_per_sec"] * record["epoch_seconds"])
            train_seconds += record["epoch_seconds"]
            if epoch in evaluated:
                curve[epoch] = evaluate(model, test_loader, CPU, num_classes=train.num_classes).top1
    return {"curve": curve, "lrs": lrs, "images_per_s": seen / max(train_seconds, 1e-9)}


SIDES = {"kdlab": run_kdlab, "reference": run_reference}


# ------------------------------------------------------------------------------------------------ stats
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and its standard error sqrt(s_a²/n_a + s_b²/n_b) (nan with a single run per side)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return ma - mb, math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = datasets(args)
    source = f"CIFAR-100 from {args.data_root}" if args.data_root else "synthetic CIFAR-shaped data"
    print(f"# Plain baseline: kdlab train vs the RepDistiller loop, {args.model}, {source}\n")
    print(f"{len(train)} training images (stratified fraction {args.fraction}, subset seed {args.subset_seed}), "
          f"{len(test)} test images; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} x0.1 after epochs "
          f"{milestones(args.epochs)}, SGD 0.9, wd 5e-4; best = max over epochs "
          f"{eval_epochs(args.epochs, args.eval_from)}; seeds {args.seed_list}")
    print(f"kdlab {kdlab.__version__}, torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    started = time.perf_counter()
    runs: dict[str, dict[int, dict]] = {side: {} for side in args.side_list}
    for seed in args.seed_list:
        for side in args.side_list:
            t0 = time.perf_counter()
            result = SIDES[side](seed, train, test, args)
            result["seconds"] = time.perf_counter() - t0
            runs[side][seed] = result
            curve = result["curve"]
            log(f"  {side} seed {seed}: last {curve[args.epochs]:.2f}, best {max(curve.values()):.2f} "
                f"({result['seconds']:.0f} s, {result['images_per_s']:.0f} img/s training)")
    rows, summary = [], {}
    for side, by_seed in runs.items():
        last = [r["curve"][args.epochs] for r in by_seed.values()]
        best = [max(r["curve"].values()) for r in by_seed.values()]
        summary[side] = {"last": last, "best": best}
        for seed, r in by_seed.items():
            rows.append([side, seed, f"{r['curve'][args.epochs]:.2f}", f"{max(r['curve'].values()):.2f}",
                         f"{r['images_per_s']:.0f}"])
        (ml, sl), (mb, sb) = mean_std(last), mean_std(best)
        rows.append([f"**{side}**", "mean ± std", f"{ml:.2f} ± {sl:.2f}", f"{mb:.2f} ± {sb:.2f}", ""])
    print(markdown_table(["loop", "seed", "last top-1 %", "best top-1 %", "train img/s"], rows))
    if {"kdlab", "reference"} <= set(runs):
        print()
        diff_rows = []
        for key in ("last", "best"):
            d, se = difference(summary["kdlab"][key], summary["reference"][key])
            diff_rows.append([key, f"{d:+.2f}", f"{se:.2f}", f"{d / se:+.1f}" if se > 0 else "-"])
            summary[f"kdlab_minus_reference_{key}"] = {"diff": d, "se": se}
        print(markdown_table(["top-1", "kdlab - reference (points)", "standard error", "diff / SE"], diff_rows))
    elapsed = time.perf_counter() - started
    print(f"\n(took {elapsed:.0f} s)")
    write_json(args.json, {"benchmark": "baseline_parity", "args": {k: v for k, v in vars(args).items()},
                           "cpu": cpu_model(), "threads": torch.get_num_threads(), "summary": summary,
                           "runs": {side: {str(s): r for s, r in by_seed.items()} for side, by_seed in runs.items()},
                           "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
