"""ImageNet-style class folders (``<root>/train``, ``<root>/val``) through torchvision's ImageFolder.

Images are decoded per sample in DataLoader workers (too large to hold in memory); batches have the
same ``(images, targets, indices)`` form and the same (seed, epoch) ordering as the in-memory loader.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from kdlab.data.decode import decode_batch, eval_batch, resolve_decode, train_batch
from kdlab.data.fractions import stratified_subset
from kdlab.data.memory import ShardedLoader, epoch_generator
from kdlab.errors import KdlabError

__all__ = ["IndexedImageFolder", "FolderLoader", "IMAGENET_MEAN", "IMAGENET_STD", "train_transform",
           "test_transform", "UnreadableImageError", "find_unreadable"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HINTS = {
    "imagenet": "put the ImageNet (ILSVRC-2012) folders train/ and val/, each with one subfolder per class "
                "(val images sorted into class folders), in <data-root>/imagenet",
    "imagefolder": "point --data-root at a folder holding train/ and val/, each with one subfolder of images "
                   "per class",
}


def train_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable:
    """RandomResizedCrop + horizontal flip + ToTensor + Normalize (the standard ImageNet recipe)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])


def test_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable:
    """Resize to image_size*256/224 then CenterCrop(image_size) (the standard 0.875 crop ratio)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])


UNREADABLE_MODES = ("error", "check", "skip")
_UNREADABLE_FIX = ("replace or delete it, or set data.unreadable=skip to leave unreadable images out "
                   "(data.unreadable=check finds them all before training)")


class UnreadableImageError(KdlabError):
    """An image file that cannot be decoded, named in one line.

    A DataLoader worker's exception is re-raised in the main process as ``type(text)``, where ``text`` holds
    the worker's whole traceback; its last line is ``<type>: <message>``, so the message is recovered."""

    def __init__(self, message: str) -> None:
        if "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text[:200]}"


# What a broken file raises: OSError (missing, truncated, UnidentifiedImageError), ValueError/SyntaxError
# (malformed headers), DecompressionBombError (absurd sizes).
def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can.

    PIL's ``verify()`` only parses the headers of a JPEG, so a truncated download passes it; this decodes
    the whole file instead, JPEGs at 1/8 scale (``draft``), which still reads all of the compressed data."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))
            image.load()
    except _decode_errors() as exc:
        return _reason(exc)
    return None


