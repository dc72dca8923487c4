"""Datasets for kdlab: one registry, ``load`` for a split and ``build_loaders`` for train/test batches.

Each registry entry owns what is specific to its dataset: shape, classes, loader and the standard training
recipe (``recipe(name, model)``), which kdlab.config lays under a run's own settings. Adding a dataset is
one loader and one ``_Entry`` (docs/architecture.md, "Adding a dataset").

Batches are ``(images float32 normalised N,C,H,W, targets int64 N, indices int64 N)`` where ``indices``
are positions in the full (unfractioned) training split, used by CRD and teacher caching.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.data.augment import normalize, random_crop, random_flip, resize
from kdlab.data.cifar import load_cifar10, load_cifar100
from kdlab.data.digits import load_digits
from kdlab.data.folder import FolderLoader, IndexedImageFolder
from kdlab.data.folder_recipe import folder_recipe, folder_stats
from kdlab.data.fractions import check_fraction, stratified_subset
from kdlab.data.memory import InMemoryDataset, TensorLoader, shard_size
from kdlab.data.mnist import load_fashion_mnist, load_mnist, read_idx
from kdlab.errors import KdlabError, unknown_name

__all__ = [
    "DataInfo", "FolderLoader", "InMemoryDataset", "IndexedImageFolder", "TensorLoader", "build_loaders",
    "data_root", "dataset_info", "list_datasets", "load", "normalize", "random_crop", "random_flip",
    "read_idx", "recipe", "resize", "stratified_subset",
]

Recipe = Callable[[str], dict[str, Any]]  # model name -> config values ({"optim": {...}, "data": {...}})


def _light(model: str) -> bool:
    return any(key in model for key in ("mobilenet", "shufflenet"))


def _cifar_recipe(model: str) -> dict[str, Any]:
    """The CRD/RepDistiller protocol (github.com/HobbitLong/RepDistiller `train_student.py`): 240 epochs, SGD
    0.9, lr 0.05 (0.01 for MobileNetV2/ShuffleNet students), x0.1 at 150/180/210, batch 64, weight decay 5e-4."""
    return {"optim": {"epochs": 240, "lr": 0.01 if _light(model) else 0.05, "schedule": "step",
                      "milestones": [150, 180, 210], "gamma": 0.1, "weight_decay": 5e-4},
            "data": {"batch_size": 64}}


def _imagenet_recipe(model: str) -> dict[str, Any]:
    """torchvision's ResNet recipe, as mdistiller's ImageNet configs use it: 100 epochs, lr 0.1, x0.1 at
    30/60/90, batch 256, weight decay 1e-4, 224 px."""
    return {"optim": {"epochs": 100, "lr": 0.1, "schedule": "step", "milestones": [30, 60, 90],
                      "gamma": 0.1, "weight_decay": 1e-4},
            "data": {"batch_size": 256, "image_size": 224}}


def _mnist_recipe(model: str) -> dict[str, Any]:
    """A short cosine schedule for the 28x28 grey datasets (kdlab's choice; no standard KD recipe exists)."""
    return {"optim": {"epochs": 20, "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
            "data": {"batch_size": 128}}


def _digits_recipe(model: str) -> dict[str, Any]:
    """The embedded quick-run default (kdlab's choice): 30 cosine epochs."""
    return {"optim": {"epochs": 30, "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
            "data": {"batch_size": 64}}


@dataclass(frozen=True)
class _Entry:
    num_classes: int | None  # None: known only after reading the folder
    in_channels: int
    image_size: int
    description: str
    load_split: Callable[..., InMemoryDataset] | None  # None: ImageFolder-based
    recipe: Recipe  # the standard training recipe on this dataset


_REGISTRY: dict[str, _Entry] = {
    "cifar10": _Entry(10, 3, 32, "CIFAR-10: 50k/10k 32x32 RGB, 10 classes (cifar-10-batches-py/)",
                      lambda root, train, coarse: load_cifar10(root, train), _cifar_recipe),
    "cifar100": _Entry(100, 3, 32, "CIFAR-100: 50k/10k 32x32 RGB, 100 fine or 20 coarse classes "
                       "(cifar-100-python/)", lambda root, train, coarse: load_cifar100(root, train, coarse),
                       _cifar_recipe),
    "mnist": _Entry(10, 1, 28, "MNIST: 60k/10k 28x28 grey digits (MNIST/raw IDX files)",
                    lambda root, train, coarse: load_mnist(root, train), _mnist_recipe),
    "fashion-mnist": _Entry(10, 1, 28, "Fashion-MNIST: 60k/10k 28x28 grey clothing (FashionMNIST/raw IDX "
                            "files or Debian's dataset-fashion-mnist)",
                            lambda root, train, coarse: load_fashion_mnist(root, train), _mnist_recipe),
    "digits": _Entry(10, 1, 8, "scikit-learn digits: 1,347/450 8x8 grey, bundled, no download",
                     lambda root, train, coarse: load_digits(train), _digits_recipe),
    "imagenet": _Entry(1000, 3, 224, "ImageNet (ILSVRC-2012) class folders <data-root>/imagenet/{train,val}",
                       None, _imagenet_recipe),
    "imagefolder": _Entry(None, 3, 224, "any class-folder tree <data-root>/{train,val}/<class>/<image>", None,
                          _imagenet_recipe),
}


@dataclass
class DataInfo:
    """What models and methods need to know about the data (full train size for CRD memory banks)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    class_names: list[str] = field(default_factory=list)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def recipe(name: str, model: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The standard training recipe of dataset `name` for `model`, as nested config values ({} for an unknown
    name, so that config validation reports it). `imagefolder` derives it from the folder under `root`
    (kdlab.data.folder_recipe)."""
    if name not in _REGISTRY:
        return {}
    if name == "imagefolder":
        return folder_recipe(folder_stats(data_root(root) / "train"), _REGISTRY[name].recipe(model))
    return _REGISTRY[name].recipe(model)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY)
    return _REGISTRY[name]


def dataset_info(name: str) -> dict:
    """Static facts of a dataset: num_classes (None for imagefolder), in_channels, image_size, description."""
    e = _entry(name)
    return {"num_classes": e.num_classes, "in_channels": e.in_channels, "image_size": e.image_size,
            "description": e.description}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else $KDLAB_DATA, else ./data."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("KDLAB_DATA") or "data")


def _check_image_size(image_size: object) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise KdlabError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size


def _last_batch_single(n: int, batch_size: int, num_replicas: int, rank: int) -> bool:
    """True when a rank's last training batch would hold one sample (and it is not the only batch)."""
    per_rank = shard_size(n, num_replicas, rank)
    return per_rank > batch_size and per_rank % batch_size == 1


def load(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    fraction: float | None = None,
    seed: int = 0,
    coarse: bool = False,
    image_size: int | None = None,
) -> InMemoryDataset | IndexedImageFolder:
    """One split of dataset ``name``; ``fraction`` keeps a seeded class-stratified subset of it.

    In-memory datasets are resized once to ``image_size`` when it differs from the native size;
    ImageFolder datasets crop to it (default 224).
    """
    entry = _entry(name)
    if coarse and name != "cifar100":
        raise KdlabError(f"coarse labels exist only for cifar100, not '{name}'; drop the coarse option")
    image_size = _check_image_size(image_size)
    if fraction is not None:
        check_fraction(fraction)
    if entry.load_split is None:
        return IndexedImageFolder(data_root(root), train=train, image_size=image_size or entry.image_size,
                                  fraction=fraction, seed=seed, name=name)
    dataset = entry.load_split(None if name == "digits" else data_root(root), train, coarse)
    if fraction is not None:
        dataset = dataset.fraction(fraction, seed)
    if image_size is not None:
        dataset = dataset.resized(image_size)
    return dataset


def build_loaders(
    name: str,
    root: str | os.PathLike | None = None,
    batch_size: int = 64,
    test_batch_size: int = 256,
    fraction: float | None = None,
    seed: int = 0,
    augment: bool = True,
    workers: int = 2,
    num_replicas: int = 1,
    rank: int = 0,
    device: str = "cpu",
    channels_last: bool = False,
    coarse: bool = False,
    image_size: int | None = None,
    unreadable: str = "error",
    on_device: bool | str = "auto",
    decode: str = "cpu",
) -> tuple[TensorLoader | FolderLoader, TensorLoader | FolderLoader, DataInfo]:
    """Train loader (shuffled, augmented, sharded with padding) and test loader (ordered, sharded without
    duplicates: ranks may differ by one sample, so reduce metric sums across ranks), plus :class:`DataInfo`.

    ``fraction`` applies to the train split only. The train loader drops its last batch only when it
    would hold a single sample, which BatchNorm cannot train on. ``on_device`` (in-memory datasets: the splits
    live on ``device``, see TensorLoader) and ``decode`` (image folders: ``cpu`` = PIL in the workers, ``gpu`` =
    batched torchvision decoding on ``device``, ``auto`` = gpu on CUDA; see kdlab.data.decode) are ignored by the
    other kind of dataset.
    """
    entry = _entry(name)
    if entry.load_split is None:
        image_size = _check_image_size(image_size) or entry.image_size
        if coarse:
            raise KdlabError(f"coarse labels exist only for cifar100, not '{name}'; drop the coarse option")
        base = data_root(root)
        train_set = IndexedImageFolder(base, True, image_size, fraction, seed, augment=augment, name=name,
                                       unreadable=unreadable)
        test_set = IndexedImageFolder(base, False, image_size, name=name, unreadable=unreadable)
        if test_set.class_names != train_set.class_names:
            raise KdlabError(f"{train_set.root} and {test_set.root} have different class folders "
                             f"({train_set.num_classes} vs {test_set.num_classes}); give both the same classes")
        common = dict(seed=seed, num_replicas=num_replicas, rank=rank, device=device,
                      channels_last=channels_last, workers=workers, decode=decode)
        single = _last_batch_single(len(train_set), batch_size, num_replicas, rank)
        train_loader = FolderLoader(train_set, batch_size, shuffle=True, drop_last=single, **common)
        test_loader = FolderLoader(test_set, test_batch_size, shuffle=False, pad_shards=False, **common)
    else:
        train_set = load(name, root, True, fraction, seed, coarse, image_size)
        test_set = load(name, root, False, None, seed, coarse, image_size)
        common = dict(seed=seed, num_replicas=num_replicas, rank=rank, device=device,
                      channels_last=channels_last, on_device=on_device)
        single = _last_batch_single(len(train_set), batch_size, num_replicas, rank)
        train_loader = TensorLoader(train_set, batch_size, shuffle=True, drop_last=single, augment=augment,
                                    **common)
        test_loader = TensorLoader(test_set, test_batch_size, shuffle=False, augment=False, pad_shards=False,
                                   **common)
    info = DataInfo(
        name=name, num_classes=train_set.num_classes, in_channels=train_set.in_channels,
        image_size=train_set.image_size, mean=tuple(train_set.mean), std=tuple(train_set.std),
        train_size=train_set.full_size, class_names=list(train_set.class_names),
    )
    return train_loader, test_loader, info
