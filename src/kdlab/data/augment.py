"""Batched augmentation and normalisation on N,C,H,W tensors (no per-sample PIL round trips).

Random draws come from an explicit CPU ``torch.Generator`` so the same generator state gives the same
augmentation on any device; the small random tensors are moved to the images' device afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError

__all__ = ["random_crop", "random_flip", "normalize", "resize", "BatchMixer", "Mix", "rand_augment",
           "RANDAUGMENT_OPS", "rand_augment_fixmatch", "FIXMATCH_OPS", "cutout", "equalize"]


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


# ------------------------------------------------------------------------------------------- mixing
@dataclass
class Mix:
    """How a batch was mixed: every image holds a share ``lam`` (>= 0.5) of its own sample, whose label stays
    the batch's target (the primary label), and ``1 - lam`` of the sample at ``partner`` in the batch, whose
    label is ``partner_targets``. The cross-entropy of a mixed batch is lam·CE(own) + (1 - lam)·CE(partner)."""

    kind: str  # "mixup" | "cutmix"
    lam: float
    partner: torch.Tensor  # int64 N: batch position of each image's partner
    partner_targets: torch.Tensor  # int64 N: its label


class BatchMixer:
    """Mixup (Zhang et al., ICLR 2018, arXiv:1710.09412) and CutMix (Yun et al., ICCV 2019, arXiv:1905.04899) on
    whole batches: one λ ~ Beta(alpha, alpha) and one partner permutation per batch (as the papers' code and
    timm's default batch mode); CutMix pastes one box of relative area 1 - λ from the partner and sets λ to the
    area actually kept after clipping the box to the image. With both alphas set, each mixed batch is mixup or
    CutMix with probability 1/2; ``prob`` is the probability that a batch is mixed at all.

    λ and 1 - λ give the same distribution of mixed batches (the partner permutation is uniform), so the mixer
    keeps λ >= 0.5: every image is mostly its own sample, and its own label and dataset index stay the
    batch's (methods that read labels or indices use them). Draws come from ``generator`` (a CPU
    ``torch.Generator``, e.g. ``epoch_generator(seed, epoch, stream)``), a fixed number per batch.
    """

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0):
        if mixup < 0 or cutmix < 0 or not 0 <= prob <= 1:
            raise KdlabError(f"mixing needs alphas >= 0 and a probability in [0, 1], got mixup={mixup}, "
                             f"cutmix={cutmix}, prob={prob}")
        self.mixup, self.cutmix, self.prob = float(mixup), float(cutmix), float(prob)

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, Mix | None]:
        """(mixed images, Mix) or (images, None) when this batch is left as it is."""
        _check_batch(images, "BatchMixer")
        # One 63-bit seed per batch from the torch stream, then numpy's Beta: the stream advances by one
        # draw per batch whatever is drawn below.
        rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
        n, _, h, w = images.shape
        apply = rng.random() < self.prob
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
        if not self.enabled or not apply or n < 2:
            return images, None
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        partner = torch.from_numpy(rng.permutation(n)).to(images.device)
        other = images.index_select(0, partner)
        if use_cutmix:
            mixed, lam = _paste_box(images, other, lam, rng)
        else:
            lam = max(lam, 1.0 - lam)
            mixed = images * lam + other * (1.0 - lam) if images.is_floating_point() else \
                (images.float() * lam + other.float() * (1.0 - lam)).round_().to(images.dtype)
        partner_targets = targets.index_select(0, partner.to(targets.device))
        return mixed, Mix("cutmix" if use_cutmix else "mixup", lam, partner, partner_targets)


def _paste_box(images: torch.Tensor, other: torch.Tensor, lam: float, rng: np.random.Generator
               ) -> tuple[torch.Tensor, float]:
    """CutMix's box: side sqrt(1 - lam) of the image's, centred uniformly, clipped; returns the mixed batch and
    the share of each image that is still its own (>= 0.5: a box over half the image swaps the roles)."""
    h, w = images.shape[-2:]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    box = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    box[y0:y1, x0:x1] = True
    area = (y1 - y0) * (x1 - x0) / (h * w)
    if area > 0.5:  # the pasted box is the larger part: paste the own sample's box into the partner instead
        return torch.where(box, images, other), area
    return torch.where(box, other, images), 1.0 - area


# ------------------------------------------------------------------------------------------- RandAugment
# RandAugment (Cubuk et al., CVPR-W 2020, arXiv:1909.13719): N ops drawn uniformly per image, all at one
# magnitude M of 30 steps. The ops and each one's range at M = 30 follow torchvision's RandAugment
# (github.com/pytorch/vision, torchvision/transforms/autoaugment.py, `_augmentation_space`): shear 0.3,
# translate 150/331 of the side, rotate 30 degrees, brightness/colour/contrast/sharpness factor 1 ± 0.9,
# posterize to 4 bits, solarize at threshold 0; equalize is left out of this set (`equalize` below batches it for
# FixMatch's set, `rand_augment_fixmatch`).
RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                   "contrast", "sharpness", "posterize", "solarize", "autocontrast")
MAX_MAGNITUDE = 30


def rand_augment(images: torch.Tensor, num_ops: int = 2, magnitude: int = 9,
                 generator: torch.Generator | None = None, ops: Sequence[str] = RANDAUGMENT_OPS) -> torch.Tensor:
    """RandAugment on a batch: each image gets ``num_ops`` ops drawn uniformly from ``ops`` at ``magnitude``
    (0..30), signed ops with a random sign. uint8 images (0..255) come back uint8; float images must be in
    [0, 1] (un-normalised) and come back float. Geometric ops sample with ``affine_grid`` (nearest pixel, black
    fill, as torchvision). Draws (ops, signs) come from ``generator``, a fixed number per call.

    Reusable for a method's strong view: ``rand_augment(x_uint8, 2, 9, epoch_generator(seed, epoch, stream))``.
    """
    _check_batch(images, "rand_augment")
    unknown = [op for op in ops if op not in _OPS]
    if unknown or not ops:
        raise KdlabError(f"rand_augment ops {unknown or '[]'} are not among {', '.join(RANDAUGMENT_OPS)}")
    if num_ops < 0 or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise KdlabError(f"rand_augment needs num_ops >= 0 and a magnitude in 0..{MAX_MAGNITUDE}, got {num_ops}, "
                         f"{magnitude}")
    n = images.shape[0]
    if n == 0 or num_ops == 0:
        return images
    choices = torch.randint(0, len(ops), (num_ops, n), generator=generator)
    signs = torch.where(torch.rand(num_ops, n, generator=generator) < 0.5, -1.0, 1.0)
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    level = magnitude / MAX_MAGNITUDE
    for r in range(num_ops):
        for k, name in enumerate(ops):
            chosen = (choices[r] == k).nonzero().flatten()
            if name == "identity" or len(chosen) == 0:
                continue
            chosen = chosen.to(x.device)
            sign = signs[r].to(x.device).index_select(0, chosen)
            x[chosen] = _OPS[name](x.index_select(0, chosen), level, sign).clamp_(0.0, 1.0)
    if images.dtype == torch.uint8:
        return x.mul_(255.0).round_().to(torch.uint8)
    return x.to(images.dtype)


def _affine(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sample x at A·p + t for every output pixel p (pixel units about the centre; A: N,2,2, t: N,2)."""
    h, w = x.shape[-2:]
    scale = torch.tensor([w / 2.0, h / 2.0], device=x.device)
    theta = torch.cat([matrix * scale.view(1, 1, 2) / scale.view(1, 2, 1), (shift / scale).unsqueeze(-1)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _shear(axis: int):
    def op(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
        matrix = torch.eye(2, device=x.device).repeat(len(x), 1, 1)
        matrix[:, axis, 1 - axis] = sign * 0.3 * level
        return _affine(x, matrix, torch.zeros(len(x), 2, device=x.device))
    return op


def _translate(axis: int):
    def op(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] if axis == 0 else x.shape[-2]
        shift = torch.zeros(len(x), 2, device=x.device)
        shift[:, axis] = sign * (150.0 / 331.0) * side * level
        return _affine(x, torch.eye(2, device=x.device).repeat(len(x), 1, 1), shift)
    return op


def _rotate(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    angle = sign * math.radians(30.0 * level)
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _affine(x, matrix, torch.zeros(len(x), 2, device=x.device))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (as PIL's 'L'), N,1,H,W; a single-channel image is its own."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, degenerate: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor·(x - degenerate), factor = 1 ± 0.9·level."""
    return _enhance(x, degenerate, 1.0 + sign * 0.9 * level)


def _enhance(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance with one factor per image (N,): degenerate + factor·(x - degenerate)."""
    return degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)


def _sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5, sum 13), borders left as they are."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    out = x.clone()
    if x.shape[-1] > 2 and x.shape[-2] > 2:
        out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return out


def _posterize(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    bits = 8 - int(round(4 * level))
    step = 2 ** (8 - bits)
    return torch.floor(torch.round(x * 255.0) / step) * step / 255.0


def _autocontrast(x: torch.Tensor, level: float, sign: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)


_OPS = {
    "identity": lambda x, level, sign: x,
    "shear_x": _shear(0), "shear_y": _shear(1), "translate_x": _translate(0), "translate_y": _translate(1),
    "rotate": _rotate,
    "brightness": lambda x, level, sign: _blend(x, torch.zeros_like(x), level, sign),
    "color": lambda x, level, sign: _blend(x, _gray(x).expand_as(x), level, sign),
    "contrast": lambda x, level, sign: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), level,
                                              sign),
    "sharpness": lambda x, level, sign: _blend(x, _sharpness_degenerate(x), level, sign),
    "posterize": _posterize,
    "solarize": lambda x, level, sign: torch.where(x >= 1.0 - level, 1.0 - x, x),
    "autocontrast": _autocontrast,
}


# ------------------------------------------------------------------------------------------- FixMatch RandAugment
# The RandAugment variant of FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685), which MLKD's strong view uses
# (github.com/Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/dataset/cifar100.py `RandAugment`): ops drawn
# uniformly with replacement, each with its own magnitude drawn uniformly from the op's range below (no global
# magnitude M). Ranges and conventions are PIL's, as that code applies them: enhance factors below 1 only,
# posterize to 4..7 bits, rotation in degrees about the centre, shear about the top-left corner, translation as a
# fraction of the side, solarize at a threshold in 0..256 (pixel values >= it are inverted).
FIXMATCH_OPS = {
    "autocontrast": (0.0, 1.0), "brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
    "equalize": (0.0, 1.0), "identity": (0.0, 1.0), "posterize": (4.0, 8.0), "rotate": (-30.0, 30.0),
    "sharpness": (0.05, 0.95), "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0.0, 256.0),
    "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3),
}


def rand_augment_fixmatch(images: torch.Tensor, num_ops: int = 2, generator: torch.Generator | None = None,
                          ops: Sequence[str] = tuple(FIXMATCH_OPS)) -> torch.Tensor:
    """FixMatch-style RandAugment on a batch: each image gets ``num_ops`` ops drawn uniformly (with replacement)
    from ``ops``, each at a magnitude drawn uniformly from its range in ``FIXMATCH_OPS`` for that image alone.

    uint8 images (0..255) come back uint8; float images must be in [0, 1] (un-normalised) and come back float.
    Geometric ops sample the nearest pixel and fill with black, as PIL. Draws (ops, magnitudes) come from
    ``generator``, ``2·num_ops·N`` values per call. Follow with :func:`cutout` for the FixMatch / MLKD strong view.
    """
    _check_batch(images, "rand_augment_fixmatch")
    unknown = [op for op in ops if op not in FIXMATCH_OPS]
    if unknown or not ops:
        raise KdlabError(f"rand_augment_fixmatch ops {unknown or '[]'} are not among {', '.join(FIXMATCH_OPS)}")
    if num_ops < 0:
        raise KdlabError(f"rand_augment_fixmatch needs num_ops >= 0, got {num_ops}")
    n = images.shape[0]
    if n == 0 or num_ops == 0:
        return images
    choices = torch.randint(0, len(ops), (num_ops, n), generator=generator)
    draws = torch.rand(num_ops, n, generator=generator)
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    for r in range(num_ops):
        for k, name in enumerate(ops):
            chosen = (choices[r] == k).nonzero().flatten()
            if name == "identity" or len(chosen) == 0:
                continue
            low, high = FIXMATCH_OPS[name]
            value = (low + (high - low) * draws[r].index_select(0, chosen)).to(x.device)
            chosen = chosen.to(x.device)
            x[chosen] = _FIXMATCH[name](x.index_select(0, chosen), value).clamp_(0.0, 1.0)
    if images.dtype == torch.uint8:
        return x.mul_(255.0).round_().to(torch.uint8)
    return x.to(images.dtype)


def cutout(images: torch.Tensor, max_fraction: float = 0.5, fill: float | Sequence[float] = 0.5,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552) as FixMatch applies it: one box per image, of a size drawn
    uniformly in [0, ``max_fraction``]·the side (height and width scaled alike: a square on square images), centred
    uniformly on the image and clipped at its top and left edges (then cut at the others), filled with ``fill``
    (one value or one per channel, in the images' units: 0..255 for uint8, [0, 1] for float).

    The box covers rows [y0, y0 + s·H) with y0 = max(0, ⌊cy - s·H/2⌋), and the same for columns; a size 0 leaves
    the image as it is. Draws: ``3·N`` values from ``generator`` (size, centre row, centre column).
    """
    _check_batch(images, "cutout")
    if not 0.0 <= max_fraction <= 1.0:
        raise KdlabError(f"cutout max_fraction must be in [0, 1], got {max_fraction}")
    n, c, h, w = images.shape
    fill_t = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if fill_t.numel() not in (1, c):
        raise KdlabError(f"cutout got {fill_t.numel()} fill values for images with {c} channels; give one value "
                         f"or one per channel")
    if n == 0:
        return images
    draws = torch.rand(n, 3, generator=generator)
    size = (draws[:, 0] * max_fraction).to(images.device)
    rows = _cutout_span(size * h, draws[:, 1].to(images.device) * h, h)  # N,H
    cols = _cutout_span(size * w, draws[:, 2].to(images.device) * w, w)  # N,W
    box = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)  # N,1,H,W
    value = fill_t.to(images.device).view(1, -1, 1, 1).to(images.dtype)
    return torch.where(box, value, images)


def _cutout_span(length: torch.Tensor, centre: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side) booleans: the positions [start, start + length) with start = max(0, ⌊centre - length/2⌋)."""
    start = (centre - length / 2).clamp_min(0.0).floor()
    positions = torch.arange(side, device=length.device, dtype=length.dtype)
    return (positions >= start[:, None]) & (positions < (start + length)[:, None])


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image and channel, as PIL's ``ImageOps.equalize``, on the whole batch at once.

    Per channel with histogram h over the 256 levels: step = (Σh - h[last level present]) // 255; where step is 0
    (a flat channel) the channel is kept, else level i maps to (step//2 + Σ_{j<i} h[j]) // step, capped at 255.
    uint8 in gives uint8 out; float images in [0, 1] are read at 8-bit levels and come back float.
    """
    _check_batch(images, "equalize")
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    out = _equalize(x)
    if images.dtype == torch.uint8:
        return out.mul_(255.0).round_().to(torch.uint8)
    return out.to(images.dtype)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    levels = (x * 255.0).round_().clamp_(0, 255).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.long)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    last = hist.gather(1, levels.amax(dim=1, keepdim=True))  # count of the highest level present
    step = (h * w - last) // 255  # N·C,1
    before = hist.cumsum(dim=1) - hist  # pixels below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp_(max=255)
    mapped = torch.where(step > 0, lut.gather(1, levels), levels)
    return mapped.float().div_(255.0).view(n, c, h, w)


def _fixmatch_posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = torch.pow(2.0, 8.0 - bits.floor().clamp(1, 8)).view(-1, 1, 1, 1)
    return torch.floor(torch.round(x * 255.0) / step) * step / 255.0


def _fixmatch_shear(axis: int):
    """PIL's affine shear (1, v, 0, 0, 1, 0) (x) or (1, 0, 0, v, 1, 0) (y): about the top-left corner, i.e. the
    centred shear plus a shift of v times half the other side."""
    def op(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        matrix = torch.eye(2, device=x.device).repeat(len(x), 1, 1)
        matrix[:, axis, 1 - axis] = value
        shift = torch.zeros(len(x), 2, device=x.device)
        shift[:, axis] = value * ((h if axis == 0 else w) / 2.0)
        return _affine(x, matrix, shift)
    return op


def _fixmatch_translate(axis: int):
    def op(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] if axis == 0 else x.shape[-2]
        shift = torch.zeros(len(x), 2, device=x.device)
        shift[:, axis] = value * side
        return _affine(x, torch.eye(2, device=x.device).repeat(len(x), 1, 1), shift)
    return op


_FIXMATCH = {
    "autocontrast": lambda x, v: _autocontrast(x, 0.0, v),
    "brightness": lambda x, v: _enhance(x, torch.zeros_like(x), v),
    "color": lambda x, v: _enhance(x, _gray(x).expand_as(x), v),
    "contrast": lambda x, v: _enhance(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), v),
    "equalize": lambda x, v: _equalize(x),
    "identity": lambda x, v: x,
    "posterize": _fixmatch_posterize,
    "rotate": lambda x, v: _rotate(x, 1.0, v / 30.0),  # _rotate turns by sign·30°·level degrees
    "sharpness": lambda x, v: _enhance(x, _sharpness_degenerate(x), v),
    "shear_x": _fixmatch_shear(0), "shear_y": _fixmatch_shear(1),
    "solarize": lambda x, v: torch.where(torch.round(x * 255.0) >= v.view(-1, 1, 1, 1), 1.0 - x, x),
    "translate_x": _fixmatch_translate(0), "translate_y": _fixmatch_translate(1),
}
