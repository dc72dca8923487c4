"""Batched augmentation and normalisation on N,C,H,W tensors (no per-sample PIL round trips).

Random draws come from an explicit CPU ``torch.Generator`` so the same generator state gives the same
augmentation on any device; the small random tensors are moved to the images' device afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError

__all__ = ["random_crop", "random_flip", "normalize", "resize"]


def _check_batch(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4:
        raise KdlabError(f"{what} expects a batch of images N,C,H,W; got shape {tuple(images.shape)}")


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and crop back to the original size at a random offset per sample.

    The CIFAR recipe (pad 4, crop 32); fully vectorised: pad once, then gather rows and columns with
    per-sample index arithmetic.
    """
    _check_batch(images, "random_crop")
    if padding < 0:
        raise KdlabError(f"random_crop padding must be >= 0, got {padding}")
    if padding == 0 or images.shape[0] == 0:
        return images
    n, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=images.device)  # N,H
    cols = offsets[:, 1:2] + torch.arange(w, device=images.device)  # N,W
    # Select the rows of each sample, then its columns: two gathers, no Python loop.
    picked = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding))
    return picked.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample horizontally with probability 0.5."""
    _check_batch(images, "random_flip")
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def normalize(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 0..255 (or float 0..1) images -> float32 ``(x - mean) / std`` per channel."""
    _check_batch(images, "normalize")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)
    if mean_t.shape[0] != images.shape[1] or std_t.shape[0] != images.shape[1]:
        raise KdlabError(
            f"normalize got {mean_t.shape[0]} mean / {std_t.shape[0]} std values for images with "
            f"{images.shape[1]} channels; give one value per channel"
        )
    out = images.to(torch.float32)
    if images.dtype == torch.uint8:
        out = out.mul_(1.0 / 255.0)
    return out.sub_(mean_t).div_(std_t)


def resize(images: torch.Tensor, size: int | Sequence[int], mode: str = "area") -> torch.Tensor:
    """Resize a batch to ``size`` (int or (H, W)); 'area' averages (downsampling), 'bilinear' interpolates.

    Used for cross-resolution student views and to fit small datasets to a model's input size. uint8 in
    gives uint8 out (rounded); float in gives float out.
    """
    _check_batch(images, "resize")
    if mode not in ("area", "bilinear"):
        raise KdlabError(f"unknown resize mode '{mode}'; use 'area' or 'bilinear'")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise KdlabError(f"resize size must be positive, got {hw}")
    if tuple(images.shape[-2:]) == hw:
        return images
    x = images.to(torch.float32) if not images.is_floating_point() else images
    if mode == "area":
        out = F.interpolate(x, size=hw, mode="area")
    else:
        out = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)
