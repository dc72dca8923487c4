"""A Vision Transformer for small images: ``vit_tiny_cifar`` and its distilled form ``deit_tiny_cifar``.

Architecture: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021, arXiv:2010.11929), at the width
of DeiT-Tiny (Touvron et al., ICML 2021, arXiv:2012.12877: dimension 192, 3 heads, MLP ratio 4) with 6 pre-norm
blocks and 4x4 patches, so a 32x32 image is an 8x8 grid of 64 tokens. The patch size is planned from
``image_size`` (``min(4, image_size // 2)``): 28x28 MNIST gives a 7x7 grid, 8x8 digits a 2x2 grid. A class
token is prepended; ``distill_token=True`` adds DeiT's distillation token after it and a second linear head
``head_dist`` on that token. Learned position embeddings are interpolated (bicubic) when an input's grid
differs from the planned one.

Output: logits of the class head; with a distillation token, the average of both heads' logits in train and
eval mode alike (as timm's ``VisionTransformerDistilled`` outside its ``distilled_training`` mode and DeiT's
inference in github.com/facebookresearch/deit ``models.py``). The ``deit`` method reads each head separately
through the ``classifier`` and ``distill_logits`` taps (docs/methods.md#deit).

Tap points: ``stem`` (the patch embedding, a (D, h, w) map), ``stage1..3`` (the patch tokens after blocks 2,
4 and 6, laid out as (D, h, w) maps of the patch grid by a :class:`TokenMap`, so every feature method reads
them like a CNN's stage outputs; ``stageK_pre`` is the same tensor, as nothing follows it through a ReLU),
``embedding`` (the class token after the final LayerNorm), ``classifier`` (the class head) and, with a
distillation token, ``distill_logits`` (``head_dist``). There is no ``final_map``: the class token is not the
spatial mean of a map, so methods built on class activation maps (CAT-KD, SDD) refuse this model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DISTILL_TAP = "distill_logits"  # the distillation head's output (DeiT), a tap of distilled models


class TokenMap(nn.Module):
    """Lays the patch tokens of a (N, prefix + h·w, D) sequence out as a (N, D, h, w) map; no parameters.

    The transformer's forward calls it after a group of blocks and keeps the sequence: only a forward hook
    (a stage tap) sees the map, which is a view of the tokens, so gradients reach the blocks through it.
    """

    def __init__(self, prefix_tokens: int = 0, grid: tuple[int, int] | None = None, channels_last: bool = False):
        super().__init__()
        self.prefix_tokens = prefix_tokens
        self.grid = grid
        self.channels_last = channels_last  # input already (N, h, w, D) (timm's Swin/ConvNeXt-style stages)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if self.channels_last:
            return tokens.permute(0, 3, 1, 2)
        h, w = grid or self.grid
        patches = tokens[:, self.prefix_tokens:]
        if patches.shape[1] != h * w:
            raise ValueError(f"TokenMap: {patches.shape[1]} patch tokens do not fill a {h}x{w} grid")
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)


class TokenPool(nn.Module):
    """(N, L, D) -> (N, D): token ``index`` (the class token) of the sequence."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.index]


class Attention(nn.Module):
    """Multi-head self-attention (scaled dot product), one qkv projection with bias and an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dimension {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def patch_size_for(image_size: int, patch_size: int = 4) -> int:
    """Patch size for ``image_size``: ``patch_size`` unless the image is smaller than two patches."""
    return max(1, min(patch_size, image_size // 2))


def stage_ends(depth: int, stages: int) -> list[int]:
    """Indices of the last block of each of ``stages`` equal groups of ``depth`` blocks (the last is depth-1)."""
    if not 1 <= stages <= depth:
        raise ValueError(f"cannot split {depth} blocks into {stages} stages")
    return [math.ceil(depth * k / stages) - 1 for k in range(1, stages + 1)]


def init_transformer(model: nn.Module) -> None:
    """Linear weights truncated normal (std 0.02) with zero bias, LayerNorm 1/0 (ViT/DeiT/Mixer practice)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """Patch embedding, class (and distillation) token, pre-norm blocks, final LayerNorm, linear head(s)."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0, patch_size: int = 4, stages: int = 3,
                 distill_token: bool = False):
        super().__init__()
        patch = patch_size_for(image_size, patch_size)
        self.grid = (image_size // patch, image_size // patch)
        self.prefix_tokens = 2 if distill_token else 1
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distill_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix_tokens + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.stage_ends = stage_ends(depth, stages)
        self.num_stages = stages
        for k in range(1, stages + 1):
            self.add_module(f"stage{k}", TokenMap(self.prefix_tokens))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pool = TokenPool(0)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill_token else None
        init_transformer(self)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        taps = {"stem": "patch_embed"}
        for k in range(1, stages + 1):
            taps[f"stage{k}"] = taps[f"stage{k}_pre"] = f"stage{k}"
        taps.update(embedding="pool", classifier="head")
        if distill_token:
            taps[DISTILL_TAP] = "head_dist"
        self.tap_points = taps

    def _position(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        prefix, patches = self.pos_embed[:, : self.prefix_tokens], self.pos_embed[:, self.prefix_tokens:]
        dim = patches.shape[-1]
        patches = patches.reshape(1, *self.grid, dim).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        tokens = x.flatten(2).transpose(1, 2)
        prefix = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        prefix = [p.expand(tokens.shape[0], -1, -1) for p in prefix]
        tokens = torch.cat([*prefix, tokens], dim=1) + self._position(grid)
        stage = 0
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if stage < self.num_stages and index == self.stage_ends[stage]:
                stage += 1
                getattr(self, f"stage{stage}")(tokens, grid)  # the map is seen by stage taps only
        tokens = self.norm(tokens)
        logits = self.head(self.pool(tokens))
        if self.head_dist is None:
            return logits
        return (logits + self.head_dist(tokens[:, 1])) / 2


__all__ = ["DISTILL_TAP", "Block", "TokenMap", "TokenPool", "VisionTransformer", "init_transformer",
           "patch_size_for", "stage_ends"]
