"""MNIST and Fashion-MNIST from their official IDX files (gzipped or raw), parsed with numpy.

No download and no MD5 check: the IDX header (magic number, dimensions) and the data length are
checked instead, and every problem names the file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlab.data.memory import InMemoryDataset, as_uint8_images
from kdlab.errors import KdlabError

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "DEBIAN_FASHION_MNIST", "MNIST_MEAN", "MNIST_STD",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# Where Debian's package 'dataset-fashion-mnist' installs the four .gz files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]

# IDX type byte -> numpy dtype (big-endian for multi-byte types, as the format specifies).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_SPEC = {
    "mnist": {
        "title": "MNIST", "subdir": "MNIST/raw", "classes": [str(i) for i in range(10)],
        "mean": MNIST_MEAN, "std": MNIST_STD,
        "hint": "put the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in <data-root>/MNIST/raw "
                "(from https://yann.lecun.com/exdb/mnist/ or the mirror https://ossci-datasets.s3.amazonaws.com/mnist/)",
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST", "subdir": "FashionMNIST/raw", "classes": FASHION_MNIST_CLASSES,
        "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD,
        "hint": "run 'apt-get install dataset-fashion-mnist' (as root; installs the files in "
                "/usr/share/datasets/fashion-mnist) or put the four IDX .gz files from "
                "https://github.com/zalandoresearch/fashion-mnist in <data-root>/FashionMNIST/raw",
    },
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise KdlabError(f"{path} is not a valid gzip file ({e}); download it again") from None
    except OSError as e:
        raise KdlabError(f"cannot read {path}: {e.strerror or e}; check the file and its permissions") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array of its declared type and shape."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        magic = raw[:4].hex() if len(raw) >= 4 else f"only {len(raw)} bytes"
        raise KdlabError(f"{path} is not an IDX file (bad magic number: {magic}); download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise KdlabError(f"{path} is truncated inside its IDX header; download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise KdlabError(f"{path} is truncated or padded: shape {dims} needs {count * dtype.itemsize} data "
                         f"bytes, found {len(raw) - header}; download it again")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _locate(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _find_split(kind: str, folders: list[Path], train: bool) -> tuple[Path, Path]:
    """Image and label files for the split: the first folder holding either one, which must hold both."""
    prefix = "train" if train else "t10k"
    image_stem, label_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    spec = _SPEC[kind]
    for folder in folders:
        images, labels = _locate([folder], image_stem), _locate([folder], label_stem)
        if images and labels:
            return images, labels
        if images or labels:
            missing = label_stem if images else image_stem
            raise KdlabError(f"{spec['title']} in {folder} is incomplete: missing {missing}[.gz]; {spec['hint']}")
    tried = ", ".join(str(f / (image_stem + "[.gz]")) for f in folders)
    raise KdlabError(f"{spec['title']} not found (tried {tried}); {spec['hint']}")


def _load(kind: str, root: Path, train: bool) -> InMemoryDataset:
    spec = _SPEC[kind]
    folders = [Path(root) / spec["subdir"]]
    if kind == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    image_path, label_path = _find_split(kind, folders, train)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise KdlabError(f"{image_path}: expected uint8 images N x H x W, got {images.dtype} {images.shape}; "
                         f"download it again")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise KdlabError(f"{label_path}: expected N uint8 labels, got {labels.dtype} {labels.shape}; "
                         f"download it again")
    if labels.shape[0] != images.shape[0]:
        raise KdlabError(f"{label_path} has {labels.shape[0]} labels but {image_path} has {images.shape[0]} "
                         f"images; the two files come from different downloads, get both again")
    if labels.size and labels.max() >= 10:
        raise KdlabError(f"{label_path}: labels must be 0..9, found {labels.max()}; download it again")
    n, h, w = images.shape
    return InMemoryDataset(
        name=kind, images=as_uint8_images(images, (n, 1, h, w)), targets=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10, class_names=list(spec["classes"]), mean=spec["mean"], std=spec["std"], train=train,
        source=str(image_path.parent),
    )


def load_mnist(root: str | Path, train: bool = True) -> InMemoryDataset:
    """MNIST split from ``<root>/MNIST/raw`` (IDX files, .gz or extracted)."""
    return _load("mnist", Path(root), train)


def load_fashion_mnist(root: str | Path, train: bool = True) -> InMemoryDataset:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw``, else Debian's /usr/share/datasets/fashion-mnist."""
    return _load("fashion-mnist", Path(root), train)
