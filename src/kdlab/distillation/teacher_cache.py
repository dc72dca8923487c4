"""Teacher-output caching: run a frozen teacher once per sample and reuse its outputs across epochs and runs.

A frozen teacher in eval mode maps the same input to the same outputs, so when the teacher's input of each
sample is the same in every epoch (`data.augment=false`, datasets without random augmentation such as
digits/MNIST, or `data.fixed_augmentation=true`), its logits and taps need computing only once.
`TeacherCache` keeps one tensor per tap of shape (N, ...) for the N training samples, indexed through the
batches' dataset `indices` (the order still changes every epoch). It fills lazily as samples are first
seen, i.e. during the first epoch; once every sample is in, it is written to `<cache_dir>/<key>.pt`, which
later runs with the same key load (memory-mapped on the CPU) without running the teacher at all.

The key is a sha256 over everything the teacher's outputs depend on: each teacher's weights (state_dict
bytes, whichever file they came from), its class and own input view (low-resolution teachers), the taps
read and whether the logits are, the training images themselves (pixels of in-memory datasets, file list
of image folders) and the sample indices (data name, fraction and seed through them), normalisation,
the augmentation (flags, padding, the fixed-augmentation seed), precision, channels_last, device type,
torch version and this file's format. A different key never reuses an old file. The student's resolution
is not part of it: the teacher always sees the full-size batch.

Memory (and disk): N x (K logits + the taps' sizes) x the element size. CIFAR-100 logits: 50,000 x 100 x 4 B
= 20 MB; a 256-d embedding 51 MB; but feature maps are large (resnet32x4's stage3, 256x8x8: 3.3 GB;
stage1, 64x32x32: 13 GB), so caches above `cache_max_gb` (default 4) are refused with the size they need.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.engine.precision import autocast
from kdlab.errors import KdlabError

FORMAT = 1  # bump when the file layout or the key's parts change
_LOGITS = "@logits"  # storage name of the logits (cannot clash with a tap name)

__all__ = ["TeacherCache", "attach_teacher_cache", "cache_key_parts", "check_cacheable", "dataset_digest",
           "default_cache_dir", "module_digest"]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/kdlab/teacher-outputs, else ~/.cache/kdlab/teacher-outputs.

    Not under the data root: shared data folders are often read-only, and one cache serves every data root
    holding the same images (the key hashes the pixels, not the path)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "kdlab" / "teacher-outputs"


def _hash_tensor(h: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.numel():
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())


def module_digest(model: nn.Module) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes, bytes): its identity, whatever file it came from."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            _hash_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def dataset_digest(dataset: Any) -> str:
    """sha256 of what a training set feeds the teacher: pixels (in-memory) or the file list (image folders),
    normalisation, default augmentation and the samples' full-split indices."""
    h = hashlib.sha256()
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        _hash_tensor(h, images)
        h.update(repr((tuple(dataset.mean), tuple(dataset.std), dataset.crop_padding, dataset.flip)).encode())
    else:
        samples = getattr(getattr(dataset, "folder", None), "samples", None)
        if samples is None:
            raise KdlabError(f"--cache-teacher cannot identify the training data ({type(dataset).__name__}); use a "
                             f"kdlab dataset (kdlab list datasets) or drop --cache-teacher")
        h.update(json.dumps([[str(path), int(target)] for path, target in samples]).encode())
        h.update(repr((str(dataset.root), dataset.image_size, tuple(dataset.mean), tuple(dataset.std))).encode())
    _hash_tensor(h, torch.as_tensor(dataset.indices))
    return h.hexdigest()


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


