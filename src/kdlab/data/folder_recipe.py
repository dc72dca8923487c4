"""Training defaults for a class-folder dataset chosen from its images' size and count.

ImageNet's recipe (224 px, batch 256, lr 0.1, 100 epochs) is right for ImageNet and wrong for a folder of 3,000
64-pixel images, where it means 12 steps per epoch at an LR meant for 5,000. For `--data imagefolder` kdlab
reads the folder once (file names, and the sizes of a few images from their headers) and picks:
  image_size  the largest of 32/64/96/128/160/192/224 not above the typical (median) shorter image side;
  batch       256 from 100k training images, 128 from 10k, 64 from 2k, else 32 (at least ~30 steps per epoch);
  lr          0.1 x batch / 256 (the linear scaling rule of Goyal et al., arXiv:1706.02677);
  epochs      100 from 100k images, 60 from 10k, else 30; LR x0.1 at 30/60/90% of them;
  weight decay 1e-4 from 100k images (ImageNet's), else 5e-4 (the CIFAR-size recipes').
These are kdlab's choices, not a published recipe; every one is overridden by setting it. `--data imagenet`
keeps the ImageNet recipe.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SIZES = (32, 64, 96, 128, 160, 192, 224)
SAMPLED = 32  # images whose size is read (evenly spaced over the sorted file list)


@dataclass(frozen=True)
class FolderStats:
    images: int
    classes: int
    typical_side: int  # median shorter side of the sampled images (0 when none could be read)


def folder_stats(train_dir: Path) -> FolderStats | None:
    """Image count, class count and typical size of `train_dir`/<class>/<image>; None when it is not there."""
    if not train_dir.is_dir():
        return None
    classes = sorted(p for p in train_dir.iterdir() if p.is_dir())
    files = sorted(f for c in classes for f in c.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        return None
    step = max(1, len(files) // SAMPLED)
    sides = [side for f in files[::step][:SAMPLED] if (side := _shorter_side(f))]
    return FolderStats(len(files), len(classes), int(statistics.median(sides)) if sides else 0)


def _shorter_side(path: Path) -> int:
    from PIL import Image  # noqa: PLC0415 - Pillow comes with torchvision; only folder datasets need it

    try:
        with Image.open(path) as image:  # reads the header only
            return min(image.size)
    except OSError:
        return 0  # an unreadable file: data.unreadable decides what happens to it later


def folder_recipe(stats: FolderStats | None, fallback: dict[str, Any]) -> dict[str, Any]:
    """The recipe for a folder with these statistics (`fallback`, the ImageNet one, when it cannot be read)."""
    if stats is None or stats.typical_side == 0:
        return fallback
    n = stats.images
    image_size = max([s for s in SIZES if s <= stats.typical_side], default=SIZES[0])
    batch = 256 if n >= 100_000 else 128 if n >= 10_000 else 64 if n >= 2_000 else 32
    epochs = 100 if n >= 100_000 else 60 if n >= 10_000 else 30
    return {"optim": {"epochs": epochs, "lr": round(0.1 * batch / 256, 6), "schedule": "step",
                      "milestones": [round(epochs * f) for f in (0.3, 0.6, 0.9)], "gamma": 0.1,
                      "weight_decay": 1e-4 if n >= 100_000 else 5e-4},
            "data": {"batch_size": batch, "image_size": image_size}}


def describe(stats: FolderStats, config: Any) -> str:
    """One line for the start of a run on a folder: what was found and the settings in use."""
    return (f"imagefolder: {stats.images:,} training images in {stats.classes} classes, typically "
            f"{stats.typical_side} px; image_size {config.data.image_size}, batch {config.data.batch_size}, "
            f"lr {config.optim.lr:g}, {config.optim.epochs} epochs (defaults from the folder unless set)")
