"""data.decode=gpu: image-folder batches decoded with torchvision.io and augmented as tensors (kdlab.data.decode).

The same code runs with device="cpu" here; tests/data/test_gpu_data.py compares CUDA decoding with it on a GPU.
The evaluation batch is compared with the per-file PIL pipeline (kdlab.data.folder.test_transform) within a
tolerance measured on the same files: the decoders' largest difference and the resizers' largest difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.cli import main
from kdlab.data import build_loaders
from kdlab.data.decode import (
    ATTEMPTS,
    decode_batch,
    eval_batch,
    eval_resize_size,
    is_jpeg,
    random_resized_crop_box,
    resolve_decode,
)
from kdlab.data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, IndexedImageFolder
from kdlab.data.folder import test_transform as pil_eval_transform
from kdlab.errors import KdlabError

SIZE = 16  # crop size of the tests: eval resizes the shorter side to int(16 * 256 / 224) = 18
SIZES = [(40, 56), (64, 48), (33, 70), (50, 50), (18, 30)]  # (height, width): landscape, portrait, square


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth image with noise (JPEG-like content: blocks of colour, edges and texture)."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BILINEAR)).astype(np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)


def make_tree(root, png: bool = True) -> None:
    """train/ and val/ with classes a and b: JPEGs of several sizes (one greyscale per class), and a PNG each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(SIZES):
                image = Image.fromarray(photo(rng, h, w))
                if i == 1:
                    image = image.convert("L")
                image.save(folder / f"{i}.jpg", quality=(75, 90, 50)[i % 3])
            if png:
                Image.fromarray(photo(rng, 36, 44)).save(folder / "p.png")


@pytest.fixture
def tree(tmp_path):
    make_tree(tmp_path / "d")
    return tmp_path / "d"