class TeacherCache:
    """Teacher outputs per training sample, for `DistillationLoss.teacher_cache`.

    Args:
        indices: full-split indices of the training samples (`dataset.indices`); batches are looked up by them.
        key: identity of the outputs (see the module docstring); checked when loading `path`.
        path: file the complete cache is saved to / loaded from; None keeps it in memory only.
        num_teachers: outputs are kept per teacher (several teachers share one cache).
        max_bytes: refuse to allocate more than this (None: no limit).
        device: where the tensors live (the training device).
        log: receives one-line progress messages (None: silent).
    """

    def __init__(self, indices: torch.Tensor, key: str = "", path: str | Path | None = None, num_teachers: int = 1,
                 max_bytes: int | None = None, device: torch.device | str = "cpu", description: Any = None,
                 log: Callable[[str], None] | None = None):
        self.indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        if self.indices.dim() != 1 or not len(self.indices) or int(self.indices.min()) < 0:
            raise KdlabError("TeacherCache needs the training samples' non-negative dataset indices (1-D, not empty)")
        self.key = key
        self.path = Path(path) if path is not None else None
        self.max_bytes = max_bytes
        self.device = torch.device(device)
        self.description = description
        self.log = log
        n = len(self.indices)
        self._slot = torch.full((int(self.indices.max()) + 1,), -1, dtype=torch.int64)  # full index -> row
        self._slot[self.indices] = torch.arange(n)
        self._filled = torch.zeros(num_teachers, n, dtype=torch.bool)
        self._outputs: list[dict[str, torch.Tensor] | None] = [None] * num_teachers
        self._channels_last: list[set[str]] = [set() for _ in range(num_teachers)]  # taps kept channels_last
        self.complete = False
        self.saved = False
        self.hits = 0  # batches answered from the cache (per teacher)
        self.misses = 0  # batches the teacher had to run for

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for out in self._outputs if out for t in out.values())

    def describe(self) -> str:
        """'1,347 samples x (logits 10) float32 = 53.9 KB'-like summary of what is held."""
        parts = []
        for out in self._outputs:
            for name, t in (out or {}).items():
                shape = "x".join(str(s) for s in t.shape[1:])
                parts.append(f"{'logits' if name == _LOGITS else name} {shape} {str(t.dtype).removeprefix('torch.')}")
        return f"{len(self):,} samples x ({', '.join(parts)}) = {_size(self.nbytes)}"

    # ------------------------------------------------------------------------------------------- storage
    def allocate(self, teacher: int, logits: torch.Tensor | None, feats: Mapping[str, torch.Tensor]) -> None:
        """Storage for teacher `teacher` shaped like one batch of its outputs; refused above `max_bytes`."""
        if self._outputs[teacher] is not None:
            return
        items = ({_LOGITS: logits} if logits is not None else {}) | dict(feats)
        need = self.nbytes + sum(len(self) * v[0].numel() * v.element_size() for v in items.values())
        if self.max_bytes is not None and need > self.max_bytes:
            shapes = ", ".join(f"{'logits' if k == _LOGITS else k} {'x'.join(map(str, v.shape[1:]))}"
                               for k, v in items.items())
            raise KdlabError(f"the teacher cache would need {_size(need)} ({len(self):,} samples x {shapes}), more "
                             f"than cache_max_gb={self.max_bytes / 1e9:g}; raise cache_max_gb="
                             f"{math.ceil(need / 1e9)} if memory and disk allow, or drop --cache-teacher")
        store = {}
        for name, value in items.items():
            fmt = torch.contiguous_format
            channels_last = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last)
            if channels_last and not value.is_contiguous():
                fmt = torch.channels_last
                self._channels_last[teacher].add(name)
            store[name] = torch.empty((len(self), *value.shape[1:]), dtype=value.dtype, device=self.device,
                                      memory_format=fmt)
        self._outputs[teacher] = store

    def _rows(self, indices: torch.Tensor) -> torch.Tensor | None:
        """Cache rows of a batch's dataset indices; None when one is not a training sample of this cache."""
        indices = indices.detach().to("cpu", torch.int64)
        if not len(indices) or int(indices.min()) < 0 or int(indices.max()) >= len(self._slot):
            return None
        rows = self._slot.index_select(0, indices)
        return None if bool((rows < 0).any()) else rows

    def lookup(self, teacher: int, indices: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]] | None:
        """(logits or None, taps) of teacher `teacher` for a batch, or None unless every sample is cached."""
        store = self._outputs[teacher]
        rows = self._rows(indices) if store is not None else None
        if rows is None or (not self.complete and not bool(self._filled[teacher].index_select(0, rows).all())):
            self.misses += 1
            return None
        self.hits += 1
        rows = rows.to(self.device)
        out = {}
        for name, value in store.items():
            picked = value.index_select(0, rows)
            if name in self._channels_last[teacher]:
                picked = picked.contiguous(memory_format=torch.channels_last)
            out[name] = picked
        logits = out.pop(_LOGITS, None)
        return logits, out

    @torch.no_grad()
    def store(self, teacher: int, indices: torch.Tensor, logits: torch.Tensor | None,
              feats: Mapping[str, torch.Tensor]) -> None:
        """Keep the outputs of samples not cached yet; saves the cache once every sample of every teacher is in."""
        rows = self._rows(indices)
        if rows is None or self.complete:
            return
        self.allocate(teacher, logits, feats)
        new = ~self._filled[teacher].index_select(0, rows)
        if not bool(new.any()):
            return
        items = ({_LOGITS: logits} if logits is not None else {}) | dict(feats)
        store = self._outputs[teacher]
        if set(items) != set(store):
            raise KdlabError(f"teacher {teacher} produced outputs {sorted(items)} but its cache holds {sorted(store)}; "
                             f"one cache serves one method's taps: build a new TeacherCache")
        new_rows = rows[new].to(self.device)
        new_dev = new.to(self.device)
        for name, value in items.items():
            store[name].index_copy_(0, new_rows, value[new_dev].to(store[name].dtype))
        self._filled[teacher, rows[new]] = True
        if bool(self._filled.all()):
            self.complete = True
            self.save()

    # ------------------------------------------------------------------------------------------- disk
    def save(self) -> Path | None:
        """Write the complete cache to `path` atomically (a failed write only warns: training goes on)."""
        if self.path is None or not self.complete or self.saved:
            return None
        payload = {"format": FORMAT, "key": self.key, "indices": self.indices,
                   "channels_last": [sorted(s) for s in self._channels_last],
                   "outputs": [{k: v.cpu() for k, v in (out or {}).items()} for out in self._outputs],
                   "description": json.dumps(self.description, sort_keys=True, default=str)}
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(payload, tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            print(f"kdlab: warning: could not write the teacher cache to {self.path} ({exc}); it stays in memory "
                  f"for this run only", file=sys.stderr)
            return None
        self.saved = True
        if self.log:
            self.log(f"teacher cache: saved {self.path} ({_size(self.path.stat().st_size)})")
        return self.path

    def load(self) -> bool:
        """Fill the cache from `path` if it holds this key's complete outputs (else leave it empty)."""
        if self.path is None or not self.path.is_file():
            return False
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # a damaged or foreign file is rebuilt, never trusted
            print(f"kdlab: warning: ignoring unreadable teacher cache {self.path} ({type(exc).__name__}); it will "
                  f"be rebuilt", file=sys.stderr)
            return False
        data = data if isinstance(data, dict) else {}
        outputs, indices = data.get("outputs"), data.get("indices")
        if (data.get("format") != FORMAT or data.get("key") != self.key or not isinstance(outputs, list)
                or len(outputs) != len(self._outputs) or not isinstance(indices, torch.Tensor)
                or not torch.equal(indices, self.indices)
                or any(v.shape[0] != len(self) for out in outputs for v in out.values())):
            print(f"kdlab: warning: ignoring teacher cache {self.path}: it was written for other data or "
                  f"teachers; it will be rebuilt", file=sys.stderr)
            return False
        self._outputs = [{k: v.to(self.device) for k, v in out.items()} for out in outputs]
        self._channels_last = [set(names) for names in data.get("channels_last", [[] for _ in outputs])]
        self._filled[:] = True
        self.complete = self.saved = True
        return True


# ----------------------------------------------------------------------------------------------- run_distill
def check_cacheable(config: Any, objective: Any, train_loader: Any, distributed: Any = None) -> None:
    """Refuse (one line each) setups whose teacher outputs are not a function of the sample alone."""
    method = config.method
    if not objective.teachers:
        raise KdlabError(f"--cache-teacher has nothing to cache: method '{method}' uses no teacher; "
                         f"drop --cache-teacher")
    if objective.teacher_train_mode:
        raise KdlabError(f"--cache-teacher cannot cache method '{method}': its teacher runs in train mode (batch "
                         f"statistics), so its outputs change with every batch; drop --cache-teacher")
    if any(m.views > 1 for m in getattr(objective, "methods", ())):  # SSKD's rotations (Method.expand_batch)
        raise KdlabError(f"--cache-teacher cannot cache method '{method}': its teacher sees transformed views of "
                         f"each batch (rotations), not the samples the cache is keyed by; drop --cache-teacher")
    if distributed is not None and distributed.world_size > 1:
        raise KdlabError("--cache-teacher runs in one process only (each rank sees other samples every epoch); "
                         "drop it under torchrun")
    dataset = getattr(train_loader, "dataset", None)
    if getattr(dataset, "indices", None) is None:
        raise KdlabError("--cache-teacher needs kdlab's training loader (batches carrying dataset indices); "
                         "drop --cache-teacher")
    if not config.data.augment:
        return
    in_memory = isinstance(getattr(dataset, "images", None), torch.Tensor)
    if in_memory and (getattr(train_loader, "fixed_augmentation", False)
                      or (dataset.crop_padding == 0 and not dataset.flip)):
        return  # one fixed view per sample, or a dataset without random augmentation (digits, MNIST)
    if in_memory:
        raise KdlabError(f"--cache-teacher needs the same teacher input every epoch, but data.augment=true draws "
                         f"new crops/flips of {config.data.name} each epoch; add data.fixed_augmentation=true "
                         f"(one fixed view per sample) or data.augment=false")
    raise KdlabError(f"--cache-teacher needs the same teacher input every epoch, but {config.data.name}'s random "
                     f"resized crops change each epoch; set data.augment=false")


def _view(model: nn.Module) -> list[Any] | None:
    """A low-resolution teacher's own input view (kdlab.runner.common.DownscaledInput), part of its identity."""
    view = getattr(model, "view", None)
    return None if view is None else [getattr(view, "size", None), getattr(view, "mode", None)]


def cache_key_parts(config: Any, objective: Any, train_loader: Any, device: torch.device) -> dict[str, Any]:
    """Everything the cached outputs depend on (hashed into the key; see the module docstring)."""
    dataset = train_loader.dataset
    in_memory = isinstance(getattr(dataset, "images", None), torch.Tensor)
    augmenting = bool(config.data.augment and (not in_memory or dataset.crop_padding > 0 or dataset.flip))
    fixed = bool(augmenting and getattr(train_loader, "fixed_augmentation", False))
    teachers = [{"weights": module_digest(t), "class": type(t).__name__, "view": _view(t), **rec.signature}
                for t, rec in zip(objective.teachers, objective.teacher_recorders, strict=True)]
    return {
        "format": FORMAT, "torch": torch.__version__, "teachers": teachers,
        "logits": bool(objective.teacher_logits_needed),
        "data": {"name": config.data.name, "fraction": config.data.fraction, "coarse": config.data.coarse,
                 "image_size": config.data.image_size, "samples": len(dataset), "content": dataset_digest(dataset)},
        "transform": {"augment": augmenting, "fixed_augmentation": fixed,
                      "augmentation_seed": int(train_loader.seed) if fixed else None,
                      "crop_padding": getattr(dataset, "crop_padding", None), "flip": getattr(dataset, "flip", None)},
        "precision": config.precision, "channels_last": bool(config.channels_last), "device": device.type,
    }


def attach_teacher_cache(config: Any, objective: Any, train_loader: Any, input_shape: tuple[int, ...],
                         device: torch.device, distributed: Any = None, quiet: bool = False) -> TeacherCache | None:
    """run_distill's `cache_teacher`: check the setup, key the cache, load it from disk (no teacher forward) or
    allocate it from one probe batch (size checked before training), and hand it to the objective."""
    if not config.cache_teacher:
        return None
    check_cacheable(config, objective, train_loader, distributed)
    parts = cache_key_parts(config, objective, train_loader, device)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    directory = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    cache = TeacherCache(train_loader.dataset.indices, key=key, path=directory / f"{key[:32]}.pt",
                         num_teachers=len(objective.teachers), max_bytes=int(config.cache_max_gb * 1e9),
                         device=device, description=parts, log=None if quiet else _say)
    if cache.load():
        _say(f"teacher cache: loaded {cache.path}: {cache.describe()}", quiet)
    else:
        example = torch.zeros(1, *input_shape, device=device)
        if config.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        with autocast(device, config.precision):
            for i in range(len(objective.teachers)):
                logits, feats = objective.teacher_outputs(example, i)
                cache.allocate(i, logits, feats)
        _say(f"teacher cache: {cache.describe()}; filled in the first epoch, then saved to {cache.path}", quiet)
    objective.teacher_cache = cache
    return cache


def _say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)
