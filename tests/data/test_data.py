"""Tests for kdlab.data: real-format files written here, plus the real datasets in $KDLAB_DATA when present."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdlab.data.mnist as mnist_module
from kdlab import data
from kdlab.data.augment import normalize, random_crop, random_flip, resize
from kdlab.data.digits import DIGITS_MEAN, DIGITS_STD, digits_split
from kdlab.data.memory import InMemoryDataset, TensorLoader, shard_positions
from kdlab.errors import KdlabError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- writers of the real on-disk formats


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def cifar_rows(n: int, start: int) -> np.ndarray:
    """n distinct uint8 rows of 3072 values; row i starts with value (start + i) % 256."""
    base = (np.arange(n, dtype=np.int64)[:, None] + start + np.arange(3072)[None, :] * 7) % 256
    return base.astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 4, test_size: int = 6, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        write_pickle(folder / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": labels,
                                                  b"data": cifar_rows(per_batch, b * 100),
                                                  b"filenames": [b"x.png"] * per_batch}, protocol)
    write_pickle(folder / "test_batch", {b"labels": [i % 10 for i in range(test_size)],
                                         b"data": cifar_rows(test_size, 7)}, protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    return folder


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    folder = root / "cifar-100-python"
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [i % 100 for i in range(n)]
        write_pickle(folder / split, {b"data": cifar_rows(n, 3), b"fine_labels": fine,
                                      b"coarse_labels": [f % 20 for f in fine], b"batch_label": split.encode()})
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(idx_bytes(array))
    else:
        path.write_bytes(idx_bytes(array))
    return path


def write_mnist_like(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = images
        arrays[prefix + "_labels"] = labels
    return arrays


def tiny_dataset(n: int = 10, classes: int = 2, size: int = 6, crop_padding: int = 2) -> InMemoryDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return InMemoryDataset(name="tiny", images=images, targets=torch.arange(n) % classes, num_classes=classes,
                           class_names=[str(i) for i in range(classes)], mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25), crop_padding=crop_padding, flip=True)


# ---------------------------------------------------------------- registry


def test_registry_names_and_info() -> None:
    assert data.list_datasets() == sorted(
        ["cifar10", "cifar100", "mnist", "fashion-mnist", "digits", "imagenet", "imagefolder"])
    info = data.dataset_info("cifar100")
    assert (info["num_classes"], info["in_channels"], info["image_size"]) == (100, 3, 32)
    assert data.dataset_info("digits")["image_size"] == 8
    with pytest.raises(KdlabError, match="unknown dataset 'cifar1000'.*did you mean 'cifar100'"):
        data.dataset_info("cifar1000")
    with pytest.raises(KdlabError, match="coarse labels exist only for cifar100"):
        data.load("digits", coarse=True)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_written_batches(tmp_path: Path, protocol: int) -> None:
    write_cifar10(tmp_path, per_batch=4, test_size=6, protocol=protocol)
    train = data.load("cifar10", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    # Batches are concatenated in order 1..5 and each row is R, G, B planes of 32x32.
    expected = np.concatenate([cifar_rows(4, b * 100) for b in range(1, 6)]).reshape(20, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.targets.tolist() == [(b * 4 + i) % 10 for b in range(1, 6) for i in range(4)]
    assert train.class_names[0] == "airplane" and train.num_classes == 10
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)
    test = data.load("cifar10", tmp_path, train=False)
    assert len(test) == 6 and test.targets.tolist() == [0, 1, 2, 3, 4, 5]
    # The CIFAR folder itself may be given as root.
    assert len(data.load("cifar10", tmp_path / "cifar-10-batches-py")) == 20


def test_cifar100_written_fine_and_coarse(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    fine = data.load("cifar100", tmp_path)
    assert len(fine) == 300 and fine.num_classes == 100 and fine.class_names[99] == "fine99"
    assert torch.equal(fine.targets, torch.arange(300) % 100)
    coarse = data.load("cifar100", tmp_path, train=False, coarse=True)
    assert coarse.num_classes == 20 and coarse.class_names == [f"coarse{i}" for i in range(20)]
    assert torch.equal(coarse.targets, (torch.arange(100) % 100) % 20)
    _, _, info = data.build_loaders("cifar100", tmp_path, coarse=True)
    assert (info.num_classes, info.train_size, info.class_names[0]) == (20, 300, "coarse0")


@pytest.mark.real_data("cifar100")
def test_real_cifar100(real_data_root: Path) -> None:
    train, test = data.load("cifar100", real_data_root), data.load("cifar100", real_data_root, train=False)
    assert (len(train), len(test), train.num_classes) == (50000, 10000, 100)
    assert train.class_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert torch.bincount(train.targets, minlength=100).tolist() == [500] * 100
    assert torch.bincount(test.targets, minlength=100).tolist() == [100] * 100
    # The README's train statistics match the constants used for normalisation.
    pixels = train.images[:, :, ::2, ::2].to(torch.float64) / 255  # a quarter of the pixels is enough
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor(train.mean, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor(train.std, dtype=torch.float64), atol=2e-3)


@pytest.mark.real_data("cifar100")
def test_real_cifar100_coarse(real_data_root: Path) -> None:
    coarse = data.load("cifar100", real_data_root, train=False, coarse=True)
    assert coarse.num_classes == 20 and coarse.class_names[0] == "aquatic_mammals"
    assert torch.bincount(coarse.targets, minlength=20).tolist() == [500] * 20


def test_cifar_structure_errors_name_the_file(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path, n_train=10, n_test=10)
    good = {b"data": cifar_rows(10, 0), b"fine_labels": list(range(10)), b"coarse_labels": list(range(10))}
    cases = [
        ({**good, b"data": np.zeros((10, 3000), np.uint8)}, r"'data' must be a uint8 array of shape \(N, 3072\)"),
        ({**good, b"data": cifar_rows(10, 0).astype(np.float32)}, "must be a uint8 array"),
        ({**good, b"fine_labels": list(range(9))}, "10 images but 9 'fine_labels'"),
        ({**good, b"coarse_labels": [25] * 10}, r"'coarse_labels' must be integers in 0\.\.19"),
        ({b"data": good[b"data"], b"fine_labels": good[b"fine_labels"]}, "has no 'coarse_labels' entry"),
        ([1, 2, 3], "holds a list, not a CIFAR dict"),
    ]
    for obj, message in cases:
        write_pickle(folder / "train", obj)
        with pytest.raises(KdlabError, match=message) as err:
            data.load("cifar100", tmp_path)
        assert str(folder / "train") in str(err.value) and "\n" not in str(err.value)
    # Truncated file.
    write_pickle(folder / "train", good)
    (folder / "train").write_bytes((folder / "train").read_bytes()[:500])
    with pytest.raises(KdlabError, match="corrupt or truncated"):
        data.load("cifar100", tmp_path)
    # Meta with the wrong number of names.
    write_pickle(folder / "meta", {b"fine_label_names": [b"a"] * 99, b"coarse_label_names": [b"c"] * 20})
    with pytest.raises(KdlabError, match="'fine_label_names' lists 99 names, expected 100") as err:
        data.load("cifar100", tmp_path, train=False)
    assert str(folder / "meta") in str(err.value)


class _Mkdir:
    """Pickles as a call to os.mkdir: a restricted unpickler must refuse to run it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.path,))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path, n_train=10, n_test=10)
    marker = tmp_path / "was_executed"
    write_pickle(folder / "train", {b"data": _Mkdir(str(marker))})
    with pytest.raises(KdlabError, match="is not a CIFAR pickle file"):
        data.load("cifar100", tmp_path)
    assert not marker.exists()


