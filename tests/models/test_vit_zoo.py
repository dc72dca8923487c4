"""The zoo's token models (vit_tiny_cifar, deit_tiny_cifar, mixer_cifar): patch planning, stage maps that are
views of the tokens, the distilled model's two heads, position-embedding interpolation."""

from __future__ import annotations

import pytest
import torch

from kdlab import models
from kdlab.models.vit import TokenMap, stage_ends

TOKEN_MODELS = ["vit_tiny_cifar", "deit_tiny_cifar", "mixer_cifar"]


def _capture(model, taps, x):
    out = {}
    handles = [model.get_submodule(p).register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o))
               for k, p in taps.items()]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, out


@pytest.mark.parametrize("size, grid", [(32, 8), (28, 7), (8, 2), (2, 2)])
def test_patch_size_is_planned_from_the_image_size(size, grid):
    model = models.create("vit_tiny_cifar", 10, in_channels=1, image_size=size).eval()
    _, out = _capture(model, models.tap_points(model), torch.randn(2, 1, size, size))
    assert all(out[f"stage{k}"].shape == (2, 192, grid, grid) for k in (1, 2, 3))
    assert out["stem"].shape == (2, 192, grid, grid)


def test_stage_ends_split_blocks_evenly():
    assert stage_ends(6, 3) == [1, 3, 5]
    assert stage_ends(12, 4) == [2, 5, 8, 11]
    assert stage_ends(7, 3) == [2, 4, 6]


@torch.no_grad()
def test_token_map_lays_out_patch_tokens_row_major():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix token + a 2x3 grid
    grid = TokenMap(1)(tokens, (2, 3))
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 1 * 3 + 2])
    assert torch.equal(TokenMap(channels_last=True)(tokens[:, 1:].reshape(2, 2, 3, 3)), grid)


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_stage_maps_carry_gradients_to_the_blocks(name):
    torch.manual_seed(0)
    model = models.create(name, 10)
    taps = models.tap_points(model)
    _, out = _capture(model, {"stage1": taps["stage1"]}, torch.randn(2, 3, 32, 32))
    out["stage1"].square().mean().backward()
    assert model.blocks[0].norm1.weight.grad.abs().sum() > 0
    assert model.blocks[-1].norm1.weight.grad is None  # blocks after stage 1 do not shape its map


@torch.no_grad()
def test_distilled_vit_returns_the_mean_of_both_heads_in_train_and_eval():
    torch.manual_seed(0)
    model = models.create("deit_tiny_cifar", 10)
    taps = models.tap_points(model)
    assert taps["distill_logits"] == "head_dist" and "final_map" not in taps
    x = torch.randn(3, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        logits, out = _capture(model, taps, x)
        torch.testing.assert_close(logits, (out["classifier"] + out["distill_logits"]) / 2)
    assert model.pos_embed.shape == (1, 2 + 64, 192)  # class and distillation tokens


@torch.no_grad()
def test_vit_interpolates_position_embeddings_for_another_grid():
    model = models.create("vit_tiny_cifar", 10, image_size=32).eval()
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_mixer_refuses_another_grid_and_pools_its_final_map():
    model = models.create("mixer_cifar", 10, image_size=32).eval()
    with pytest.raises(ValueError, match="8x8 patch grid"):
        model(torch.randn(1, 3, 48, 48))
    taps = models.tap_points(model)
    with torch.no_grad():
        logits, out = _capture(model, taps, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out["final_map"].mean(dim=(2, 3)), out["embedding"])
    torch.testing.assert_close(model.head(out["embedding"]), logits)
