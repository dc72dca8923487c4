"""OFA-KD: Hao, Guo, Han, Tang, Hu, Wang, Xu, "One-for-All: Bridge the Gap Between Heterogeneous
Architectures in Knowledge Distillation", NeurIPS 2023.

Each student stage gets a training-only branch that turns its features into class logits; every branch and
the student's own logits learn from the teacher's logits through the OFA loss, whose exponent ε enhances the
target class. Only the teacher's logits are read, so any teacher (CNN, ViT, MLP) teaches any student. As the
authors' github.com/Hao840/OFAKD (`distillers/ofa.py` `OFA`, `ofa_loss`; `distillers/utils.py` `SepConv`,
`PatchMerging`, `init_weights`; defaults of `train.py`). Loss, keys and defaults: docs/methods.md#ofa.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import shape3
from kdlab.methods.taps import stage_names
from kdlab.models.vit import Block, TokenMap

FINAL_GRID = 7  # token branches merge patches down to a 7x7 grid (the official `final_patch_grid`)


class SepConv(nn.Sequential):
    """Depthwise 3x3 (stride 2) -> 1x1 -> BN -> ReLU -> depthwise 3x3 -> 1x1 (to `out`) -> BN -> ReLU."""

    def __init__(self, channels: int, out: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
            nn.Conv2d(channels, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU())


class PatchMerging(nn.Module):
    """(N, C, H, W) map -> (N, H/2·W/2, out) tokens: each 2x2 neighbourhood concatenated, LayerNorm, Linear."""

    def __init__(self, channels: int, out: int, act: bool):
        super().__init__()
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, out, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, :, i::2, j::2] for j in (0, 1) for i in (0, 1)]  # the official x0, x1, x2, x3 order
        merged = torch.cat(parts, dim=1)  # (N, 4C, H/2, W/2)
        return self.act(self.reduction(self.norm(merged.flatten(2).transpose(1, 2))))


class TokenBranch(nn.Module):
    """Branch of a token (ViT/Mixer) stage: patch merging to about 7x7, transformer blocks, token mean, Linear."""

    def __init__(self, shape: tuple[int, int, int], width: int, blocks: int, num_classes: int):
        super().__init__()
        channels, h, w = shape
        merges = max(int(math.log2(min(h, w) / FINAL_GRID)), 0) if min(h, w) >= FINAL_GRID else 0
        layers: list[nn.Module] = []
        for i in range(merges):
            layers.append(PatchMerging(channels if i == 0 else width, width, act=i != merges - 1))
        self.merge = nn.Sequential(*layers)
        self.project = nn.Linear(channels, width) if not merges and channels != width else nn.Identity()
        heads = 4 if width % 4 == 0 else 1
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(blocks)))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.merge(x) if len(self.merge) else x.flatten(2).transpose(1, 2)
        return self.fc(self.blocks(self.project(tokens)).mean(dim=1))


def conv_branch(shape: tuple[int, int, int], width: int, downsamples: int, num_classes: int) -> nn.Sequential:
    """Branch of a CNN stage: `downsamples` SepConvs doubling the channels (the last to `width`), or a 1x1 conv
    for the last stage, then global average pooling and Linear(width, classes)."""
    channels = shape[0]
    layers: list[nn.Module] = []
    if downsamples == 0:
        layers.append(nn.Conv2d(channels, width, 1))
    for i in range(downsamples):
        out = width if i == downsamples - 1 else channels * 2
        layers.append(SepConv(channels, out))
        channels *= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def init_branch(module: nn.Module) -> None:
    """The official `init_weights`: convs Kaiming-normal fan_out, BN 1/0, Linear truncated normal std 0.02."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register
