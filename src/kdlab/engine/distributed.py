"""Scale-out on PyTorch's own engine: torchrun starts the processes, DistributedDataParallel syncs gradients.

`kdlab train|distill|mutual` under `torchrun --nproc_per_node=N -m kdlab ...` joins the process group
described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): gloo on CPU, nccl
on GPU with one device per process (cuda:LOCAL_RANK). A `Context` is what the trainer needs to know:
its rank, the world size, and a few collectives (metric sums, broadcasting rank 0's decisions).
Only rank 0 touches the run directory. See docs/distributed.md.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdlab.engine import checkpoint as ckpt
from kdlab.errors import KdlabError

# A rank that fails or stalls makes the others give up after this long instead of waiting forever
# (torchrun also stops the remaining workers as soon as one exits with an error).
TIMEOUT = timedelta(minutes=10)

T = TypeVar("T")


@dataclass
class Context:
    """This process's place in the process group, and the collectives the engine uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # where this rank computes: cuda:LOCAL_RANK with nccl, else cpu
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """nccl communicates CUDA tensors only; gloo takes CPU tensors."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks, returned on `tensor`'s device (the input is left unchanged)."""
        buffer = tensor.detach().to(self.comm_device, copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank `src`'s (picklable) object on every rank."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.comm_device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, modules: Iterable[nn.Module], src: int = 0) -> None:
        """Copy rank `src`'s buffers (BatchNorm running statistics) into every rank's modules.

        DDP broadcasts them before each forward, so after the last training step of an epoch the ranks'
        statistics differ by that step; evaluating rank 0's model everywhere needs them equal again."""
        seen: set[int] = set()
        for module in modules:
            for buffer in module.buffers():
                if id(buffer) in seen:
                    continue
                seen.add(id(buffer))
                if buffer.device == self.comm_device:
                    dist.broadcast(buffer, src=src)
                else:
                    staged = buffer.to(self.comm_device)
                    dist.broadcast(staged, src=src)
                    buffer.copy_(staged)

    def barrier(self) -> None:
        dist.barrier()


# ----------------------------------------------------------------------------------------- process group
_CONTEXT: Context | None = None


def launched() -> bool:
    """True when torchrun (or another launcher setting its variables) started this process with peers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto", timeout: timedelta = TIMEOUT) -> Context:
    """Join the process group torchrun describes; `device` is the run's --device (auto | cpu | cuda)."""
    global _CONTEXT
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise KdlabError(f"environment variable {name} is not set; start distributed runs with torchrun "
                             f"(torchrun --nproc_per_node=N -m kdlab ...)")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device.split(":")[0]
    if kind not in ("auto", "cpu", "cuda"):
        raise KdlabError(f"device '{device}' is not usable under torchrun; use --device cpu, cuda or auto")
    if ":" in device:
        raise KdlabError(f"under torchrun each process uses cuda:LOCAL_RANK, so '{device}' cannot be honoured; "
                         f"pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise KdlabError("device 'cuda' was requested but no GPU is available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise KdlabError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); start at "
                             f"most that many processes per node (--nproc_per_node)")
        compute = torch.device("cuda", local_rank)
        torch.cuda.set_device(compute)
        backend = "nccl"
    else:
        compute = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout, device_id=compute if backend == "nccl" else None)
    _CONTEXT = Context(rank=rank, world_size=world_size, local_rank=local_rank, device=compute, backend=backend)
    return _CONTEXT


