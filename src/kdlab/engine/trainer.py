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

import copy
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
from kdlab.config import Config, flatten, merge, to_dict, validate
from kdlab.data.augment import BatchMixer
from kdlab.data.memory import epoch_generator
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.distributed import on_main, rank_seed, seed_rank, wrap_objective
from kdlab.engine.dot import DOT, split_gradients
from kdlab.engine.ema import WeightEMA
from kdlab.engine.evaluate import evaluate
from kdlab.engine.health import RunHealth
from kdlab.engine.logging import RunLogger, read_metrics
from kdlab.engine.objectives import StepOutput
from kdlab.engine.precision import autocast, grad_scaler
from kdlab.engine.progress import ProgressLog, stdout_is_terminal, step_line
from kdlab.engine.reliability import save_bins
from kdlab.engine.rundir import PROGRESS_LOG
from kdlab.engine.schedule import lr_factor, total_epochs
from kdlab.errors import KdlabError

# Settings a resumed run may change: where and how fast it runs, not what it computes.
RESUMABLE_KEYS = frozenset({
    "out", "threads", "device", "log_every", "loggers", "compile", "channels_last", "deterministic", "cache_dir",
    "cache_max_gb", "data.root", "data.workers", "data.test_batch_size", "optim.extend_to",
    "data.on_device",  # the same batches on the host or device-resident (kdlab.data.memory.TensorLoader)
})


def resume_conflicts(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """`key: saved -> requested` for every setting that differs and would change the resumed run's meaning.

    A key the saved config lacks was added to kdlab after the run started; it counts with its default (every
    recipe key added later is off by default), so older runs still resume."""
    old, new = flatten(merge(to_dict(Config()), saved)), flatten(requested)
    keys = sorted((set(old) | set(new)) - RESUMABLE_KEYS)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def resolve_optimizer(config: Config, requested: str | None) -> str:
    """`optim.optimizer`, or the optimizer a method trains with (`requested`; `--method dot`: KD under DOT), which
    replaces the default SGD; another optimizer asked for explicitly is refused in one line."""
    if requested is None or requested == config.optim.optimizer:
        return config.optim.optimizer
    if config.optim.optimizer != "sgd":
        raise KdlabError(f"method '{config.method}' trains with the {requested} optimizer, not "
                         f"optim.optimizer={config.optim.optimizer}: drop --optimizer")
    as_run = copy.deepcopy(config)
    as_run.optim.optimizer = requested
    validate(as_run)  # what optim.optimizer=dot refuses (fp16, --clip-grad-norm), with the same lines
    return requested


def make_optimizer(params: list[nn.Parameter], config: Config, lr: float, kind: str | None = None
                   ) -> torch.optim.Optimizer:
    """`optim.optimizer` (or `kind`): SGD with momentum (and `optim.nesterov`), AdamW (Loshchilov & Hutter, ICLR
    2019, arXiv:1711.05101) with `optim.betas` and weight decay decoupled from the gradient (p -= lr·wd·p), or DOT
    (kdlab.engine.dot: separate momenta for the task and the distillation gradients).

    SGD and AdamW take their fused kernels (`fused=True`: one kernel per step for all parameters) when every
    parameter is a floating-point CUDA tensor (`fused_on_cuda`), never on the CPU."""
    optim = config.optim
    kind = kind or optim.optimizer
    if kind == "dot":
        return DOT(params, lr=lr, momentum=optim.momentum, delta=optim.dot_delta, weight_decay=optim.weight_decay)
    fused = {"fused": True} if fused_on_cuda(params) else {}
    if kind == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                                      **fused)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                                    nesterov=optim.nesterov, **fused)
    optimizer.register_load_state_dict_pre_hook(_keep_own_fused)
    return optimizer


def fused_on_cuda(params: list) -> bool:
    """Whether the fused SGD/AdamW kernels apply: there are parameters and all are floating-point CUDA tensors."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


def _keep_own_fused(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Loading a checkpoint keeps this optimizer's `fused` choice: torch takes the saved param groups' flags, so a
    run saved on a GPU (fused) and resumed on the CPU would otherwise ask for fused kernels there. Set before the
    state is cast, so that AdamW's step counters go where this optimizer's kernels want them."""
    own = bool(optimizer.defaults.get("fused"))
    state = dict(state)
    state["param_groups"] = [{**group, "fused": own} for group in state["param_groups"]]
    return state


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