def file_bytes(path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def pil_tensor(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def loader(root, train: bool, seed: int = 0, workers: int = 0, batch_size: int = 4) -> FolderLoader:
    folder = IndexedImageFolder(root, train=train, image_size=SIZE)
    return FolderLoader(folder, batch_size, shuffle=train, seed=seed, workers=workers, decode="gpu",
                        pad_shards=train)


def epoch(ld: FolderLoader, number: int = 1) -> list[tuple[torch.Tensor, ...]]:
    ld.set_epoch(number)
    return list(ld)


def levels_to_normalised(levels: float) -> float:
    """A difference of `levels` 0..255 steps, after Normalize: at most levels / 255 / min(std)."""
    return levels / 255.0 / min(IMAGENET_STD)


def test_decoders_and_resizers_differ_by_what_is_measured(tree) -> None:
    """The two parts of the tolerance, measured: torchvision's and PIL's decoding of the same JPEGs, and the
    tensor resize against PIL's of the same decoded image."""
    jpegs = sorted(tree.rglob("*.jpg"))
    decoded = decode_batch([file_bytes(p) for p in jpegs], [str(p) for p in jpegs], "cpu")
    decode_levels = max(int((d.int() - pil_tensor(p).int()).abs().max()) for d, p in zip(decoded, jpegs))
    # Both decode with libjpeg(-turbo) here: identical pixels, measured (0 levels); nvJPEG is compared on a GPU.
    assert decode_levels == 0
    transform = pil_eval_transform(SIZE)
    with_pil = torch.stack([transform(Image.open(p).convert("RGB")) for p in jpegs])
    with_tensors = eval_batch([pil_tensor(p) for p in jpegs], SIZE, IMAGENET_MEAN, IMAGENET_STD)
    resize_gap = float((with_pil - with_tensors).abs().max())
    # Bilinear antialiased resizing in float (torch) and in PIL's fixed point, both rounded to uint8: one level.
    assert 0 < resize_gap <= levels_to_normalised(1) + 1e-5


def test_eval_batches_match_the_pil_pipeline_within_the_measured_tolerance(tree) -> None:
    folder = IndexedImageFolder(tree, train=False, image_size=SIZE)  # the per-file PIL path
    reference = torch.stack([folder[i][0] for i in range(len(folder))])
    paths = [path for path, _ in folder.folder.samples]
    decoded = decode_batch([file_bytes(Path(p)) for p in paths], paths, "cpu")
    decode_levels = max(int((d.int() - pil_tensor(p).int()).abs().max()) for d, p in zip(decoded, paths))
    resize_gap = float((reference - eval_batch([pil_tensor(p) for p in paths], SIZE, IMAGENET_MEAN,
                                               IMAGENET_STD)).abs().max())
    # Resizing is a convex combination of pixels, so a decoding difference of d levels stays within d levels before
    # rounding, plus one level of rounding when d > 0; the resizers' own gap adds on top.
    tolerance = resize_gap + levels_to_normalised(decode_levels + (1 if decode_levels else 0)) + 1e-6
    batches = epoch(loader(tree, train=False))
    images = torch.cat([b[0] for b in batches])
    assert images.shape == reference.shape == (12, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(12))
    assert torch.equal(torch.cat([b[1] for b in batches]), folder.targets)
    assert float((images - reference).abs().max()) <= tolerance
    assert float((images - reference).abs().mean()) < levels_to_normalised(0.5)  # most pixels agree exactly


def test_train_batches_shapes_ranges_and_determinism(tree) -> None:
    first = epoch(loader(tree, train=True, seed=3))
    again = epoch(loader(tree, train=True, seed=3, workers=1))  # the draws do not depend on the workers
    other_seed = epoch(loader(tree, train=True, seed=4))
    other_epoch = epoch(loader(tree, train=True, seed=3), 2)
    assert [len(b[1]) for b in first] == [4, 4, 4]
    images = torch.cat([b[0] for b in first])
    assert images.shape == (12, 3, SIZE, SIZE) and images.dtype == torch.float32
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert bool((images >= low.view(1, 3, 1, 1) - 1e-5).all() and (images <= high.view(1, 3, 1, 1) + 1e-5).all())
    assert sorted(torch.cat([b[2] for b in first]).tolist()) == list(range(12))
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
    assert not torch.equal(images, torch.cat([b[0] for b in other_seed]))
    by_index = {int(i): im for b in first for i, im in zip(b[2], b[0])}
    later = {int(i): im for b in other_epoch for i, im in zip(b[2], b[0])}
    assert sum(not torch.equal(by_index[i], later[i]) for i in range(12)) >= 10  # new crops every epoch


def test_random_resized_crop_box_stays_inside_and_falls_back_to_the_centre() -> None:
    g = torch.Generator().manual_seed(0)
    for height, width in [(40, 56), (300, 20), (7, 9)]:
        for draws in torch.rand(50, ATTEMPTS, 4, generator=g).tolist():
            top, left, h, w = random_resized_crop_box(height, width, draws)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    # Every try asks for the whole area at the widest ratio: none fits a 300x20 strip, so the fallback takes the
    # full width and the height of the tallest allowed ratio (3/4), centred.
    never = [[1.0 - 1e-9, 1.0 - 1e-9, 0.5, 0.5]] * ATTEMPTS
    assert random_resized_crop_box(300, 20, never) == ((300 - 27) // 2, 0, 27, 20)
    assert random_resized_crop_box(20, 20, never) == (0, 0, 20, 20)


def test_eval_resize_size_is_torchvisions() -> None:
    from torchvision import transforms

    for height, width in SIZES + [(224, 300), (375, 500)]:
        resized = transforms.Resize(int(SIZE * 256 / 224))(Image.new("RGB", (width, height)))
        assert eval_resize_size(height, width, SIZE) == (resized.height, resized.width)


def test_png_and_broken_files(tmp_path) -> None:
    make_tree(tmp_path / "d")
    png = tmp_path / "d" / "val" / "a" / "p.png"
    assert not is_jpeg(file_bytes(png)) and is_jpeg(file_bytes(tmp_path / "d" / "val" / "a" / "0.jpg"))
    assert torch.equal(decode_batch([file_bytes(png)], [str(png)], "cpu")[0], pil_tensor(png))  # PIL, per file
    broken = tmp_path / "d" / "val" / "b" / "0.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a JPEG cut short: decode_jpeg and PIL both refuse it
    with pytest.raises(KdlabError) as info:
        epoch(loader(tmp_path / "d", train=False))
    message = str(info.value)
    assert str(broken) in message and "data.unreadable=skip" in message and "\n" not in message


def test_decode_values_and_auto() -> None:
    assert resolve_decode("auto", "cpu") == "cpu" and resolve_decode("auto", "cuda") == "gpu"
    assert resolve_decode("gpu", "cpu") == "gpu"  # on a CPU device: decoded in the main process, on the CPU
    with pytest.raises(KdlabError, match="data.decode 'nvjpeg' is not one of cpu, gpu, auto"):
        resolve_decode("nvjpeg", "cpu")


def test_build_loaders_and_a_training_run_with_decode_gpu(tree, tmp_path, capsys) -> None:
    train, test, _ = build_loaders("imagefolder", root=tree, batch_size=4, image_size=SIZE, workers=0, decode="gpu")
    assert train.decode == test.decode == "gpu"
    code = main(["train", "--data", "imagefolder", "--data-root", str(tree), "--model", "resnet8", "--epochs", "1",
                 "--batch-size", "4", "--quiet", "--out", str(tmp_path / "run"), f"data.image_size={SIZE}",
                 "data.workers=0", "data.decode=gpu", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--data", "digits", "data.decode=gpu"], "data.decode=gpu decodes image files"),
    (["--data", "imagefolder", "data.on_device=true"], "data.on_device=true holds in-memory datasets"),
])
def test_decode_and_on_device_refused_for_the_other_kind_of_data(tree, tmp_path, capsys, args, expected) -> None:
    code = main(["train", "--data-root", str(tree), "--model", "resnet8", "--epochs", "1", "--quiet", "--out",
                 str(tmp_path / "r"), f"data.image_size={SIZE}", "data.workers=0", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