def current() -> Context | None:
    """The context of this process's group (None in a single-process run)."""
    if _CONTEXT is not None:
        return _CONTEXT
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    # A group the caller created (Python API): describe it.
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def shutdown() -> None:
    """Leave and destroy the process group this module created."""
    global _CONTEXT
    if _CONTEXT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def process_group(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a runner `fn(config, ...)`: inside torchrun, join the process group for its duration.

    A group that already exists (created by the caller) is used as it is and left alone."""

    @functools.wraps(fn)
    def wrapper(config, *args: Any, **kwargs: Any) -> T:
        owns = launched() and not dist.is_initialized()
        if owns:
            init_from_env(config.device)
        try:
            return fn(config, *args, **kwargs)
        except RuntimeError as exc:
            lost = peer_lost(exc) if owns else None
            if lost is None:
                raise
            rank = os.environ.get("RANK", "?")
            raise KdlabError(f"another torchrun process stopped, so rank {rank} cannot go on ({lost}); see that "
                             f"process's output above for why, then rerun the command with --resume") from None
        finally:
            if owns:
                shutdown()

    return wrapper


# What gloo/nccl say when a peer process died or hung (gloo raises plain RuntimeErrors; newer errors are DistError).
_PEER_LOST = re.compile(r"Connection (?:reset|closed) by peer|Broken pipe|Connection refused|Timed out waiting|"
                        r"NCCL communicator was aborted|remote process exited|ProcessGroup\w* is aborted",
                        re.IGNORECASE)


def peer_lost(exc: BaseException) -> str | None:
    """A short cause when `exc` says that another process of the group is gone, else None."""
    text = str(exc)
    match = _PEER_LOST.search(text)
    if match:
        return match.group(0)
    if isinstance(exc, getattr(dist, "DistError", ())):
        return f"{type(exc).__name__}: {' '.join(text.split())[:120]}"
    return None


# ----------------------------------------------------------------------------------------- decisions
def on_main(ctx: Context | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    Used for anything that reads or creates the run directory (exists? resume?), so all ranks take the same
    decision and only rank 0 writes; an error on rank 0 is raised on every rank, so all exit together."""
    if ctx is None:
        return fn(*args, **kwargs)
    result, error, failure = None, None, None
    if ctx.is_main:
        try:
            result = fn(*args, **kwargs)
        except KdlabError as exc:
            error = str(exc)
        except Exception as exc:  # tell the other ranks, then raise the original here
            failure = exc
            error = f"rank 0 failed: {type(exc).__name__}: {exc}"
    result, error = ctx.broadcast_object((result, error))
    if failure is not None:
        raise failure
    if error is not None:
        raise KdlabError(error)
    return result


# ----------------------------------------------------------------------------------------- randomness
def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`: the run's seed on rank 0 (so it matches a 1-process run), a hash of
    (seed, rank) elsewhere (dropout masks and methods' random draws differ between ranks)."""
    if rank == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank)])
    return int(state.generate_state(1, dtype=np.uint32)[0])


def seed_rank(ctx: Context | None, seed: int) -> None:
    """Reseed the global RNGs of ranks > 0 from (seed, rank), once the models are built identically."""
    if ctx is not None and ctx.rank > 0:
        ckpt.seed_everything(rank_seed(seed, ctx.rank))


# ----------------------------------------------------------------------------------------- models
def trained_modules(objective: nn.Module) -> list[nn.Module]:
    """The models the objective trains (students): their buffers are synced, everything else is local."""
    models = getattr(objective, "eval_models", None)
    return list(models().values()) if models else [objective]


def wrap_objective(objective: nn.Module, ctx: Context) -> DistributedDataParallel:
    """DistributedDataParallel around the objective, syncing only what training changes.

    Parameters without requires_grad (the frozen teacher) are ignored: never broadcast, never reduced, never
    in the optimizer. Of the buffers only the trained models' (BatchNorm statistics) follow rank 0; method
    buffers (CRD's memory bank) stay per rank. DistillationLoss may leave parameters out of a step (init
    stages, connectors of other phases), so DDP looks for unused parameters there."""
    synced_buffers = {id(b) for m in trained_modules(objective) for b in m.buffers()}
    ignore = [name for name, p in objective.named_parameters() if not p.requires_grad]
    ignore += [name for name, b in objective.named_buffers() if id(b) not in synced_buffers]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, ignore)
    find_unused = hasattr(objective, "init_methods")  # DistillationLoss
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=device_ids, find_unused_parameters=find_unused)


def convert_sync_bn(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm in a trained model (config `sync_bn`): statistics over the global batch."""
    if not enabled:
        return model
    if device.type != "cuda":
        raise KdlabError("sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU; drop sync_bn or "
                         "run with --device cuda")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def average_gradients(grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Mean over ranks of gradients computed outside DDP's reducer (torch.autograd.grad), one all-reduce per
    dtype; unchanged outside a process group. Every rank must pass the same shapes (same model)."""
    grads = list(grads)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grads
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        if g is not None:
            by_dtype.setdefault(g.dtype, []).append(i)
    for dtype in sorted(by_dtype, key=str):  # same order on every rank
        indices = by_dtype[dtype]
        flat = torch.cat([grads[i].reshape(-1) for i in indices])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for i in indices:
            n = grads[i].numel()
            grads[i] = flat[offset:offset + n].view_as(grads[i])
            offset += n
    return grads
