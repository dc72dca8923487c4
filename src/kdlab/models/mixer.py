"""A small MLP-Mixer for small images: ``mixer_cifar``.

Architecture: Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision" (NeurIPS 2021,
arXiv:2105.01601): a linear patch embedding, blocks of a token-mixing MLP (across the patches, per channel) and
a channel-mixing MLP (per patch), each pre-norm with a residual, a final LayerNorm, global average pooling over
the patches and a linear classifier. Here 6 blocks of width 128 (token MLP 64, channel MLP 512) on 4x4 patches;
the patch size is planned from ``image_size`` as for the zoo ViT (``min(4, image_size // 2)``), and the token
MLP is sized for that grid, so the model takes inputs of its planned size only.

Tap points: ``stem`` (patch embedding, (D, h, w)), ``stage1..3`` (tokens after blocks 2, 4, 6 as (D, h, w)
maps; ``stageK_pre`` the same tensors), ``final_map`` (the normalised tokens as a map: the global average pool
reads it, so class activation maps are defined), ``embedding`` (that average), ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.models.hooks import FlatAdaptiveAvgPool2d
from kdlab.models.vit import Mlp, TokenMap, init_transformer, patch_size_for, stage_ends


class MixerBlock(nn.Module):
    """x + token-MLP(LN(x)) across the patches, then x + channel-MLP(LN(x)) across the channels."""

    def __init__(self, dim: int, tokens: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = Mlp(tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mlp = Mlp(dim, channel_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MlpMixer(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, dim: int = 128,
                 depth: int = 6, token_hidden: int = 64, channel_hidden: int = 512, patch_size: int = 4,
                 stages: int = 3):
        super().__init__()
        patch = patch_size_for(image_size, patch_size)
        self.grid = (image_size // patch, image_size // patch)
        tokens = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(*(MixerBlock(dim, tokens, token_hidden, channel_hidden) for _ in range(depth)))
        self.stage_ends = stage_ends(depth, stages)
        self.num_stages = stages
        for k in range(1, stages + 1):
            self.add_module(f"stage{k}", TokenMap(0))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.final_map = TokenMap(0)
        self.pool = FlatAdaptiveAvgPool2d()
        self.head = nn.Linear(dim, num_classes)
        init_transformer(self)
        taps = {"stem": "patch_embed"}
        for k in range(1, stages + 1):
            taps[f"stage{k}"] = taps[f"stage{k}_pre"] = f"stage{k}"
        self.tap_points = {**taps, "final_map": "final_map", "embedding": "pool", "classifier": "head"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        if grid != self.grid:
            raise ValueError(f"mixer_cifar was built for a {self.grid[0]}x{self.grid[1]} patch grid (its token MLP "
                             f"has a fixed size), got {grid[0]}x{grid[1]}; build it with this image_size")
        tokens = x.flatten(2).transpose(1, 2)
        stage = 0
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if stage < self.num_stages and index == self.stage_ends[stage]:
                stage += 1
                getattr(self, f"stage{stage}")(tokens, grid)
        return self.head(self.pool(self.final_map(self.norm(tokens), grid)))


__all__ = ["MixerBlock", "MlpMixer"]
