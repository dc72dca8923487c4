"""The images an export is checked on and a quantization calibrated on: the run's own data when it can be read,
else random pixels of the shape the model takes; and the preprocessing a deployed model is fed with.

Images are kept as pixels in 0..1 at the data's size (full size for a cross-quality student) together with
what kdlab's loader made of them, so that a check compares the exported model fed by its preprocessing JSON
(resize, then mean/std) with the PyTorch model fed exactly as in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdlab import data as datasets
from kdlab.data.augment import resize
from kdlab.errors import KdlabError
from kdlab.runner.checkpoints import check_against_data


@dataclass
class Samples:
    pixels: torch.Tensor  # N,C,H,W float in 0..1 at the data's size
    normalised: torch.Tensor | None  # the same images as kdlab's loader gives them (None for random inputs)
    targets: torch.Tensor | None
    source: str  # what the images are, for messages: "digits test split", "random inputs"


@dataclass
class RunData:
    """The loaders of a model's dataset (unaugmented) and its DataInfo."""

    train: Any
    test: Any
    info: Any

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.info.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, dtype=images.dtype).view(1, -1, 1, 1)
        return images.float() * std + mean


def input_hw(spec: dict[str, Any]) -> tuple[int, int]:
    size = spec["image_size"]
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def data_hw(spec: dict[str, Any]) -> tuple[int, int]:
    """The size of the images the model's data has (a cross-quality student's full size)."""
    full = spec.get("downscaled_from")
    return (int(full), int(full)) if full is not None else input_hw(spec)


def preprocess(pixels: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """What a deployed model is fed: pixels (0..1) resized to the model's size, then normalised per channel."""
    x = pixels.float()
    if tuple(x.shape[-2:]) != input_hw(spec):
        x = resize(x, input_hw(spec), spec.get("resize_mode") or "area")
    if spec.get("mean") is not None:
        mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec["std"], dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def training_view(images: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """What the model saw in training from a loader batch: the batch itself, or its downscaled view."""
    if tuple(images.shape[-2:]) != input_hw(spec):
        return resize(images, input_hw(spec), spec.get("resize_mode") or "area")
    return images


def open_data(arch: dict[str, Any], config: dict[str, Any], path, name: str | None = None,
              root: str | None = None, required: bool = False) -> tuple[RunData | None, str]:
    """The model's dataset: `name`/`root` when given, else the run's (config.yaml's data.name and data.root).

    Returns (None, why) when the run's own data cannot be read here and `required` is false; a dataset given
    by name that cannot be read, or does not fit the model, is a one-line error."""
    run_data = dict(config.get("data") or {})
    chosen = name or arch.get("data") or run_data.get("name")
    if not chosen or chosen == "user":
        if required:
            raise KdlabError(f"'{path}' records no kdlab dataset; pass --data NAME --data-root DIR")
        return None, "the model's data is not a kdlab dataset"
    same = chosen == run_data.get("name")
    use_root = root if root is not None else (run_data.get("root") if same else None)
    try:
        train, test, info = datasets.build_loaders(
            chosen, root=use_root, batch_size=256, test_batch_size=256, augment=False,
            image_size=run_data.get("image_size") if same else None,
            coarse=bool(run_data.get("coarse")) if same else False)
    except KdlabError as exc:
        if required or name is not None:
            raise
        return None, f"the run's data ({chosen}) cannot be read here ({str(exc)[:120]}...)"
    check_against_data(arch, info, path, "model")
    return RunData(train, test, info), ""


def take(loader, count: int, run_data: RunData, what: str) -> Samples:
    """The first `count` images of a loader (unaugmented), as pixels and as the loader gives them."""
    images, targets, seen = [], [], 0
    for batch in loader:
        x, y = batch[0], batch[1]
        images.append(x.float().contiguous())
        targets.append(y)
        seen += x.shape[0]
        if seen >= count:
            break
    if not images:
        raise KdlabError(f"the {what} of {run_data.info.name} holds no images")
    normalised = torch.cat(images)[:count].contiguous()
    return Samples(run_data.denormalise(normalised), normalised, torch.cat(targets)[:count],
                   f"{run_data.info.name} {what}")


def random_samples(spec: dict[str, Any], count: int, seed: int = 0) -> Samples:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, spec["in_channels"], *data_hw(spec), generator=generator)
    return Samples(pixels, None, None, "random inputs")


def reference_input(samples: Samples, spec: dict[str, Any]) -> torch.Tensor:
    """What PyTorch gets in a check: the loader's batch (as in training), or the preprocessed random pixels."""
    if samples.normalised is not None:
        return training_view(samples.normalised, spec).contiguous()
    return preprocess(samples.pixels, spec)
