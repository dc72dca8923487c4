"""The one training loop: used by `kdlab train`, `kdlab distill` and the Python API alike.

Per epoch: set the LR, run the objective over the training batches (AMP, channels_last), evaluate every
model the objective exposes, log one metrics.jsonl line, and write `last.pt` (and `best.pt`) atomically.
A killed run continues from `last.pt` with `resume=True`; under `deterministic=True` it ends with the
same weights as an uninterrupted run, because data order and augmentation depend only on (seed, epoch)
and the RNG states are restored from the checkpoint. A resume must ask for the run that was saved: settings
that change its meaning are refused (`resume_conflicts`); only `optim.extend_to` may grow it, with a
constant-LR tail (kdlab.engine.schedule). An epoch whose test outputs are not finite is marked diverged:
its numbers are logged as null and it never becomes the best epoch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from kdlab import __version__
from kdlab.config import Config, flatten, to_dict
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.distributed import on_main, rank_seed, seed_rank, wrap_objective
from kdlab.engine.evaluate import evaluate
from kdlab.engine.health import RunHealth
from kdlab.engine.logging import RunLogger, read_metrics
from kdlab.engine.objectives import StepOutput
from kdlab.engine.precision import autocast, grad_scaler
from kdlab.engine.reliability import save_bins
from kdlab.engine.schedule import lr_factor, total_epochs
from kdlab.errors import KdlabError

# Settings a resumed run may change: where and how fast it runs, not what it computes.
RESUMABLE_KEYS = frozenset({
    "out", "threads", "device", "log_every", "compile", "channels_last", "deterministic", "cache_dir",
    "cache_max_gb", "data.root", "data.workers", "data.test_batch_size", "optim.extend_to",
})


def resume_conflicts(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """`key: saved -> requested` for every setting that differs and would change the resumed run's meaning."""
    old, new = flatten(saved), flatten(requested)
    keys = sorted((set(old) | set(new)) - RESUMABLE_KEYS)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, so checkpoints hold
    the keys a freshly created model expects."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class EpochTally:
    """Running sums of an epoch's training steps: loss and named terms (on the device, no sync per step),
    correct predictions, samples and steps."""

    def __init__(self, device: torch.device):
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), device=device)
        self.seen = 0
        self.steps = 0

    def add(self, out: StepOutput, targets: torch.Tensor) -> None:
        self.steps += 1
        self.seen += len(targets)
        self.sums["loss"] = self.sums.get("loss", 0) + out.loss.detach()
        for name, value in out.terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
        if out.logits is not None:
            self.correct += (out.logits.detach().argmax(1) == targets).sum()

    def totals(self, dist=None) -> tuple[dict[str, float], float, int]:
        """(mean per step of each sum, correct, seen), over all ranks under DDP (one all-reduce; the terms then
        come in sorted order)."""
        sums: dict[str, Any] = self.sums
        correct, seen, steps = self.correct, self.seen, self.steps
        if dist is not None:
            names = sorted(sums)
            local = [float(sums[n]) for n in names] + [float(correct), seen, steps]
            packed = dist.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
            sums = dict(zip(names, packed[:len(names)], strict=True))
            correct, seen, steps = packed[-3], int(packed[-2]), int(packed[-1])
        return {name: float(v) / max(steps, 1) for name, v in sums.items()}, float(correct), seen


