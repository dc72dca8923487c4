"""FixMatch-style RandAugment, Cutout and histogram equalisation on batches (kdlab.data.augment), the pieces of
MLKD's strong view: each op against PIL (the library the official code, github.com/Jin-Ying/Multi-Level-Logit-
Distillation mdistiller/dataset/cifar100.py, applies them with) at the magnitudes the generator draws, per-image
magnitudes, value ranges, dtypes, determinism by generator, and what Cutout does to a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.data.augment import FIXMATCH_OPS, cutout, equalize, rand_augment_fixmatch
from kdlab.errors import KdlabError

Image = pytest.importorskip("PIL.Image")
from PIL import ImageEnhance, ImageOps  # noqa: E402


def batch(n=6, size=32, low=0, high=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (low + torch.randint(0, high - low, (n, 3, size, size), generator=g)).to(torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pil_op(img, op: str, v: float):
    """The official code's op `op` at magnitude v (its augment_list semantics, on a PIL image)."""
    w, h = img.size
    ops = {
        "autocontrast": lambda: ImageOps.autocontrast(img), "equalize": lambda: ImageOps.equalize(img),
        "identity": lambda: img, "posterize": lambda: ImageOps.posterize(img, max(1, int(v))),
        "rotate": lambda: img.rotate(v), "solarize": lambda: ImageOps.solarize(img, v),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "color": lambda: ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, v * w, 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * h)),
    }
    return ops[op]()


def to_pil(x: torch.Tensor):
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


# PIL's enhancers and autocontrast truncate where kdlab rounds: one level apart at most
ROUNDING = {"brightness", "color", "contrast", "sharpness", "autocontrast"}


@pytest.mark.parametrize("op", list(FIXMATCH_OPS))
def test_each_op_is_pils_at_the_magnitude_drawn_for_each_image(op):
    x = batch(low=40, high=190)  # a narrow range, so that autocontrast and equalize change the images
    out = rand_augment_fixmatch(x, 1, gen(5), ops=[op])
    g = gen(5)  # the same draws: the op choices (one op: all 0), then one uniform per image
    torch.randint(0, 1, (1, len(x)), generator=g)
    low, high = FIXMATCH_OPS[op]
    magnitudes = low + (high - low) * torch.rand(1, len(x), generator=g)[0]
    for i in range(len(x)):
        ref = from_pil(pil_op(to_pil(x[i]), op, float(magnitudes[i])))
        worst = int((ref.int() - out[i].int()).abs().max())
        assert worst <= (1 if op in ROUNDING else 0), (op, i, float(magnitudes[i]), worst)


def test_magnitudes_are_drawn_per_image_within_the_ops_range():
    x = torch.full((64, 3, 4, 4), 200, dtype=torch.uint8)
    out = rand_augment_fixmatch(x, 1, gen(), ops=["brightness"])  # factor·x, factor in [0.05, 0.95]
    factors = out.float().mean(dim=(1, 2, 3)) / 200
    assert factors.min() >= 0.05 - 0.01 and factors.max() <= 0.95 + 0.01
    assert factors.max() - factors.min() > 0.5 and len(torch.unique(out.view(64, -1)[:, 0])) > 30


def test_shapes_dtypes_ranges_and_determinism():
    x = batch(8, 16)
    a = rand_augment_fixmatch(x, 2, gen(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, rand_augment_fixmatch(x, 2, gen(1)))
    assert not torch.equal(a, rand_augment_fixmatch(x, 2, gen(2)))
    assert not torch.equal(a, x)
    f = rand_augment_fixmatch(x.float() / 255, 2, gen(1))  # floats in [0, 1]: the same ops, float out
    assert f.dtype == torch.float32 and 0.0 <= float(f.min()) and float(f.max()) <= 1.0
    assert (f * 255 - a.float()).abs().max() <= 1.0
    assert torch.equal(rand_augment_fixmatch(x, 0, gen(1)), x)
    # a fixed number of draws per call (2·num_ops·N), whatever the images: the stream stays aligned
    g1, g2 = gen(3), gen(3)
    rand_augment_fixmatch(x, 2, g1)
    rand_augment_fixmatch(torch.zeros_like(x), 2, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_equalize_is_pils_and_keeps_flat_channels():
    x = batch(4, 16, low=30, high=120)
    out = equalize(x)
    for i in range(4):
        assert torch.equal(out[i], from_pil(ImageOps.equalize(to_pil(x[i]))))
    assert out.float().std() > x.float().std()  # the levels are spread over 0..255
    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(equalize(flat), flat)
    f = equalize(x.float() / 255)
    assert f.dtype == torch.float32 and torch.allclose(f * 255, out.float(), atol=1e-3)


def test_cutout_fills_one_box_of_at_most_half_the_side_per_image():
    n, size = 200, 32
    x = torch.zeros(n, 3, size, size)
    fill = (0.25, 0.5, 0.75)
    out = cutout(x, 0.5, fill=fill, generator=gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    box = (out != 0).any(dim=1)  # N,H,W
    assert torch.equal(out[:, 0][box], torch.full_like(out[:, 0][box], 0.25))
    assert torch.equal(out[:, 2][box], torch.full_like(out[:, 2][box], 0.75))
    heights = box.any(dim=2).sum(dim=1)
    widths = box.any(dim=1).sum(dim=1)
    assert int(heights.max()) <= size // 2 + 1 and int(widths.max()) <= size // 2 + 1
    assert int(heights.max()) >= size // 2 - 2  # sizes go up to about half the side
    inside = (heights > 0) & (widths > 0)
    assert torch.equal(box.sum(dim=(1, 2))[inside], (heights * widths)[inside])  # one rectangle each
    # the box is drawn at an offset clipped at the top-left, so it reaches the edges
    assert bool(box[:, 0, :].any()) and bool(box[:, -1, :].any()) and bool(box[:, :, 0].any())


def test_cutout_square_size_follows_the_draw_and_is_deterministic():
    x = batch(16, 32)
    a = cutout(x, 0.5, fill=(125, 123, 114), generator=gen(4))
    assert a.dtype == torch.uint8 and torch.equal(a, cutout(x, 0.5, fill=(125, 123, 114), generator=gen(4)))
    sizes = torch.rand(16, 3, generator=gen(4))[:, 0] * 0.5 * 32  # the draws: size, centre row, centre column
    changed = (a != x).any(dim=1)
    heights = changed.any(dim=2).sum(dim=1)
    assert torch.all(heights <= torch.ceil(sizes).long())  # at most the drawn side (fewer where clipped)
    assert torch.equal(cutout(x, 0.0, fill=0, generator=gen(4)), x)
    with pytest.raises(KdlabError, match="2 fill values for images with 3 channels"):
        cutout(x, 0.5, fill=(1, 2), generator=gen())
    with pytest.raises(KdlabError, match="max_fraction must be in"):
        cutout(x, 1.5)


def test_bad_ops_are_refused_in_one_line():
    with pytest.raises(KdlabError, match="are not among") as err:
        rand_augment_fixmatch(batch(2, 8), 2, gen(), ops=["invert"])
    assert "\n" not in str(err.value)
    with pytest.raises(KdlabError, match="num_ops >= 0"):
        rand_augment_fixmatch(batch(2, 8), -1, gen())
