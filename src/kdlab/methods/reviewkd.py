"""ReviewKD: Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (arXiv:2104.09044).

Attention-based fusion (ABF) of student features, deepest first, matched to teacher features by the
hierarchical context loss, as the authors' github.com/dvlab-research/ReviewKD (`CIFAR-100/model/reviewkd.py`,
`CIFAR-100/train.py`) and github.com/megvii-research/mdistiller (`mdistiller/distillers/ReviewKD.py`). Those
write the channel and shape lists per architecture pair; here they are derived from the probed tap shapes, so
any pair works. Loss, keys and defaults: docs/methods.md#reviewkd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import matched_stages

EMBEDDING = "embedding"


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """A flat (B, C) embedding as a (B, C, 1, 1) map; 4-d maps unchanged."""
    return x.reshape(x.shape[0], -1, 1, 1) if x.dim() == 2 else x


def _chw(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    if len(shape) == 1:
        return int(shape[0]), 1, 1
    if len(shape) != 3:
        raise KdlabError(f"reviewkd: {where} has shape {tuple(shape)}; it needs (C, H, W) feature maps or a flat "
                         f"(C,) embedding")
    return int(shape[0]), int(shape[1]), int(shape[2])


class ABF(nn.Module):
    """Attention-based fusion (official `reviewkd.py` ABF): 1x1 conv + BN to C_mid; at non-deepest levels
    blend with the (nearest-upsampled) deeper residual using two sigmoid maps from a 1x1 conv on their
    concatenation; nearest-resize to the teacher's size; 3x3 conv + BN to C_out. Convs: Kaiming-uniform a=1.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at the teacher's shape, fused map passed to the next shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper level's residual")
            x = self.blend(x, residual)
        x = _resize(x, out_size)
        return self.conv2(x), x

    def blend(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x·a + r·b with [a, b] = sigmoid(att_conv([x, r])), r = the residual nearest-resized to x's size.

        The official form concatenates x and r. Here the 1x1 attention convolution is split over its two inputs,
        and its residual half runs at the residual's own size before the resizing (a 1x1 convolution commutes with
        nearest resizing, which only copies positions): the same values up to summation order, without the
        concatenation's wide full-resolution copy. Two output channels: a matrix product, not a convolution call.
        """
        conv = self.att_conv[0]
        weight = conv.weight.flatten(1)  # (2, C_x + C_r)
        c = x.shape[1]
        logits = _channel_mix(weight[:, :c], x) + _resize(_channel_mix(weight[:, c:], residual), x.shape[-2:])
        att = torch.sigmoid(logits + conv.bias.view(1, -1, 1, 1)).to(x.dtype)  # x's dtype, as the conv's under autocast
        return x * att[:, :1] + _resize(residual, x.shape[-2:]) * att[:, 1:2]


def _channel_mix(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A bias-free 1x1 convolution, (O, C) weights on a (B, C, H, W) map, as one batched matrix product."""
    return torch.matmul(weight, x.flatten(2)).view(x.shape[0], weight.shape[0], *x.shape[-2:])


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="nearest")


@register
class ReviewKD(Method):
    """ReviewKD: HCL(ABF chain(student f1..fN, f_emb), teacher f1_pre..fN_pre, f_emb).

    Student: matched post-ReLU stages plus the pooled embedding as a 1x1 map; teacher: matched pre-ReLU
    stages plus its embedding. One ABF per level, C_mid = min(`max_mid_channels`, C of the student
    embedding) (mdistiller `MAX_MID_CHANNEL 512`); channel/size lists from the probed shapes. Linear
    warm-up `scale(epoch) = min(epoch/warmup, 1)` with epochs counted from 1 (as mdistiller; the official
    code counts from 0). Defaults: weight 5 (official `reviewKD.sh` / mdistiller for res32x4→res8x4 and the
    wrn-40-2 pairs; 8 for res32x4→ShuffleV2, 0.6 res56→res20, 1.0 res110→res32 and ImageNet), warm-up 20,
    CE 1, no KD term. Teacher in eval mode (mdistiller; the official CIFAR code leaves it in train mode).
    """

    name = "reviewkd"
    paper = "Chen et al. Distilling Knowledge via Knowledge Review. CVPR 2021 (arXiv:2104.09044)"
    defaults = {"weight": 5.0, "warmup": 20, "max_mid_channels": 512}
    epoch_hparams = {"warmup": 240}  # 20 of mdistiller's 240 CIFAR epochs; scaled to the run's length
    ce_weight = 1.0
    uses_teacher_logits = False

    def level_taps(self, student_points: dict[str, str], teacher_points: dict[str, str]
                   ) -> tuple[list[str], list[str]]:
        s, t = matched_stages(student_points, teacher_points, pre_teacher=True)
        return [*s, EMBEDDING], [*t, EMBEDDING]

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_levels, self.teacher_levels = self.level_taps(student_points, teacher_points)
        return list(self.student_levels), list(self.teacher_levels)

    def build(self, ctx: BuildContext) -> None:
        self.student_levels, self.teacher_levels = self.level_taps(ctx.student_points, ctx.teacher_points)
        s_shapes = [_chw(ctx.student_shapes[n], f"student tap {n}") for n in self.student_levels]
        t_shapes = [_chw(ctx.teacher_shapes[n], f"teacher tap {n}") for n in self.teacher_levels]
        if self.hp["max_mid_channels"] < 1:
            raise KdlabError(f"method.reviewkd.max_mid_channels={self.hp['max_mid_channels']} must be >= 1; "
                             f"use the default 512")
        mid = min(self.hp["max_mid_channels"], s_shapes[-1][0])
        last = len(s_shapes) - 1
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < last)
                                  for i, (s, t) in enumerate(zip(s_shapes, t_shapes, strict=True)))
        self.out_sizes = [t[1:] for t in t_shapes]

    def scale(self, epoch: int) -> float:
        warmup = self.hp["warmup"]
        return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)

    def fuse(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """ABF outputs per level (shallow to deep) from student maps given shallow to deep."""
        outputs: list[torch.Tensor] = []
        residual = None
        for i in reversed(range(len(features))):
            out, residual = self.abfs[i](_as_map(features[i]), residual, self.out_sizes[i])
            outputs.insert(0, out)
        return outputs

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        outputs = self.fuse([batch.student[n] for n in self.student_levels])
        teacher = [_as_map(batch.teacher[n]) for n in self.teacher_levels]
        return {"reviewkd": losses.reviewkd_hcl(outputs, teacher)}


__all__ = ["ABF", "ReviewKD"]
