"""CIFAR-10 / CIFAR-100 from the standard python pickle folders, checked for structure (not MD5).

The MD5 of a correct copy may differ from the published one (for example a copy with the official
images in another order), so we check what matters instead: keys, dtype, 3072 values per row, label
ranges and matching counts. Pickles are read with an unpickler that only builds numpy arrays, so a
foreign pickle cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdlab.data.memory import InMemoryDataset, as_uint8_images
from kdlab.errors import KdlabError

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_pickle", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD"]

# Per-channel train-split statistics (the values used by the field's CIFAR recipes; CIFAR-100's match
# /work/shared/data/README.md).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_SPEC = {
    "cifar10": {
        "title": "CIFAR-10", "folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
    },
    "cifar100": {
        "title": "CIFAR-100", "folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
        "train": ["train"], "test": ["test"], "meta": "meta",
    },
}

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _ForeignObject(Exception):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can build dicts, lists, strings and numpy arrays, and nothing executable."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _NUMPY_GLOBALS:
            raise _ForeignObject(f"{module}.{name}")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 renamed the module
        return super().find_class(module, name)


def _fix_hint(kind: str) -> str:
    spec = _SPEC[kind]
    return f"re-extract {spec['archive']} from {_URL}"


def read_cifar_pickle(path: Path, kind: str = "cifar100") -> dict[str, object]:
    """Read one CIFAR pickle file into a dict with str keys; KdlabError naming the file if unreadable."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except _ForeignObject as e:
        raise KdlabError(f"{path} is not a CIFAR pickle file (it contains a '{e}' object); "
                         f"{_fix_hint(kind)}") from None
    except OSError as e:
        raise KdlabError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    except Exception as e:  # corrupt pickles raise many types (EOFError, UnpicklingError, ValueError, ...)
        raise KdlabError(f"{path} is corrupt or truncated ({type(e).__name__}); {_fix_hint(kind)}") from None
    if not isinstance(obj, dict):
        raise KdlabError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; {_fix_hint(kind)}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(path: Path, meta: dict, key: str, count: int, kind: str) -> list[str]:
    if key not in meta:
        raise KdlabError(f"{path} has no '{key}' entry (keys: {sorted(meta)}); {_fix_hint(kind)}")
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key]]
    if len(names) != count:
        raise KdlabError(f"{path}: '{key}' lists {len(names)} names, expected {count}; {_fix_hint(kind)}")
    return names


def _check_batch(path: Path, batch: dict, label_keys: dict[str, int], kind: str) -> tuple[np.ndarray, dict]:
    """Validate one batch dict and return (data N x 3072 uint8, {label key: int64 labels})."""
    if "data" not in batch:
        raise KdlabError(f"{path} has no 'data' entry (keys: {sorted(batch)}); {_fix_hint(kind)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise KdlabError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {desc}; "
                         f"{_fix_hint(kind)}")
    labels = {}
    for key, num_classes in label_keys.items():
        if key not in batch:
            raise KdlabError(f"{path} has no '{key}' entry (keys: {sorted(batch)}); {_fix_hint(kind)}")
        values = np.asarray(batch[key])
        if values.ndim != 1 or values.shape[0] != data.shape[0]:
            raise KdlabError(f"{path}: {data.shape[0]} images but {values.size} '{key}'; {_fix_hint(kind)}")
        if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= num_classes):
            raise KdlabError(f"{path}: '{key}' must be integers in 0..{num_classes - 1}, found "
                             f"{values.min()}..{values.max()}; {_fix_hint(kind)}")
        labels[key] = values.astype(np.int64)
    return data, labels


def _find_files(kind: str, root: Path, train: bool) -> tuple[Path, list[Path], Path]:
    """Locate the split files and meta under ``root`` (or ``root`` itself being the CIFAR folder)."""
    spec = _SPEC[kind]
    names = spec["train"] if train else spec["test"]
    candidates = [root / spec["folder"], root]
    for folder in candidates:
        wanted = [folder / n for n in names] + [folder / spec["meta"]]
        present = [p for p in wanted if p.is_file()]
        if not any(p.name in names for p in present):
            continue
        missing = [p.name for p in wanted if p not in present]
        if missing:
            raise KdlabError(f"{spec['title']} folder {folder} is incomplete: missing {', '.join(missing)}; "
                             f"{_fix_hint(kind)}")
        return folder, wanted[:-1], wanted[-1]
    tried = ", ".join(str(c / names[0]) for c in candidates)
    raise KdlabError(
        f"{spec['title']} not found (tried {tried}); put the {spec['title']} python folder "
        f"'{spec['folder']}/' under --data-root (download {spec['archive']} from {_URL} and extract it)"
    )


def _load(kind: str, root: Path, train: bool, coarse: bool) -> InMemoryDataset:
    folder, files, meta_path = _find_files(kind, Path(root), train)
    meta = read_cifar_pickle(meta_path, kind)
    if kind == "cifar10":
        label_key, num_classes = "labels", 10
        class_names = _names(meta_path, meta, "label_names", 10, kind)
        label_keys = {"labels": 10}
    else:
        fine = _names(meta_path, meta, "fine_label_names", 100, kind)
        coarse_names = _names(meta_path, meta, "coarse_label_names", 20, kind)
        label_key, num_classes = ("coarse_labels", 20) if coarse else ("fine_labels", 100)
        class_names = coarse_names if coarse else fine
        label_keys = {"fine_labels": 100, "coarse_labels": 20}
    datas, targets = [], []
    for path in files:
        data, labels = _check_batch(path, read_cifar_pickle(path, kind), label_keys, kind)
        datas.append(data)
        targets.append(labels[label_key])
    data = datas[0] if len(datas) == 1 else np.concatenate(datas)
    del datas
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if kind == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return InMemoryDataset(
        name=kind, images=as_uint8_images(data, (-1, 3, 32, 32)),
        targets=torch.from_numpy(np.concatenate(targets)), num_classes=num_classes,
        class_names=class_names, mean=mean, std=std, train=train, crop_padding=4, flip=True,
        source=str(folder), extra={"coarse": bool(coarse)} if kind == "cifar100" else {},
    )


def load_cifar10(root: str | Path, train: bool = True) -> InMemoryDataset:
    """CIFAR-10 split from ``<root>/cifar-10-batches-py`` (data_batch_1..5 / test_batch, batches.meta)."""
    return _load("cifar10", Path(root), train, coarse=False)


def load_cifar100(root: str | Path, train: bool = True, coarse: bool = False) -> InMemoryDataset:
    """CIFAR-100 split from ``<root>/cifar-100-python`` (train / test, meta); 20 coarse classes if asked."""
    return _load("cifar100", Path(root), train, coarse=coarse)