def test_cifar_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(KdlabError) as err:
        data.load("cifar100", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in message and str(tmp_path / "train") in message
    assert "cifar-100-python.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(KdlabError, match="incomplete: missing data_batch_3, batches.meta"):
        data.load("cifar10", tmp_path)


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path))
    assert len(data.load("cifar10")) == 20
    monkeypatch.delenv("KDLAB_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KdlabError, match=r"tried data/cifar-10-batches-py/data_batch_1"):
        data.load("cifar10")


# ---------------------------------------------------------------- IDX / MNIST family


@pytest.mark.parametrize("gz", [True, False])
def test_idx_written_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist_like(tmp_path / "MNIST" / "raw", gz)
    suffix = ".gz" if gz else ""
    parsed = data.read_idx(tmp_path / "MNIST" / "raw" / f"train-images-idx3-ubyte{suffix}")
    assert parsed.dtype == np.uint8 and np.array_equal(parsed, arrays["train"])
    train = data.load("mnist", tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and torch.equal(train.images[:, 0], torch.from_numpy(arrays["train"]))
    assert train.targets.tolist() == (np.arange(20) % 10).tolist()
    assert (train.mean, train.std, train.crop_padding, train.flip) == ((0.1307,), (0.3081,), 0, False)
    assert len(data.load("mnist", tmp_path, train=False)) == 10


def test_idx_multibyte_type(tmp_path: Path) -> None:
    values = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints.idx"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + values.tobytes())
    parsed = data.read_idx(path)
    assert parsed.shape == (2, 3) and parsed.tolist() == [[-3, -2, -1], [0, 1, 2]]


def test_idx_corrupt_files_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_like(folder, gz=False)
    images = folder / "train-images-idx3-ubyte"
    good = images.read_bytes()
    cases = [
        (good[:-5], "is truncated or padded: shape \\(20, 28, 28\\) needs 15680 data bytes, found 15675"),
        (b"\x1f\x8b" + good[2:], "not an IDX file \\(bad magic number"),
        (good[:10], "truncated inside its IDX header"),
    ]
    for content, message in cases:
        images.write_bytes(content)
        with pytest.raises(KdlabError, match=message) as err:
            data.load("mnist", tmp_path)
        assert str(images) in str(err.value)
    images.write_bytes(good)
    # Labels that do not match the images' count.
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(7, np.uint8), gz=False)
    with pytest.raises(KdlabError, match="has 7 labels but .* has 20 images"):
        data.load("mnist", tmp_path)
    # A broken gzip stream.
    gz_path = write_idx(tmp_path / "bad" / "x-idx1-ubyte", np.zeros(100, np.uint8), gz=True)
    gz_path.write_bytes(gz_path.read_bytes()[:20])
    with pytest.raises(KdlabError, match="not a valid gzip file") as err:
        data.read_idx(gz_path)
    assert str(gz_path) in str(err.value)


def test_mnist_missing_and_incomplete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KdlabError) as err:
        data.load("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(err.value)
    monkeypatch.setattr(mnist_module, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(KdlabError) as err:
        data.load("fashion-mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "debian") in message
    assert "apt-get install dataset-fashion-mnist" in message
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(KdlabError, match="incomplete: missing t10k-labels-idx1-ubyte"):
        data.load("mnist", tmp_path, train=False)


def test_fashion_mnist_root_then_debian_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "debian"
    arrays = write_mnist_like(debian, gz=True, n_train=13)
    monkeypatch.setattr(mnist_module, "DEBIAN_FASHION_MNIST", debian)
    fashion = data.load("fashion-mnist", tmp_path / "empty_root")
    assert len(fashion) == 13 and fashion.class_names[9] == "Ankle boot"
    assert torch.equal(fashion.images[:, 0], torch.from_numpy(arrays["train"]))
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))
    write_mnist_like(tmp_path / "root" / "FashionMNIST" / "raw", gz=False, n_train=5)
    assert len(data.load("fashion-mnist", tmp_path / "root")) == 5  # the root wins over Debian's copy


@pytest.mark.real_data("mnist")
def test_real_mnist(real_data_root: Path) -> None:
    train = data.load("mnist", real_data_root)
    test = data.load("mnist", real_data_root, train=False)
    assert (len(train), len(test)) == (60000, 10000)
    # Published MNIST facts: the first training digit is a 5; per-class training counts.
    assert int(train.targets[0]) == 5
    assert torch.bincount(train.targets).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 1e-3


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist(tmp_path: Path) -> None:
    train = data.load("fashion-mnist", tmp_path)
    assert len(train) == 60000 and torch.bincount(train.targets).tolist() == [6000] * 10


# ---------------------------------------------------------------- digits


def test_digits_fixed_stratified_split() -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    train, test = data.load("digits"), data.load("digits", train=False)
    assert (len(train), len(test), train.images.shape[1:]) == (1347, 450, (1, 8, 8))
    counts_all = np.bincount(sk_load_digits().target)
    train_counts = torch.bincount(train.targets, minlength=10).numpy()
    assert np.all(np.abs(train_counts - 0.75 * counts_all) <= 1)  # stratified
    images, labels, train_pos, test_pos = digits_split()
    assert len(np.intersect1d(train_pos, test_pos)) == 0 and len(train_pos) + len(test_pos) == 1797
    again = digits_split()
    assert np.array_equal(again[2], train_pos) and np.array_equal(again[3], test_pos)  # fixed
    # Scaling 0..16 -> 0..255, and the stated statistics are those of the train split.
    raw = sk_load_digits().data[train_pos].reshape(-1, 1, 8, 8)
    assert torch.equal(train.images, torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8)))
    assert int(train.images.max()) == 255
    pixels = train.images.double() / 255
    assert abs(pixels.mean().item() - DIGITS_MEAN[0]) < 1e-4 and abs(pixels.std().item() - DIGITS_STD[0]) < 1e-3


