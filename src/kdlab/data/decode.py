"""Batched decoding and augmentation of image files on the run's device (`data.decode=gpu`).

With `data.decode=gpu` an image folder's DataLoader workers only read each file's bytes; the main process
decodes a whole batch of JPEGs in one call of `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on a
CUDA device, libjpeg-turbo on the CPU) and augments the decoded images there, as tensors, like the PIL
pipeline of kdlab.data.folder does per file:

- training: a random resized crop (scale 0.08-1 of the area, aspect ratio 3/4-4/3, ten tries and then the
  largest centred crop of an allowed ratio: the Inception crop of Szegedy et al., CVPR 2015, with the defaults
  of torchvision's RandomResizedCrop), resized to the crop size, and a horizontal flip with probability 1/2;
- evaluation: the shorter side resized to image_size·256/224 (the longer one in proportion, truncated), then
  the centred image_size crop (torchvision's Resize + CenterCrop).

Resizing is bilinear with antialiasing, rounded to whole 0..255 levels as PIL's uint8 output is, then
normalised. Files that are not JPEGs (PNG, ...) and JPEGs the batched decoder refuses are decoded one by one
with PIL, as the per-file pipeline does. The random draws come from a CPU generator (kdlab.data.memory's
epoch_generator), a fixed number per batch, and are read on the host, so nothing waits on the device.
On a CPU device the same code runs (that is how the tests check it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.data.augment import normalize
from kdlab.errors import KdlabError

__all__ = ["DECODE_MODES", "resolve_decode", "is_jpeg", "decode_batch", "train_batch", "eval_batch",
           "random_resized_crop_box", "eval_resize_size"]

DECODE_MODES = ("cpu", "gpu", "auto")
JPEG_MAGIC = bytes((0xFF, 0xD8, 0xFF))  # SOI marker and the first marker's prefix
SCALE = (0.08, 1.0)  # RandomResizedCrop's share of the area
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # and its aspect ratios (w / h)
ATTEMPTS = 10


def resolve_decode(value: str, device: str | torch.device) -> str:
    """`data.decode` -> "cpu" (PIL in the workers) or "gpu" (batched, on `device`); "auto" = gpu on CUDA."""
    if value not in DECODE_MODES:
        raise KdlabError(f"data.decode '{value}' is not one of {', '.join(DECODE_MODES)}; e.g. data.decode=auto")
    if value == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return value


def is_jpeg(data: torch.Tensor) -> bool:
    """Whether a file's bytes (uint8 1-D tensor) start like a JPEG."""
    return data.numel() >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


def _pil_decode(data: torch.Tensor, path: str) -> torch.Tensor:
    """One file with PIL, converted to RGB as torchvision's ImageFolder loader does; uint8 3,H,W (CPU)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            array = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        text = " ".join(str(exc).split())[:200] or "no details"
        raise KdlabError(f"image {path} cannot be read ({type(exc).__name__}: {text}); replace or delete it, or set "
                         f"data.unreadable=skip to leave unreadable images out") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def decode_batch(data: Sequence[torch.Tensor], paths: Sequence[str], device: str | torch.device
                 ) -> list[torch.Tensor]:
    """Decode files (their bytes as uint8 1-D CPU tensors) to uint8 RGB 3,H,W tensors on `device`: the JPEGs in
    one batched torchvision call, anything else (and a JPEG that call refuses) per file with PIL."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if is_jpeg(d)]
    if jpegs:
        try:
            decoded = decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one to find it
            decoded = [None] * len(jpegs)
        for i, image in zip(jpegs, decoded):
            if image is None:
                try:
                    image = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    image = None  # PIL below decodes it or names the file
            out[i] = image
    for i, image in enumerate(out):
        if image is None:
            out[i] = _pil_decode(data[i], paths[i]).to(device)
    return out  # type: ignore[return-value]


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (or 0..255 float) 3,h,w -> float 3,height,width: bilinear with antialiasing, rounded to 0..255 levels."""
    x = image.unsqueeze(0).float()
    if tuple(image.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0).round_().clamp_(0.0, 255.0)


def random_resized_crop_box(height: int, width: int, draws: Sequence[Sequence[float]]) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the Inception crop for an image of height x width, from `draws`:
    ATTEMPTS rows of 4 uniform [0, 1) numbers (area share, log aspect ratio, top, left)."""
    area = height * width
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    for u_area, u_ratio, u_top, u_left in draws:
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u_area)
        aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    ratio = width / height  # no try fitted: the whole image, cut to the nearest allowed aspect ratio
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def eval_resize_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to image_size·256/224 (the longer side in proportion,
    truncated), as torchvision's Resize(int) computes it."""
    short = int(image_size * 256 / 224)
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _finish(images: list[torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalize(torch.stack(images).div_(255.0), mean, std)


def train_batch(images: Sequence[torch.Tensor], image_size: int, generator: torch.Generator,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Decoded uint8 3,H,W images (any sizes) -> float32 normalised N,3,S,S: random resized crop and flip.
    Draws: ATTEMPTS x 4 uniforms per image, then one flip uniform per image, from the CPU `generator`."""
    n = len(images)
    boxes = torch.rand(n, ATTEMPTS, 4, generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = []
    for image, draws, flip in zip(images, boxes, flips):
        top, left, h, w = random_resized_crop_box(int(image.shape[-2]), int(image.shape[-1]), draws)
        crop = _resize(image[:, top:top + h, left:left + w], image_size, image_size)
        out.append(crop.flip(-1) if flip else crop)
    return _finish(out, mean, std)


def eval_batch(images: Sequence[torch.Tensor], image_size: int, mean: Sequence[float], std: Sequence[float]
               ) -> torch.Tensor:
    """Decoded uint8 3,H,W images -> float32 normalised N,3,S,S: resize the shorter side, centre crop."""
    out = []
    for image in images:
        height, width = eval_resize_size(int(image.shape[-2]), int(image.shape[-1]), image_size)
        resized = _resize(image, height, width)
        top = int(round((height - image_size) / 2.0))
        left = int(round((width - image_size) / 2.0))
        out.append(resized[:, top:top + image_size, left:left + image_size])
    return _finish(out, mean, std)