class Trainer:
    """Trains `objective` (an nn.Module returning StepOutput) with SGD and the configured schedule."""

    def __init__(self, config: Config, objective: nn.Module, train_loader, test_loader, run_dir: str | Path,
                 arch: dict[str, Any], device: torch.device, eval_transform=None, distributed=None,
                 quiet: bool = False):
        self.config = config
        self.objective = objective
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.run_dir = Path(run_dir)
        self.arch = arch
        self.device = device
        self.eval_transform = eval_transform
        self.dist = distributed  # kdlab.engine.distributed.Context or None
        self.is_main = distributed is None or distributed.rank == 0
        self.quiet = quiet
        self.health = RunHealth(int(arch.get("num_classes") or 0), config.method, config.optim.lr)
        optim = config.optim
        trainable = getattr(objective, "trainable_parameters", None)
        params = list(trainable()) if trainable else [p for p in objective.parameters() if p.requires_grad]
        # optim.scale_lr: the linear scaling rule (Goyal et al. 2017) for a global batch world_size x larger.
        scale = distributed.world_size if distributed is not None and optim.scale_lr else 1
        self.base_lr = optim.lr * scale
        self.optimizer = torch.optim.SGD(params, lr=self.base_lr, momentum=optim.momentum,
                                         weight_decay=optim.weight_decay, nesterov=optim.nesterov)
        # Forward/backward go through DDP (gradients averaged across ranks); state and evaluation use the
        # unwrapped objective, so checkpoints load in 1-process runs.
        self.train_module = objective if distributed is None else wrap_objective(objective, distributed)
        seed_rank(distributed, config.seed)  # models are built alike on every rank; what follows differs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(optim))
        self.scaler = grad_scaler(device, config.precision)
        self.start_epoch = 1
        self.epochs = total_epochs(optim)
        self.best_top1 = -math.inf
        self.best_epoch = 0
        self.last_record: dict[str, Any] = {}  # the latest epoch's metrics line (kept in the checkpoint)
        self.diverged_epochs: list[int] = []
        self.last_eval: dict = {}  # model name -> EvalResult of the latest epoch

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        models = self.objective.eval_models()
        primary = next(iter(models.values()))
        primary = unwrap(primary)
        return {
            "kdlab_version": __version__,
            "arch": self.arch,
            "model": primary.state_dict(),
            "models": {name: unwrap(m).state_dict() for name, m in models.items()} if len(models) > 1
            else None,
            "extra": self.objective.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "epoch": epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "last_record": self.last_record,
            "diverged_epochs": list(self.diverged_epochs),
            "config": to_dict(self.config),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        models = self.objective.eval_models()
        if state.get("models"):
            for name, model in models.items():
                unwrap(model).load_state_dict(state["models"][name])
        else:
            primary = next(iter(models.values()))
            unwrap(primary).load_state_dict(state["model"])
        self.objective.load_extra_state(state.get("extra") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.config.optim.scale_lr:  # the LR follows this run's world size, not the checkpoint's
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            self.scheduler.base_lrs = [self.base_lr for _ in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["initial_lr"], group["lr"] = self.base_lr, self.base_lr * factor
        self._restore_rng(state)
        self.start_epoch = int(state["epoch"]) + 1
        self.best_top1 = float(state["best_top1"])
        self.best_epoch = int(state["best_epoch"])
        self.diverged_epochs = [int(e) for e in state.get("diverged_epochs") or []]
        self.last_record = dict(state.get("last_record") or {})
        if not self.last_record and self.is_main:  # checkpoints of kdlab 0.1 kept it only in metrics.jsonl
            lines = [r for r in read_metrics(self.run_dir) if r.get("epoch") == int(state["epoch"])]
            self.last_record = lines[-1] if lines else {}

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """Each rank gets its own saved RNG state back when the world size is unchanged; otherwise rank 0
        takes the saved rank-0 state and other ranks reseed from (seed, rank, epoch)."""
        per_rank = state.get("rng_ranks")
        if self.dist is not None and per_rank and len(per_rank) == self.dist.world_size:
            ckpt.set_rng_state(per_rank[self.dist.rank])
        elif self.is_main:
            ckpt.set_rng_state(state["rng"])
        else:
            ckpt.seed_everything(rank_seed(self.config.seed + int(state["epoch"]), self.dist.rank))

    def resume(self) -> None:
        """Continue from run_dir/last.pt, checking it belongs to the same architecture and data."""
        path = self.run_dir / "last.pt"
        state = on_main(self.dist, ckpt.load, path, "resume checkpoint")  # rank 0 reads, every rank loads it
        if state.get("arch") != self.arch:
            raise KdlabError(f"'{path}' was written for {state.get('arch')}, not {self.arch}; resume with the "
                             f"same model and data, or choose another --out")
        self.check_resume_config(state.get("config") or {}, int(state["epoch"]))
        self.load_state(state)

    def check_resume_config(self, saved: dict[str, Any], done: int) -> None:
        """Refuse a resume whose settings differ from the saved run's; `optim.extend_to` may only grow it."""
        conflicts = resume_conflicts(saved, to_dict(self.config))
        if conflicts:
            hint = (" (to train a run longer, keep --epochs and pass --extend-to N)"
                    if any(c.startswith("optim.epochs:") for c in conflicts) else "")
            raise KdlabError(f"--resume asks for other settings than the run in '{self.run_dir}' was started with "
                             f"({'; '.join(conflicts)}){hint}; resume with its settings (config.yaml), or start "
                             f"a new run with another --out")
        if self.epochs < done:
            raise KdlabError(f"optim.extend_to={self.config.optim.extend_to} is below the {done} epochs the run in "
                             f"'{self.run_dir}' has done; pass --extend-to N with N > {done}")

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        logger = RunLogger(self.run_dir) if self.is_main else None
        if logger is not None:
            ckpt.remove_stale_temporaries(self.run_dir)
            logger.truncate_after(self.start_epoch - 1)
        try:
            for epoch in range(self.start_epoch, self.epochs + 1):
                record = self.train_epoch(epoch)
                record.update(self.evaluate_all())
                is_best = self.note_epoch(epoch, record)
                self.save_epoch(epoch, record, is_best, logger)
        finally:
            if logger is not None:
                logger.close()
        summary = self.summary(self.last_record)
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def note_epoch(self, epoch: int, record: dict[str, Any]) -> bool:
        """Mark a diverged epoch, track the best finite test top-1 (adds best_top1 to `record`); True when this
        epoch is the new best."""
        top1 = record["test_top1"]
        if record.get("diverged"):
            self.diverged_epochs.append(epoch)
        is_best = math.isfinite(top1) and top1 > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = top1, epoch
        record["best_top1"] = self.best_top1
        self.last_record = record
        return is_best

    def save_epoch(self, epoch: int, record: dict[str, Any], is_best: bool, logger: RunLogger | None) -> None:
        """Rank 0 logs the metrics line (before the checkpoint), writes last.pt (and best.pt) atomically and the
        reliability bins, and prints the epoch line."""
        # A collective: every rank hands its RNG state to rank 0, which saves them all.
        rng_ranks = self.dist.all_gather_object(ckpt.rng_state()) if self.dist is not None else None
        if not self.is_main:
            return
        logger.log(record)
        state = self.state_dict(epoch)
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        ckpt.save_atomic(state, self.run_dir / "last.pt")
        if is_best:
            ckpt.save_atomic(state, self.run_dir / "best.pt")
        save_bins(self.run_dir, self.last_eval, epoch)
        if not self.quiet:
            print(self.describe(record), flush=True)
        warning = self.health.observe(epoch, record)
        if warning:  # even when quiet: it names what to change
            print(warning, file=sys.stderr, flush=True)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training batches, then the LR schedule's step; returns the epoch's train record."""
        self.train_module.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        tally = EpochTally(self.device)
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                   disable=None if self.is_main and not self.quiet else True, dynamic_ncols=True)
        for images, targets, indices in bar:
            out, targets = self.train_step(images, targets, indices, epoch)
            tally.add(out, targets)
            if tally.steps % self.config.log_every == 0 or tally.steps == 1:
                value = self.checked_step_loss(out.loss.detach(), epoch, tally.steps)
                bar.set_postfix(loss=f"{value:.3f}", acc=f"{100 * float(tally.correct) / tally.seen:.1f}",
                                img_s=f"{tally.seen / max(time.perf_counter() - start, 1e-9):.0f}")
        elapsed = time.perf_counter() - start
        self.scheduler.step()
        return self.epoch_record(epoch, lr, tally, elapsed)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None,
                   epoch: int) -> tuple[StepOutput, torch.Tensor]:
        """Forward (autocast), backward (the objective's own, or through the grad scaler), optimizer step;
        returns the objective's output and the targets on the device."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.precision):
            out = self.train_module(images, targets, indices, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        if out.backward is not None:
            out.backward(self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        else:
            self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out, targets

    def checked_step_loss(self, loss: torch.Tensor, epoch: int, step: int) -> float:
        """A step's loss for the progress bar; under DDP the mean over ranks, so that all ranks stop together on
        a non-finite loss (one-line error)."""
        value = float(loss) if self.dist is None else float(self.dist.all_reduce_sum(loss.float()))
        value = value / (self.dist.world_size if self.dist is not None else 1)
        if not math.isfinite(value):
            raise KdlabError(f"the training loss became {value} in epoch {epoch}, step {step}; lower "
                             f"optim.lr, use --precision fp32, or check the method's weights")
        return value

    def epoch_record(self, epoch: int, lr: float, tally: EpochTally, elapsed: float) -> dict[str, Any]:
        """The epoch's train numbers (over all ranks): mean loss and terms per step, top-1, throughput."""
        totals, correct, seen = tally.totals(self.dist)
        if not math.isfinite(totals.get("loss", 0.0)):
            raise KdlabError(f"the training loss became {totals['loss']} in epoch {epoch}; lower optim.lr, use "
                             f"--precision fp32, or check the method's weights")
        record: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": totals.pop("loss", float("nan"))}
        for name, value in totals.items():
            record[f"train_loss_{name}"] = value
        record["train_top1"] = 100.0 * float(correct) / max(seen, 1)
        record["images_per_sec"] = seen / max(elapsed, 1e-9)
        record["epoch_seconds"] = elapsed
        return record

    def evaluate_all(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        reduce = self.dist.all_reduce_sum if self.dist is not None else None
        if self.dist is not None:  # every rank evaluates rank 0's model: same BatchNorm statistics too
            self.dist.broadcast_buffers(self.objective.eval_models().values())
        for name, model in self.objective.eval_models().items():
            result = evaluate(model, self.test_loader, self.device, self.config.precision,
                              self.config.channels_last, self.arch.get("num_classes"), self.eval_transform,
                              reduce)
            prefix = f"test_{name}_" if name else "test_"
            record.update(result.as_dict(prefix))
            if result.diverged:
                record["diverged"] = True
            self.last_eval[name] = result
        if "test_top1" not in record:  # a cohort: the first model's numbers are the headline
            first = next(iter(self.objective.eval_models()))
            for key in ("top1", "top5", "nll", "ece"):
                record[f"test_{key}"] = record[f"test_{first}_{key}"]
        return record

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        models = self.objective.eval_models()
        primary = next(iter(models.values()))
        return {
            "arch": self.arch,
            "params": sum(p.numel() for p in primary.parameters()),
            "epochs": self.epochs,
            "best_top1": self.best_top1 if math.isfinite(self.best_top1) else None,
            "best_epoch": self.best_epoch,
            "last": {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                     for k, v in last.items() if k.startswith("test_")},
            "diverged": bool(last.get("diverged")),
            "diverged_epochs": list(self.diverged_epochs),
        }

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        if record.get("diverged"):
            return (f"epoch {record['epoch']:>3}  lr {record['lr']:.4g}  loss {record['train_loss']:.4f}  "
                    f"train {record['train_top1']:5.2f}%  test: diverged (non-finite outputs)  "
                    f"{record['images_per_sec']:.0f} img/s")
        return (f"epoch {record['epoch']:>3}  lr {record['lr']:.4g}  loss {record['train_loss']:.4f}  "
                f"train {record['train_top1']:5.2f}%  test top-1 {record['test_top1']:5.2f}%  "
                f"top-5 {record['test_top5']:5.2f}%  ECE {record['test_ece']:5.2f}%  "
                f"{record['images_per_sec']:.0f} img/s")