def find_unreadable(paths: Sequence[str | Path], threads: int | None = None) -> list[tuple[str, str]]:
    """``(path, reason)`` of every file in ``paths`` that cannot be decoded, in the order of ``paths``."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without holding the GIL
        reasons = list(pool.map(unreadable_reason, paths, chunksize=64))
    return [(str(path), reason) for path, reason in zip(paths, reasons, strict=True) if reason is not None]


def split_folder(name: str, root: Path, train: bool) -> Path:
    """The train/ or val/ folder for ``name``; imagenet also looks in ``<root>/imagenet``."""
    split = "train" if train else "val"
    candidates = [root / "imagenet" / split, root / split] if name == "imagenet" else [root / split]
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise KdlabError(f"{name} {split} folder not found (tried {tried}); {_HINTS[name]}")


class IndexedImageFolder(Dataset):
    """ImageFolder returning ``(image, target, index)``; ``index`` is the position in the full split.

    ``fraction`` keeps a class-stratified seeded subset; ``augment`` selects the random training
    transform (else the deterministic resize + center crop). ``unreadable``: ``error`` stops at the first
    image that cannot be decoded, naming it; ``check`` decodes every image first and stops naming the bad
    ones; ``skip`` does the same pass and leaves them out.
    """

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        image_size: int = 224,
        fraction: float | None = None,
        seed: int = 0,
        augment: bool | None = None,
        name: str = "imagefolder",
        unreadable: str = "error",
    ) -> None:
        from torchvision.datasets import ImageFolder

        if unreadable not in UNREADABLE_MODES:
            raise KdlabError(f"data.unreadable '{unreadable}' is not one of {', '.join(UNREADABLE_MODES)}; "
                             f"e.g. data.unreadable=skip")

        self.name = name
        self.train = train
        self.root = split_folder(name, Path(root), train)
        augment = train if augment is None else augment
        self.augment = augment  # the random training transform (else resize + centre crop); also data.decode=gpu
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        transform = (train_transform if augment else test_transform)(image_size, self.mean, self.std)
        try:
            self.folder = ImageFolder(str(self.root), transform=transform)
        except (FileNotFoundError, RuntimeError) as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise KdlabError(f"{self.root} holds no usable class folders ({first_line}); {_HINTS[name]}") from None
        if unreadable != "error":
            self._leave_out_unreadable(unreadable == "skip")
        self.class_names: list[str] = list(self.folder.classes)
        self.num_classes = len(self.class_names)
        self.in_channels = 3  # the default loader converts every image to RGB
        self.image_size = image_size
        all_targets = torch.tensor(self.folder.targets, dtype=torch.int64)
        self.full_size = len(all_targets)
        self.indices = (torch.arange(self.full_size) if fraction is None
                        else stratified_subset(all_targets, fraction, seed))
        self.targets = all_targets[self.indices]

    def _leave_out_unreadable(self, skip: bool) -> None:
        """The up-front pass of data.unreadable=check|skip over every file of the split."""
        samples = self.folder.samples
        bad = find_unreadable([path for path, _ in samples])
        if not bad:
            return
        path, reason = bad[0]
        if len(bad) == len(samples):
            raise KdlabError(f"none of the {len(samples)} images in {self.root} can be read, e.g. {path} ({reason}); "
                             f"check that the folder holds image files")
        if not skip:
            raise KdlabError(f"{len(bad)} of the {len(samples)} images in {self.root} cannot be read, e.g. {path} "
                             f"({reason}); replace or delete them, or set data.unreadable=skip to leave them out")
        left_out = {p for p, _ in bad}
        self.folder.samples = [s for s in samples if s[0] not in left_out]
        self.folder.imgs = self.folder.samples
        self.folder.targets = [target for _, target in self.folder.samples]
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one note from rank 0
            print(f"kdlab: data.unreadable=skip: left out {len(bad)} unreadable image(s) of {self.root}, e.g. "
                  f"{path} ({reason})", file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        index = int(self.indices[i])
        path, target = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except _decode_errors() as exc:
            raise UnreadableImageError(f"image {path} cannot be read ({_reason(exc)}); {_UNREADABLE_FIX}") from None
        if self.folder.transform is not None:
            image = self.folder.transform(image)
        return image, int(target), index


class EncodedImages(Dataset):
    """The files of an :class:`IndexedImageFolder` as ``(bytes as uint8 1-D tensor, path, target, index)``: what
    DataLoader workers read under data.decode=gpu (decoding happens in the main process, kdlab.data.decode)."""

    def __init__(self, folder: IndexedImageFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int, int]:
        index = int(self.folder.indices[i])
        path, target = self.folder.folder.samples[index]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UnreadableImageError(f"image {path} cannot be read ({_reason(exc)}); {_UNREADABLE_FIX}") from None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), path, int(target), index


def collate_encoded(batch: list) -> tuple[list[torch.Tensor], list[str], torch.Tensor, torch.Tensor]:
    """A batch of EncodedImages items: the files' bytes and paths as lists (their lengths differ), targets and
    indices as int64 tensors."""
    data, paths, targets, indices = zip(*batch)
    return list(data), list(paths), torch.tensor(targets, dtype=torch.int64), torch.tensor(indices, dtype=torch.int64)


class FolderLoader(ShardedLoader):
    """Per-sample DataLoader over an :class:`IndexedImageFolder` with the TensorLoader's interface.

    Order comes from (seed, epoch) like TensorLoader; the worker seeds come from a generator seeded by
    (seed, epoch, rank), so random crops repeat on resume when ``workers > 0`` (with 0 workers they use
    the global torch RNG). Workers are not persistent because they must be re-seeded each epoch.

    ``decode="gpu"`` (data.decode; "auto" = gpu on CUDA): the workers only read the files' bytes, and each batch
    is decoded and augmented in the main process on ``device`` (kdlab.data.decode), its random draws from
    (seed, epoch, rank) whatever the number of workers.
    """

    def __init__(
        self,
        dataset: IndexedImageFolder,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        workers: int = 2,
        pad_shards: bool = True,
        decode: str = "cpu",
    ) -> None:
        if workers < 0:
            raise KdlabError(f"workers must be >= 0, got {workers}")
        super().__init__(dataset, batch_size, shuffle, drop_last, seed, num_replicas, rank, device, channels_last,
                         pad_shards)
        self.workers = workers
        self.decode = resolve_decode(decode, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.decode == "gpu":
            yield from self._iter_decoded()
            return
        pin = self.device.type == "cuda"
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.positions().tolist(),
            num_workers=self.workers, pin_memory=pin, drop_last=self.drop_last,
            generator=epoch_generator(self.seed, self.epoch, 2, self.rank),
        )
        for images, targets, indices in loader:
            images = images.to(self.device, non_blocking=pin)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets.to(self.device, non_blocking=pin), indices.to(self.device, non_blocking=pin)

    def _iter_decoded(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """data.decode=gpu: file bytes from the workers, decoded and augmented as batches on the device."""
        loader = DataLoader(
            EncodedImages(self.dataset), batch_size=self.batch_size, sampler=self.positions().tolist(),
            num_workers=self.workers, drop_last=self.drop_last, collate_fn=collate_encoded,
        )
        generator = epoch_generator(self.seed, self.epoch, 6, self.rank)  # the crops' and flips' draws
        augment = getattr(self.dataset, "augment", self.dataset.train)
        mean, std, size = self.dataset.mean, self.dataset.std, self.dataset.image_size
        for data, paths, targets, indices in loader:
            decoded = decode_batch(data, paths, self.device)
            images = (train_batch(decoded, size, generator, mean, std) if augment
                      else eval_batch(decoded, size, mean, std))
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True)
