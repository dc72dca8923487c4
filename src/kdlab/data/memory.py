"""In-memory uint8 datasets and a batch iterator that augments whole batches on the target device.

Small datasets (CIFAR, MNIST family, digits) fit in memory as one uint8 tensor; indexing a batch,
moving it to the device and augmenting it there is far cheaper than a per-sample DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kdlab.data.augment import normalize, rand_augment, random_crop, random_flip, resize
from kdlab.data.fractions import stratified_subset
from kdlab.errors import KdlabError

__all__ = ["InMemoryDataset", "TensorLoader", "epoch_generator", "resolve_on_device", "shard_positions", "shard_size"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class InMemoryDataset:
    """One split of a dataset held as ``images`` (uint8 N,C,H,W) and ``targets`` (int64 N).

    ``indices`` are the samples' positions in the full split (before any fraction was taken);
    ``full_size`` is that split's size. ``crop_padding`` / ``flip`` are the default training
    augmentation applied by :class:`TensorLoader` when ``augment=True``.
    """

    name: str
    images: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = True
    indices: torch.Tensor | None = None
    full_size: int = -1
    crop_padding: int = 0
    flip: bool = False
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise KdlabError(f"{self.name}: images must be uint8 N,C,H,W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.targets = torch.as_tensor(self.targets, dtype=torch.int64)
        if self.targets.shape != (self.images.shape[0],):
            raise KdlabError(f"{self.name}: {self.images.shape[0]} images but {self.targets.numel()} labels")
        if self.indices is None:
            self.indices = torch.arange(self.images.shape[0], dtype=torch.int64)
        if self.full_size < 0:
            self.full_size = self.images.shape[0]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """(uint8 image C,H,W, target, index in the full split), for use with a plain DataLoader."""
        return self.images[i], int(self.targets[i]), int(self.indices[i])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, positions: torch.Tensor) -> InMemoryDataset:
        """A view of the given positions (of this object), keeping their full-split indices."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        return InMemoryDataset(
            name=self.name, images=self.images[positions], targets=self.targets[positions],
            num_classes=self.num_classes, class_names=list(self.class_names), mean=self.mean, std=self.std,
            train=self.train, indices=self.indices[positions], full_size=self.full_size,
            crop_padding=self.crop_padding, flip=self.flip, source=self.source, extra=dict(self.extra),
        )

    def fraction(self, fraction: float, seed: int = 0) -> InMemoryDataset:
        """Class-stratified seeded subset (see :func:`stratified_subset`)."""
        return self.subset(stratified_subset(self.targets, fraction, seed))

    def resized(self, image_size: int) -> InMemoryDataset:
        """Copy with images resized once to ``image_size`` (area when shrinking, bilinear when growing)."""
        if image_size == self.image_size:
            return self
        mode = "area" if image_size < self.image_size else "bilinear"
        return replace(self, images=resize(self.images, image_size, mode=mode))


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """A CPU generator depending only on (seed, epoch, stream, rank): hash-mixed, so nearby seeds differ."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream), int(rank)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def shard_positions(
    n: int, shuffle: bool, seed: int, epoch: int, num_replicas: int = 1, rank: int = 0, pad: bool = True
) -> torch.Tensor:
    """Positions this rank visits in an epoch (DistributedSampler semantics).

    All ranks draw the same permutation from (seed, epoch) and take every ``num_replicas``-th entry
    starting at ``rank``. With ``pad`` the permutation is extended by repeating its start so every rank
    gets the same count; without it ranks differ by at most one sample and nothing is duplicated.
    """
    order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0)) if shuffle else torch.arange(n)
    if num_replicas > 1:
        if pad and n > 0:
            total = math.ceil(n / num_replicas) * num_replicas
            repeats = math.ceil(total / n)
            order = order.repeat(repeats)[:total]
        order = order[rank::num_replicas]
    return order


def check_batching(batch_size: object, num_replicas: int, rank: int) -> None:
    """One-line errors for a batch size or a rank that a loader cannot use."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KdlabError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise KdlabError(f"rank {rank} is not in 0..{num_replicas - 1} (num_replicas={num_replicas})")


def shard_size(n: int, num_replicas: int = 1, rank: int = 0, pad: bool = True) -> int:
    """Number of positions :func:`shard_positions` gives this rank."""
    if num_replicas == 1:
        return n
    if pad:
        return math.ceil(n / num_replicas) if n else 0
    return len(range(rank, n, num_replicas))


class ShardedLoader:
    """What TensorLoader and FolderLoader share: this rank's positions of a seeded (seed, epoch) order, in
    batches (DistributedSampler semantics, see `shard_positions`). Subclasses implement `__iter__`."""

    def __init__(self, dataset: Sized, batch_size: int, shuffle: bool, drop_last: bool, seed: int, num_replicas: int,
                 rank: int, device: str | torch.device, channels_last: bool, pad_shards: bool) -> None:
        check_batching(batch_size, num_replicas, rank)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.pad_shards = pad_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation or worker seeds) the next iteration uses."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (before dropping a last partial batch)."""
        return shard_size(len(self.dataset), self.num_replicas, self.rank, self.pad_shards)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def positions(self) -> torch.Tensor:
        """Dataset positions this rank visits in the current epoch, in order."""
        return shard_positions(len(self.dataset), self.shuffle, self.seed, self.epoch,
                               self.num_replicas, self.rank, self.pad_shards)