def _length(loader: Any) -> int:
    """Batches per epoch of a loader (0 when it cannot say)."""
    try:
        return int(len(loader))
    except TypeError:
        return 0

class Trainer:
    """Trains `objective` (an nn.Module returning StepOutput) with the configured optimizer (SGD or AdamW) and
    schedule; optionally mixes batches, clips the gradient norm, averages the weights (EMA) and evaluates every
    `eval_every` epochs."""

    def __init__(self, config: Config, objective: nn.Module, train_loader, test_loader, run_dir: str | Path,
                 arch: dict[str, Any], device: torch.device, eval_transform=None, distributed=None,
                 quiet: bool = False, qat=None):
        self.config = config
        self.qat = qat  # kdlab.engine.qat.FakeQuant on the trained model (--qat): its ranges go in the checkpoint
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
        self.health = RunHealth(int(arch.get("num_classes") or 0), config.method, config.optim.lr,
                                _length(train_loader))
        optim = config.optim
        trainable = getattr(objective, "trainable_parameters", None)
        params = list(trainable()) if trainable else [p for p in objective.parameters() if p.requires_grad]
        # optim.scale_lr: the linear scaling rule (Goyal et al. 2017) for a global batch world_size x larger.
        scale = distributed.world_size if distributed is not None and optim.scale_lr else 1
        self.base_lr = optim.lr * scale
        self.optimizer = make_optimizer(params, config, self.base_lr, resolve_optimizer(
            config, getattr(objective, "requested_optimizer", lambda: None)()))
        self.clipped_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.mixer = BatchMixer(config.data.mixup, config.data.cutmix, config.data.mix_prob)
        self._mix_stream: tuple[int, torch.Generator] | None = None  # (epoch, its generator)
        self.ema = self._make_ema(objective, config.ema_decay)
        self.eval_subset = getattr(test_loader, "eval_subset", None)  # N when evaluating on N test images
        if config.eval_subset is not None and not hasattr(test_loader, "eval_subset"):
            raise KdlabError("eval_subset picks test images from kdlab's own test loader; with your own loader, "
                             "pass the subset you want as test_loader and drop eval_subset")
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
        self.progress: ProgressLog | None = None  # rank 0, during fit: the run directory's progress log

    @staticmethod
    def _make_ema(objective: nn.Module, decay: float | None) -> WeightEMA | None:
        """The EMA of the trained model (ema_decay), or None; a cohort (kdlab mutual) is refused."""
        if decay is None:
            return None
        models = objective.eval_models()
        if len(models) != 1:
            raise KdlabError(f"ema_decay averages one trained model; this run evaluates {len(models)} "
                             f"({', '.join(models)}): drop ema_decay (kdlab mutual has no EMA)")
        return WeightEMA(unwrap(next(iter(models.values()))), decay)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        models = self.objective.eval_models()
        primary = next(iter(models.values()))
        primary = unwrap(primary)
        extra = {} if self.ema is None else {"train_model": primary.state_dict()}  # what training continues from
        return {
            "kdlab_version": __version__,
            "arch": self.arch,
            # the reported model: the EMA weights when ema_decay is set (best.pt / last.pt are evaluated as them)
            "model": primary.state_dict() if self.ema is None else self.ema.state_dict(),
            **extra,
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
            **({"qat": self.qat.state_dict()} if self.qat is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        models = self.objective.eval_models()
        if state.get("models"):
            for name, model in models.items():
                unwrap(model).load_state_dict(state["models"][name])
        else:
            primary = next(iter(models.values()))
            unwrap(primary).load_state_dict(state["model"] if self.ema is None else state["train_model"])
            if self.ema is not None:
                self.ema.load_state_dict(state["model"])
        self.objective.load_extra_state(state.get("extra") or {})
        if self.qat is not None and state.get("qat"):
            self.qat.load_state_dict(state["qat"])
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
        logger = RunLogger(self.run_dir, self.config.loggers, to_dict(self.config)) if self.is_main else None
        if logger is not None:
            ckpt.remove_stale_temporaries(self.run_dir)
            logger.truncate_after(self.start_epoch - 1)
        if self.is_main and self.start_epoch <= self.epochs:
            self.progress = ProgressLog(self.run_dir / PROGRESS_LOG, echo=not self.quiet and not stdout_is_terminal())
            self.progress.write(f"kdlab {__version__}: epochs {self.start_epoch}-{self.epochs} of {self.run_dir}",
                                echo=False)
        try:
            for epoch in range(self.start_epoch, self.epochs + 1):
                record = self.train_epoch(epoch)
                if self.evaluates(epoch):
                    record.update(self.evaluate_all())
                is_best = self.note_epoch(epoch, record)
                self.save_epoch(epoch, record, is_best, logger)
        finally:
            if logger is not None:
                logger.close()
            if self.progress is not None:
                self.progress.close()
                self.progress = None
        summary = self.summary(self.last_record)
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def evaluates(self, epoch: int) -> bool:
        """--eval-every K: epochs K, 2K, ... and always the last one are evaluated."""
        return epoch % self.config.eval_every == 0 or epoch >= self.epochs

    def note_epoch(self, epoch: int, record: dict[str, Any]) -> bool:
        """Mark a diverged epoch, track the best finite test top-1 (adds best_top1 to `record`); True when this
        epoch is the new best. An epoch without evaluation (--eval-every) has no test_* keys and is never best."""
        top1 = record.get("test_top1", math.nan)
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
        if "test_top1" in record:
            save_bins(self.run_dir, self.last_eval, epoch)
        line = self.describe(record)
        if self.progress is not None:
            self.progress.write(line, echo=False)
        if not self.quiet:
            print(line, flush=True)
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
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{value:.3f}", acc=f"{100 * float(tally.correct) / tally.seen:.1f}",
                                img_s=f"{tally.seen / elapsed:.0f}")
                if self.progress is not None and tally.steps % self.config.log_every == 0:
                    self.log_progress(epoch, tally, value, elapsed)
        elapsed = time.perf_counter() - start
        self.scheduler.step()
        return self.epoch_record(epoch, lr, tally, elapsed)

    def log_progress(self, epoch: int, tally: EpochTally, loss: float, elapsed: float) -> None:
        """A progress line (kdlab.engine.progress): into the run's progress log, and to stdout when it is not a
        terminal. img/s counts every process's images; the epoch mean loss is this process's."""
        try:
            steps = len(self.train_loader)
        except TypeError:  # an outside loader without a length
            steps = None
        world = self.dist.world_size if self.dist is not None else 1
        mean = float(tally.sums["loss"]) / tally.steps
        self.progress.write(step_line(epoch, self.epochs, tally.steps, steps, loss, mean,
                                      tally.seen * world / elapsed, elapsed))

    def mix_generator(self, epoch: int) -> torch.Generator:
        """The epoch's mixing draws, from (seed, epoch, rank) as the loader's augmentation: a resumed run mixes
        its batches as an uninterrupted one."""
        if self._mix_stream is None or self._mix_stream[0] != epoch:
            rank = self.dist.rank if self.dist is not None else 0
            self._mix_stream = (epoch, epoch_generator(self.config.seed, epoch, 4, rank))
        return self._mix_stream[1]

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None,
                   epoch: int) -> tuple[StepOutput, torch.Tensor]:
        """Mixing (data.mixup/cutmix), forward (autocast), backward (the objective's own, or through the grad
        scaler), gradient clipping (optim.clip_grad_norm, after unscaling fp16 gradients), optimizer step, EMA
        update; returns the objective's output and the (primary) targets on the device.

        Clipping composes with a method's own clipping (clip_to_ce, in the objective's backward): that bounds the
        method's gradient per parameter inside the step's gradient; the global norm of the sum is clipped after.
        """
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        mix = None
        if self.mixer.enabled:
            images, mix = self.mixer(images, targets, self.mix_generator(epoch))
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.precision):
            out = (self.train_module(images, targets, indices, epoch) if mix is None
                   else self.train_module(images, targets, indices, epoch, mix=mix))
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.optimizer, DOT):
            self.dot_gradients(out)
        elif out.backward is not None:
            out.backward(self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        else:
            self.scaler.scale(out.loss).backward()
        if self.config.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # a no-op pass-through unless fp16 loss scaling is on
            torch.nn.utils.clip_grad_norm_(self.clipped_params, self.config.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(unwrap(next(iter(self.objective.eval_models().values()))))
        return out, targets

    def dot_gradients(self, out: StepOutput) -> None:
        """DOT's two gradients of the step: the task one into `.grad`, the distillation one to the optimizer."""
        if out.parts is None:
            raise KdlabError("optim.optimizer=dot needs the step's task and distillation losses apart, and this "
                             "objective gives one loss (kdlab train and kdlab mutual have no distillation loss); "
                             "use optim.optimizer=sgd")
        task, distill = out.parts
        params = [p for p in self.clipped_params if p.requires_grad]  # not the modules a main phase freezes
        g_task, g_distill = split_gradients(task, distill, params)
        for p, g in zip(params, g_task, strict=True):
            p.grad = g
        self.optimizer.set_distill_gradients(params, g_distill)

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

    def eval_models(self) -> dict[str, nn.Module]:
        """What is evaluated and reported: the objective's models, or the EMA of the trained one (ema_decay)."""
        return self.objective.eval_models() if self.ema is None else {"": self.ema.module}

    def evaluate_all(self) -> dict[str, Any]:
        """Evaluate every reported model on the test loader (or its --eval-subset); with ema_decay the record
        says `eval_weights: ema`, with a subset `eval_images: N`."""
        record: dict[str, Any] = {}
        reduce = self.dist.all_reduce_sum if self.dist is not None else None
        models = self.eval_models()
        if self.dist is not None:  # every rank evaluates rank 0's model: same BatchNorm statistics too
            self.dist.broadcast_buffers(models.values())
        show = self.is_main and not self.quiet
        for name, model in models.items():
            result = evaluate(model, self.test_loader, self.device, self.config.precision,
                              self.config.channels_last, self.arch.get("num_classes"), self.eval_transform,
                              reduce, progress=f"eval {name or 'model'}" if show else None)
            prefix = f"test_{name}_" if name else "test_"
            record.update(result.as_dict(prefix))
            if result.diverged:
                record["diverged"] = True
            self.last_eval[name] = result
        if "test_top1" not in record:  # a cohort: the first model's numbers are the headline
            first = next(iter(models))
            for key in ("top1", "top5", "nll", "ece"):
                record[f"test_{key}"] = record[f"test_{first}_{key}"]
        if self.ema is not None:
            record["eval_weights"] = "ema"
        if self.qat is not None:
            record["eval_quantized"] = "fake int8"  # weights and activations on the int8 grid (--qat)
        if self.eval_subset is not None:
            record["eval_images"] = self.eval_subset
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
        """The epoch line. It names what was evaluated when that is not the plain model on the whole test set:
        `test (EMA weights, 1000-image subset) top-1 ...`; an epoch that --eval-every skips says so."""
        start = (f"epoch {record['epoch']:>3}  lr {record['lr']:.4g}  loss {record['train_loss']:.4f}  "
                 f"train {record['train_top1']:5.2f}%  ")
        if "test_top1" not in record:
            return f"{start}(not evaluated: --eval-every)  {record['images_per_sec']:.0f} img/s"
        notes = [*(["EMA weights"] if record.get("eval_weights") == "ema" else []),
                 *(["fake-quantized int8"] if record.get("eval_quantized") else []),
                 *([f"{record['eval_images']}-image subset"] if record.get("eval_images") else [])]
        test = f"test ({', '.join(notes)})" if notes else "test"
        if record.get("diverged"):
            return (f"{start}{test}: diverged (non-finite outputs)  "
                    f"{record['images_per_sec']:.0f} img/s")
        return (f"epoch {record['epoch']:>3}  lr {record['lr']:.4g}  loss {record['train_loss']:.4f}  "
                f"train {record['train_top1']:5.2f}%  {test} top-1 {record['test_top1']:5.2f}%  "
                f"top-5 {record['test_top5']:5.2f}%  ECE {record['test_ece']:5.2f}%  "
                f"{record['images_per_sec']:.0f} img/s")
