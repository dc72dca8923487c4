"""Stage matching and tap-shape checks shared by the feature methods.

`matched_stages` pairs the stage taps of a student and a teacher of any depths (deepest stages aligned);
`StageMethod` is a Method reading those pairs; `shape3` and `flat_width` turn a probed tap shape into the
numbers a connector is built from, or a one-line error naming the tap. This module registers no method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kdlab.errors import KdlabError
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.taps import stage_names


def matched_stages(student_points: dict[str, str], teacher_points: dict[str, str], pre_teacher: bool = False,
                   pre_student: bool = False) -> tuple[list[str], list[str]]:
    """Pair the last N stages of student and teacher (N = the smaller stage count), deepest last.

    Models of different depth (e.g. a 4-stage ResNet-18 and a 3-stage CIFAR ResNet) are aligned at their
    deepest stages, where the semantics match best.
    """
    s = stage_names(student_points, pre_student)
    t = stage_names(teacher_points, pre_teacher)
    n = min(len(s), len(t))
    if n == 0:
        raise KdlabError("this method needs stage taps (stage1, stage2, ...); the model has none: name them "
                         "with taps={'student': {'stage1': 'path', ...}, 'teacher': {...}}")
    return s[len(s) - n:], t[len(t) - n:]


def deepest_stage(points: dict[str, str], pre: bool = False) -> str:
    """The last stage tap of a model (its final feature map)."""
    return matched_stages(points, points, pre, pre)[0][-1]


def shape3(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """(C, H, W) of a probed 4-d tap, or a one-line error for a flat tap."""
    if len(shape) != 3:
        raise KdlabError(f"{where} has shape {tuple(shape)}, not a (C, H, W) feature map; tap a convolutional "
                         f"stage output instead")
    return int(shape[0]), int(shape[1]), int(shape[2])


def flat_width(shape: Sequence[int], where: str) -> int:
    """Number of features of a probed embedding tap (its shape without the batch dimension)."""
    width = 1
    for v in shape:
        width *= int(v)
    if width <= 0:
        raise KdlabError(f"{where} has shape {tuple(shape)}, which holds no features; tap the pooled embedding")
    return width


class StageMethod(Method):
    """A method reading the matched stages f1..fN of both networks (pre- or post-ReLU per side)."""

    pre_student: bool = False
    pre_teacher: bool = False
    uses_teacher_logits = False

    def stage_taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        return matched_stages(student_points, teacher_points, pre_teacher=self.pre_teacher,
                              pre_student=self.pre_student)

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_stages, self.teacher_stages = self.stage_taps(student_points, teacher_points)
        return list(self.student_stages), list(self.teacher_stages)

    def build(self, ctx: BuildContext) -> None:
        self.student_stages, self.teacher_stages = self.stage_taps(ctx.student_points, ctx.teacher_points)
        self.stage_shapes(ctx)  # (C, H, W) maps only: a one-line error for a flat tap

    def stage_shapes(self, ctx: BuildContext) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(student (C, H, W), teacher (C, H, W)) per matched stage, for building connectors."""
        return [(shape3(ctx.student_shapes[s], f"student tap {s}"), shape3(ctx.teacher_shapes[t], f"teacher tap {t}"))
                for s, t in zip(self.student_stages, self.teacher_stages, strict=True)]

    def features(self, batch: DistillBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([batch.student[n] for n in self.student_stages], [batch.teacher[n] for n in self.teacher_stages])


__all__ = ["StageMethod", "deepest_stage", "flat_width", "matched_stages", "shape3"]