ON_DEVICE_VALUES = ("auto", "true", "false")


def resolve_on_device(value: bool | str, device: str | torch.device) -> bool:
    """`data.on_device`: True/False as given ("true"/"false" too), "auto" = on for a CUDA device only."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ON_DEVICE_VALUES:
        raise KdlabError(f"data.on_device '{value}' is not one of auto, true, false; e.g. data.on_device=auto")
    return torch.device(device).type == "cuda" if text == "auto" else text == "true"


class TensorLoader(ShardedLoader):
    """Iterates ``(images float32 normalised N,C,H,W, targets int64, indices int64)`` batches on ``device``.

    Shuffle order and augmentation depend only on (seed, epoch) (and the rank, for augmentation), so a
    resumed run sees identical batches. Call :meth:`set_epoch` before each epoch. With
    ``num_replicas > 1`` each rank takes a disjoint shard of the same permutation; ``pad_shards=True``
    pads by repetition (training), ``False`` keeps every sample exactly once (evaluation: ranks may then
    differ by one batch, so reduce metric sums, not per-batch values, across ranks).

    ``on_device`` (``data.on_device``; "auto" = on for CUDA): the whole uint8 split, its targets and indices are
    copied to ``device`` once, and every batch is gathered, cropped, flipped and normalised there, with no
    host-to-device copy per step. The random draws stay those of the host path (the same CPU generators, drawn in
    the same order, for the whole epoch before its first batch, and moved to the device in one copy), so both
    paths yield the same batches for the same (seed, epoch). It costs the split's size in device memory
    (CIFAR-100: 50,000 x 3 x 32 x 32 uint8 = 154 MB for training, 31 MB for the test split).
    """

    def __init__(
        self,
        dataset: InMemoryDataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        pad_shards: bool = True,
        fixed_augmentation: bool = False,
        randaugment: tuple[int, int] | None = None,
        on_device: bool | str = "auto",
    ) -> None:
        super().__init__(dataset, batch_size, shuffle, drop_last, seed, num_replicas, rank, device, channels_last,
                         pad_shards)
        self.on_device = resolve_on_device(on_device, self.device)
        self._resident: tuple[InMemoryDataset, tuple[torch.Tensor, ...]] | None = None  # (dataset, its device copy)
        self.augment = augment
        # (N ops, magnitude M) of RandAugment after crop/flip (kdlab.data.augment.rand_augment), or None; its
        # draws are a stream of their own, so crop/flip draws are the same with it on or off.
        self.randaugment = randaugment
        # Fixed: each sample's crop/flip is a function of (seed, full-split index) only, the same in every
        # epoch, batch and rank (deterministic teacher inputs for teacher caching); the order still changes.
        self.fixed_augmentation = fixed_augmentation
        self._fixed_draws: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device)

    def __iter__(self) -> Iterator[Batch]:
        if self.on_device:
            yield from self._iter_resident()
            return
        positions = self.positions()
        aug_generator = epoch_generator(self.seed, self.epoch, 1, self.rank)
        strong = self.randaugment if self.augment else None
        strong_generator = epoch_generator(self.seed, self.epoch, 5, self.rank) if strong else None
        do_crop = self.augment and self.dataset.crop_padding > 0
        do_flip = self.augment and self.dataset.flip
        pin = self.device.type == "cuda"
        fixed = self.fixed_augmentation and (do_crop or do_flip)
        offsets, flips = self.fixed_draws() if fixed else (None, None)
        for b in range(len(self)):
            pos = positions[b * self.batch_size:(b + 1) * self.batch_size]
            images = self.dataset.images.index_select(0, pos)
            targets = self.dataset.targets.index_select(0, pos)
            indices = self.dataset.indices.index_select(0, pos)
            if pin:
                images, targets, indices = images.pin_memory(), targets.pin_memory(), indices.pin_memory()
            # Move uint8 first (4x smaller than float32), then augment on the device.
            images = images.to(self.device, non_blocking=pin)
            if fixed:
                if do_crop:
                    images = crop_at(images, self.dataset.crop_padding, offsets.index_select(0, pos))
                if do_flip:
                    flip = flips.index_select(0, pos).to(self.device).view(-1, 1, 1, 1)
                    images = torch.where(flip, images.flip(-1), images)
            else:
                if do_crop:
                    images = random_crop(images, self.dataset.crop_padding, aug_generator)
                if do_flip:
                    images = random_flip(images, aug_generator)
            if strong:
                images = rand_augment(images, strong[0], strong[1], strong_generator)
            out = normalize(images, self._mean, self._std)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            yield out, targets.to(self.device, non_blocking=pin), indices.to(self.device, non_blocking=pin)

    def resident(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The dataset's images, targets and indices on the device, copied once (again only when `dataset` is
        replaced, e.g. by --eval-subset); a CUDA device without room for them is refused in one line."""
        if self._resident is None or self._resident[0] is not self.dataset:
            self._resident = None  # let a replaced split's copy go before the new one is made
            data = self.dataset
            if self.device.type == "cuda":
                need = data.images.numel() + 16 * len(data)
                free, _ = torch.cuda.mem_get_info(self.device)
                if need > 0.9 * free:
                    raise KdlabError(f"data.on_device: {data.name} needs {need / 2**30:.2f} GiB on {self.device} and "
                                     f"{free / 2**30:.2f} GiB are free; set data.on_device=false")
            copies = tuple(t.to(self.device, non_blocking=True) for t in (data.images, data.targets, data.indices))
            self._resident = (data, copies)
        return self._resident[1]

    def _iter_resident(self) -> Iterator[Batch]:
        """`__iter__` on the device-resident split: the host path's batches, without a copy per step."""
        images_all, targets_all, indices_all = self.resident()
        steps, size = len(self), self.batch_size
        positions = self.positions()[:steps * size].to(self.device, non_blocking=True)
        strong = self.randaugment if self.augment else None
        strong_generator = epoch_generator(self.seed, self.epoch, 5, self.rank) if strong else None
        padding = self.dataset.crop_padding
        do_crop = self.augment and padding > 0
        do_flip = self.augment and self.dataset.flip
        offsets = flips = None
        if self.fixed_augmentation and (do_crop or do_flip):
            offsets, flips = (t.to(self.device, non_blocking=True) for t in self.fixed_draws())
            offsets, flips = offsets.index_select(0, positions), flips.index_select(0, positions)
        elif do_crop or do_flip:
            offsets, flips = self._epoch_draws(len(positions), do_crop, do_flip)
        for b in range(steps):
            start, end = b * size, min((b + 1) * size, len(positions))
            pos = positions[start:end]
            images = images_all.index_select(0, pos)
            if do_crop:
                images = crop_at(images, padding, offsets[start:end])
            if do_flip:
                images = torch.where(flips[start:end].view(-1, 1, 1, 1), images.flip(-1), images)
            if strong:
                images = rand_augment(images, strong[0], strong[1], strong_generator)
            out = normalize(images, self._mean, self._std)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            yield out, targets_all.index_select(0, pos), indices_all.index_select(0, pos)

    def _epoch_draws(self, count: int, do_crop: bool, do_flip: bool) -> tuple[torch.Tensor | None, ...]:
        """The epoch's crop offsets (count, 2) and flips (count,) on the device. They are drawn batch by batch from
        the generator of the host path, in its order (per batch: random_crop's randint, then random_flip's rand;
        kdlab.data.augment), so the values are the host path's; tests/data/test_on_device.py compares the two."""
        generator = epoch_generator(self.seed, self.epoch, 1, self.rank)
        span = 2 * self.dataset.crop_padding + 1
        crops, flips = [], []
        for start in range(0, count, self.batch_size):
            n = min(self.batch_size, count - start)
            if do_crop:
                crops.append(torch.randint(0, span, (n, 2), generator=generator))
            if do_flip:
                flips.append(torch.rand(n, generator=generator) < 0.5)
        return (torch.cat(crops).to(self.device, non_blocking=True) if crops else None,
                torch.cat(flips).to(self.device, non_blocking=True) if flips else None)

    def fixed_draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position crop offsets (N, 2) and flips (N,) of fixed augmentation, drawn once per seed.

        Drawn for every sample of the full split from (seed, stream 3) and then indexed by the samples'
        full-split indices, so a sample's view does not depend on the fraction taken, the batch or the rank.
        """
        if self._fixed_draws is None or self._fixed_draws[0] != self.seed:
            generator = epoch_generator(self.seed, 0, 3)
            full = max(int(self.dataset.full_size), int(self.dataset.indices.max()) + 1 if len(self.dataset) else 0)
            span = 2 * max(self.dataset.crop_padding, 0) + 1
            offsets = torch.randint(0, span, (full, 2), generator=generator)
            flips = torch.rand(full, generator=generator) < 0.5
            index = self.dataset.indices
            self._fixed_draws = (self.seed, offsets.index_select(0, index), flips.index_select(0, index))
        return self._fixed_draws[1], self._fixed_draws[2]


def crop_at(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at the given per-sample (row, col) offsets.

    The deterministic counterpart of :func:`random_crop` (same padding and gather arithmetic).
    """
    if padding == 0 or images.shape[0] == 0:
        return images
    n, c, h, w = images.shape
    offsets = offsets.to(images.device)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=images.device)
    cols = offsets[:, 1:2] + torch.arange(w, device=images.device)
    picked = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding))
    return picked.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def as_uint8_images(array: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """numpy uint8 array -> contiguous uint8 tensor of ``shape`` (sharing memory when possible)."""
    array = np.ascontiguousarray(array, dtype=np.uint8).reshape(tuple(shape))
    if not array.flags.writeable:  # torch.from_numpy warns on read-only buffers
        array = array.copy()
    return torch.from_numpy(array)