def test_load_resizes_in_memory_datasets() -> None:
    big = data.load("digits", image_size=16)
    assert big.images.shape == (1347, 1, 16, 16) and big.image_size == 16 and big.images.dtype == torch.uint8
    _, test_loader, info = data.build_loaders("digits", image_size=16, test_batch_size=500)
    assert info.image_size == 16 and next(iter(test_loader))[0].shape == (450, 1, 16, 16)
    with pytest.raises(KdlabError, match="image_size must be a positive integer"):
        data.load("digits", image_size=0)


# ---------------------------------------------------------------- fractions


def test_stratified_subset_proportions_and_determinism() -> None:
    targets = torch.tensor([0] * 100 + [1] * 50 + [2] * 7 + [3] * 1)
    subset = data.stratified_subset(targets, 0.1, seed=3)
    assert torch.bincount(targets[subset], minlength=4).tolist() == [10, 5, 1, 1]  # >= 1 per class
    assert torch.equal(subset, data.stratified_subset(targets, 0.1, seed=3))
    assert not torch.equal(subset, data.stratified_subset(targets, 0.1, seed=4))
    assert torch.equal(subset, subset.sort().values) and subset.unique().numel() == subset.numel()
    larger = data.stratified_subset(targets, 0.5, seed=3)
    assert torch.bincount(targets[larger], minlength=4).tolist() == [50, 25, 4, 1]
    assert set(subset.tolist()) <= set(larger.tolist())  # nested for a fixed seed
    assert torch.equal(data.stratified_subset(targets, 1.0, seed=0), torch.arange(158))
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(KdlabError, match="fraction"):
            data.stratified_subset(targets, bad, seed=0)


