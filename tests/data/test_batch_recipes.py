"""Batched recipe augmentation (kdlab.data.augment): mixup, CutMix and RandAugment on tensors, each checked for
what it does to a batch; RandAugment in the TensorLoader; the stratified evaluation subset."""

import pytest
import torch

from kdlab.data.augment import RANDAUGMENT_OPS, BatchMixer, rand_augment
from kdlab.data.fractions import stratified_count
from kdlab.data.memory import InMemoryDataset, TensorLoader, epoch_generator
from kdlab.errors import KdlabError


def batch(n=8, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mixup_blends_each_image_with_its_partner_and_keeps_the_larger_share_its_own():
    x = batch().float() / 255
    targets = torch.arange(8) * 10
    for seed in range(5):
        mixed, mix = BatchMixer(mixup=0.4)(x, targets, gen(seed))
        assert mix.kind == "mixup" and 0.5 <= mix.lam <= 1
        expected = mix.lam * x + (1 - mix.lam) * x[mix.partner]
        assert torch.allclose(mixed, expected, atol=1e-6)
        assert torch.equal(mix.partner_targets, targets[mix.partner])
        again, mix_again = BatchMixer(mixup=0.4)(x, targets, gen(seed))  # the same draws from the same stream
        assert torch.equal(again, mixed) and mix_again.lam == mix.lam


def test_cutmix_pastes_one_box_and_lambda_is_the_share_left_to_each_image():
    x = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()  # image i is all i
    targets = torch.arange(8)
    seen_swapped = False
    for seed in range(20):
        mixed, mix = BatchMixer(cutmix=1.0)(x, targets, gen(seed))
        assert mix.kind == "cutmix" and mix.lam >= 0.5
        own = (mixed == x).all(1).float().mean(dim=(1, 2))  # per image: pixels still its own
        moved = mix.partner != torch.arange(8)
        assert torch.allclose(own[moved], torch.full_like(own[moved], mix.lam))
        partner_pixels = (mixed == x[mix.partner]).all(1)
        assert torch.all((mixed == x).all(1) | partner_pixels)  # every pixel is the image's or its partner's
        seen_swapped |= mix.lam > 0.75
    assert seen_swapped


def test_mixer_probability_and_both_kinds():
    x, t = batch().float(), torch.arange(8)
    assert BatchMixer(mixup=0.2, prob=0.0)(x, t, gen())[1] is None
    assert not BatchMixer().enabled
    kinds = {BatchMixer(mixup=0.2, cutmix=1.0)(x, t, gen(s))[1].kind for s in range(20)}
    assert kinds == {"mixup", "cutmix"}
    with pytest.raises(KdlabError):
        BatchMixer(mixup=-1)


def test_rand_augment_is_seeded_keeps_dtype_and_changes_images():
    x = batch()
    a = rand_augment(x, 2, 9, gen(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, rand_augment(x, 2, 9, gen(1)))
    assert not torch.equal(a, rand_augment(x, 2, 9, gen(2)))
    assert not torch.equal(a, x)
    f = rand_augment(x.float() / 255, 2, 9, gen(1))  # floats in [0, 1]: the same ops
    assert f.dtype == torch.float32 and (f * 255 - a.float()).abs().max() <= 1.0 + 1e-4


@pytest.mark.parametrize("op", [op for op in RANDAUGMENT_OPS if op not in ("posterize", "solarize", "autocontrast")])
def test_magnitude_zero_is_the_identity_for_every_graded_op(op):
    x = batch()
    assert torch.equal(rand_augment(x, 1, 0, gen(), ops=[op]), x)


def test_ops_at_full_magnitude():
    x = batch()
    assert torch.equal(rand_augment(x, 1, 30, gen(), ops=["solarize"]), 255 - x)  # threshold 0: all inverted
    assert torch.equal(rand_augment(x, 1, 30, gen(), ops=["posterize"]), x & 0xF0)  # 4 bits kept
    flat = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    bright = rand_augment(flat, 1, 30, gen(), ops=["brightness"])  # factor 1 ± 0.9
    assert set(bright.unique().tolist()) <= {10, 190}
    low = torch.linspace(50, 100, 64).round().to(torch.uint8).view(1, 1, 8, 8)
    stretched = rand_augment(low, 1, 5, gen(), ops=["autocontrast"])
    assert stretched.min() == 0 and stretched.max() == 255
    square = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    square[..., 4, :] = 255  # a horizontal line through the centre
    rotated = rand_augment(square, 1, 30, gen(), ops=["rotate"])  # ±30 degrees about the centre
    assert rotated[0, 0, 4, 4] == 255 and not torch.equal(rotated, square)
    shifted = rand_augment(square.transpose(-1, -2).contiguous(), 1, 30, gen(), ops=["translate_x"])
    assert shifted[0, 0, :, 4].sum() == 0  # the vertical line left the centre column


def test_rand_augment_refuses_unknown_ops_and_magnitudes():
    with pytest.raises(KdlabError):
        rand_augment(batch(), 1, 31, gen())
    with pytest.raises(KdlabError):
        rand_augment(batch(), 1, 5, gen(), ops=["equalize"])


def dataset(n=40, classes=4):
    images = batch(n, 3, 8, seed=3)
    return InMemoryDataset("toy", images, torch.arange(n) % classes, classes, [str(i) for i in range(classes)],
                           (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_padding=2, flip=True)


def test_tensor_loader_randaugment_repeats_per_epoch_and_leaves_crop_flip_draws_alone():
    plain = TensorLoader(dataset(), 16, shuffle=True, augment=True, seed=5)
    strong = TensorLoader(dataset(), 16, shuffle=True, augment=True, seed=5, randaugment=(2, 9))
    for loader in (plain, strong):
        loader.set_epoch(2)
    first, again, base = list(strong), list(strong), list(plain)
    for (a, ta, ia), (b, _, _), (c, tc, ic) in zip(first, again, base, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tc) and torch.equal(ia, ic)
        assert not torch.equal(a, c)
    # crop/flip then RandAugment: the same ops applied to the plain loader's uint8 crops give the strong batch
    plain.randaugment = (2, 9)
    assert torch.equal(next(iter(plain))[0], first[0][0])
    strong.set_epoch(3)
    assert not torch.equal(next(iter(strong))[0], first[0][0])


def test_epoch_generator_streams_are_independent():
    a = torch.rand(3, generator=epoch_generator(0, 1, 4))
    b = torch.rand(3, generator=epoch_generator(0, 1, 1))
    assert not torch.equal(a, b)


def test_stratified_count_is_exact_proportional_and_fixed():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    picked = stratified_count(targets, 10, seed=0)
    assert len(picked) == 10 and torch.equal(picked, stratified_count(targets, 10, seed=0))
    assert torch.bincount(targets[picked]).tolist() == [5, 3, 2]
    assert sorted(picked.tolist()) == picked.tolist() and len(set(picked.tolist())) == 10
    assert len(stratified_count(targets, 7, seed=1)) == 7
    assert torch.equal(stratified_count(targets, 500), torch.arange(100))