class OFA(Method):
    """CE + branch_weight·Σ_stages OFA(branch(F_s), z_t) + kd_weight·OFA(z_s, z_t), one ε and τ for all terms.

    Defaults of the authors' `train.py`: every student stage, gt/kd/ofa loss weights 1, ε 1 (their CIFAR-100
    command; 1.5 in the ImageNet one), τ 1. Branches are trained with the student and unused at evaluation.
    """

    name = "ofa"
    paper = ("Hao, Guo, Han, Tang, Hu, Wang, Xu. One-for-All: Bridge the Gap Between Heterogeneous "
             "Architectures in Knowledge Distillation. NeurIPS 2023")
    defaults = {"weight": 1.0, "branch_weight": 1.0, "kd_weight": 1.0, "eps": 1.0, "temperature": 1.0,
                "stages": []}
    positive = ("eps", "temperature")
    ce_weight = 1.0

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        stages = self.hp["stages"]
        if not isinstance(stages, (list, tuple)) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                                        for s in stages):
            raise KdlabError(f"method.ofa.stages={stages!r} must be a list of student stage numbers (1 = stage1), "
                             f"e.g. [1, 2, 3]; [] reads every stage")
        for key in ("branch_weight", "kd_weight"):
            if self.hp[key] < 0:
                raise KdlabError(f"method.ofa.{key} must be >= 0, got {self.hp[key]}; the authors use 1")
        self.branches = nn.ModuleList()

    def _stages(self, student_points: dict[str, str]) -> list[str]:
        names = stage_names(student_points)
        if not names:
            raise KdlabError("ofa needs the student's stage taps (stage1, stage2, ...); name them with "
                             "taps={'student': {'stage1': 'path', ...}}")
        chosen = self.hp["stages"]
        if not chosen:
            return names
        missing = [s for s in chosen if s > len(names)]
        if missing:
            raise KdlabError(f"method.ofa.stages asks for stage {missing[0]}, but the student has {len(names)} "
                             f"stages; use numbers 1..{len(names)}")
        return [names[s - 1] for s in sorted(set(chosen))]

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        return self._stages(student_points), []

    @staticmethod
    def _feature_width(model: nn.Module, points: dict[str, str]) -> int | None:
        """Width of a network's final features (the official `stage_info(-1)`): its Linear classifier's input."""
        path = points.get("classifier")
        head = model.get_submodule(path) if path else None
        return head.in_features if isinstance(head, nn.Linear) else None

    def build(self, ctx: BuildContext) -> None:
        self.student_stages = self._stages(ctx.student_points)
        all_stages = stage_names(ctx.student_points)
        shapes = {tap: shape3(ctx.student_shapes[tap], f"student tap {tap}") for tap in self.student_stages}
        s_width = self._feature_width(ctx.student, ctx.student_points) or shapes[self.student_stages[-1]][0]
        t_width = (self._feature_width(ctx.teacher, ctx.teacher_points) if ctx.teacher is not None else None) or s_width
        width = max(s_width, t_width)
        self.branches = nn.ModuleList()
        for tap in self.student_stages:
            remaining = len(all_stages) - all_stages.index(tap) - 1
            if isinstance(ctx.student.get_submodule(ctx.student_points[tap]), TokenMap):
                branch: nn.Module = TokenBranch(shapes[tap], s_width, max(remaining, 1), ctx.num_classes)
            else:
                branch = conv_branch(shapes[tap], width, remaining, ctx.num_classes)
            init_branch(branch)
            self.branches.append(branch)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        hp = self.hp
        teacher, targets = batch.teacher_logits, batch.targets
        branch_terms = [losses.ofa(branch(batch.student[tap]), teacher, targets, eps=hp["eps"],
                                   temperature=hp["temperature"])
                        for tap, branch in zip(self.student_stages, self.branches, strict=True)]
        logit_term = losses.ofa(batch.student_logits, teacher, targets, eps=hp["eps"], temperature=hp["temperature"])
        return {"ofa": hp["branch_weight"] * torch.stack(branch_terms).sum(), "ofa_kd": hp["kd_weight"] * logit_term}


__all__ = ["OFA"]