def test_fraction_keeps_full_set_indices() -> None:
    full = data.load("digits")
    part = data.load("digits", fraction=0.2, seed=1)
    expected = torch.clamp(torch.round(torch.bincount(full.targets).double() * 0.2), min=1)
    assert torch.bincount(part.targets).tolist() == expected.long().tolist()
    assert part.full_size == len(full)
    assert torch.equal(full.targets[part.indices], part.targets)
    assert torch.equal(full.images[part.indices], part.images)
    loader = TensorLoader(part, batch_size=64, shuffle=True, seed=0)
    for _, targets, indices in loader:
        assert torch.equal(full.targets[indices], targets)
    _, _, info = data.build_loaders("digits", fraction=0.2)
    assert info.train_size == 1347


# ---------------------------------------------------------------- augmentation


def crop_reference(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Slow per-sample crop: pad each image and slice at its offsets."""
    out = []
    h, w = images.shape[-2:]
    for image, (oy, ox) in zip(images, offsets.tolist(), strict=True):
        padded = torch.nn.functional.pad(image, (padding,) * 4)
        out.append(padded[:, oy:oy + h, ox:ox + w])
    return torch.stack(out)


def test_random_crop_matches_per_sample_reference() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = random_crop(images, 3, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # Same generator draws -> same offsets as the reference.
    offsets = torch.randint(0, 7, (64, 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, crop_reference(images, 3, offsets))
    # Independently: every output is some shifted window of its zero-padded input.
    found = []
    for image, crop in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(image, (3,) * 4)
        hits = [(oy, ox) for oy in range(7) for ox in range(7) if torch.equal(padded[:, oy:oy + 8, ox:ox + 10], crop)]
        assert hits
        found.append(hits[0])
    assert len(set(found)) > 10  # per-sample offsets, not one shared shift
    float_out = random_crop(images.float(), 3, torch.Generator().manual_seed(5))
    assert torch.equal(float_out, out.float())


def test_random_flip() -> None:
    images = torch.arange(200 * 2 * 3 * 4, dtype=torch.float32).reshape(200, 2, 3, 4)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert torch.all(flipped ^ kept)
    assert 70 < int(flipped.sum()) < 130
    assert torch.equal(out, random_flip(images, torch.Generator().manual_seed(0)))  # seeded


def test_normalize_numbers() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    for c in range(3):
        expected = [(v / 255 - mean[c]) / std[c] for v in (0, 51, 255)]
        assert torch.allclose(out[0, c, 0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(normalize(images.float() / 255, mean, std), out, atol=1e-6)
    with pytest.raises(KdlabError, match="give one value per channel"):
        normalize(images, (0.1307,), (0.3081, 0.1))


def test_resize_modes() -> None:
    images = torch.tensor([[0, 2, 4, 6], [2, 4, 6, 8], [10, 10, 20, 20], [10, 10, 20, 20]],
                          dtype=torch.uint8).view(1, 1, 4, 4)
    area = resize(images, 2, mode="area")
    assert area.dtype == torch.uint8 and area.view(-1).tolist() == [2, 6, 10, 20]
    up = resize(images.float(), (8, 8), mode="bilinear")
    assert up.shape == (1, 1, 8, 8) and up.dtype == torch.float32
    assert resize(images, 4) is images
    with pytest.raises(KdlabError, match="unknown resize mode 'cubic'"):
        resize(images, 2, mode="cubic")


# ---------------------------------------------------------------- TensorLoader


def collect(loader: TensorLoader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_determinism_per_seed_and_epoch() -> None:
    dataset = tiny_dataset(n=40, size=8)
    a = TensorLoader(dataset, batch_size=16, shuffle=True, augment=True, seed=7)
    b = TensorLoader(dataset, batch_size=16, shuffle=True, augment=True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    first, second = collect(a), collect(b)
    assert len(first) == len(a) == 3
    assert all(torch.equal(x, y) for bx, by in zip(first, second, strict=True) for x, y in zip(bx, by, strict=True))
    assert sorted(torch.cat([batch[2] for batch in first]).tolist()) == list(range(40))
    b.set_epoch(4)
    other = collect(b)
    assert not torch.equal(torch.cat([x[2] for x in first]), torch.cat([x[2] for x in other]))
    # Same order but a different epoch's augmentation: compare sample by sample.
    a.set_epoch(3)
    plain = TensorLoader(dataset, batch_size=16, shuffle=True, augment=False, seed=7)
    plain.set_epoch(3)
    augmented = torch.cat([x[0] for x in collect(a)])
    unaugmented = torch.cat([x[0] for x in collect(plain)])
    assert not torch.equal(augmented, unaugmented)
    by_index_3 = dict(zip(torch.cat([x[2] for x in first]).tolist(), torch.cat([x[0] for x in first]), strict=True))
    by_index_4 = dict(zip(torch.cat([x[2] for x in other]).tolist(), torch.cat([x[0] for x in other]), strict=True))
    assert sum(not torch.equal(by_index_3[i], by_index_4[i]) for i in range(40)) > 20


def test_loader_outputs_normalised_batches() -> None:
    dataset = tiny_dataset(n=10)
    loader = TensorLoader(dataset, batch_size=4, shuffle=False, augment=False, channels_last=True)
    batches = collect(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(loader) == 3
    images = torch.cat([b[0] for b in batches])
    assert torch.allclose(images, (dataset.images.float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert batches[0][1].dtype == torch.int64 and batches[0][2].dtype == torch.int64
    dropping = TensorLoader(dataset, batch_size=4, drop_last=True)
    assert len(dropping) == 2 and len(collect(dropping)) == 2
    with pytest.raises(KdlabError, match="batch size must be a positive integer"):
        TensorLoader(dataset, batch_size=0)


def test_two_replicas_shard_one_permutation() -> None:
    dataset = tiny_dataset(n=11)
    loaders = [TensorLoader(dataset, batch_size=3, shuffle=True, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    for loader in loaders:
        loader.set_epoch(5)
    shards = [torch.cat([b[2] for b in collect(loader)]) for loader in loaders]
    assert [len(s) for s in shards] == [6, 6] and len(loaders[0]) == len(loaders[1]) == 2
    permutation = shard_positions(11, True, 2, 5)
    padded = torch.cat([permutation, permutation[:1]])
    assert torch.equal(shards[0], padded[0::2]) and torch.equal(shards[1], padded[1::2])
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(11))
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist()[:5])  # only the padding repeats
    # Evaluation shards: no padding, every sample exactly once.
    tests = [TensorLoader(dataset, batch_size=4, num_replicas=2, rank=r, pad_shards=False) for r in (0, 1)]
    seen = torch.cat([b[2] for t in tests for b in collect(t)])
    assert sorted(seen.tolist()) == list(range(11))
    with pytest.raises(KdlabError, match="rank 2 is not in 0..1"):
        TensorLoader(dataset, batch_size=4, num_replicas=2, rank=2)


def test_build_loaders_cifar10_ddp(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=5, test_size=9)
    results = [data.build_loaders("cifar10", tmp_path, batch_size=5, test_batch_size=4, num_replicas=2, rank=r)
               for r in (0, 1)]
    info = results[0][2]
    assert (info.num_classes, info.in_channels, info.image_size, info.train_size) == (10, 3, 32, 25)
    train_seen = [torch.cat([b[2] for b in collect(r[0])]) for r in results]
    assert [len(s) for s in train_seen] == [13, 13]
    assert set(train_seen[0].tolist()) | set(train_seen[1].tolist()) == set(range(25))
    test_seen = torch.cat([b[2] for r in results for b in collect(r[1])])
    assert sorted(test_seen.tolist()) == list(range(9))
    # 13 samples per rank in batches of 4 would leave a 1-sample batch (BatchNorm fails on it): dropped.
    train_loader, _, _ = data.build_loaders("cifar10", tmp_path, batch_size=4, num_replicas=2, rank=0)
    assert len(train_loader) == 3 and [len(b[1]) for b in train_loader] == [4, 4, 4]


# ---------------------------------------------------------------- ImageFolder


def write_image_tree(root: Path, per_class: dict[str, int], size: tuple[int, int] = (20, 24)) -> None:
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_tree(tmp_path: Path) -> None:
    write_image_tree(tmp_path, {"train": 3, "val": 2})
    dataset = data.load("imagefolder", tmp_path, image_size=16)
    assert (len(dataset), dataset.num_classes, dataset.class_names) == (6, 2, ["cat", "dog"])
    image, target, index = dataset[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and (target, index) == (1, 4)
    train_loader, test_loader, info = data.build_loaders("imagefolder", tmp_path, batch_size=4, test_batch_size=3,
                                                         workers=0, image_size=16)
    assert (info.num_classes, info.train_size, info.image_size) == (2, 6, 16)
    batches = list(train_loader)
    assert len(batches) == len(train_loader) == 2
    assert batches[0][0].shape == (4, 3, 16, 16)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(6))
    test_batches = list(test_loader)
    assert torch.cat([b[1] for b in test_batches]).tolist() == [0, 0, 1, 1]
    # Deterministic evaluation transform (resize + center crop).
    again = list(test_loader)
    assert torch.equal(test_batches[0][0], again[0][0])
    part = data.load("imagefolder", tmp_path, fraction=0.34, seed=0)
    assert len(part) == 2 and sorted(part.targets.tolist()) == [0, 1]


def test_imagenet_layout_and_missing(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "imagenet", {"train": 1, "val": 1}, size=(8, 8))
    dataset = data.load("imagenet", tmp_path, train=False, image_size=8)
    assert dataset.root == tmp_path / "imagenet" / "val" and len(dataset) == 2
    with pytest.raises(KdlabError) as err:
        data.load("imagenet", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "imagenet" / "train") in str(err.value)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(KdlabError, match="holds no usable class folders"):
        data.load("imagefolder", tmp_path / "empty")
