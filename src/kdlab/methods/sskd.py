"""SSKD: Xu, Liu, Li, Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020 (arXiv:2006.07114).

The authors' CIFAR-100 recipe (github.com/xuguodong03/SSKD `student.py`, `wrapper.py`, `command.sh`): every image in
four rotations, a projection head on each network's pooled embedding, the teacher's head trained first with the
teacher frozen, then CE + KD + KD on the rotated views + KD of the rotation-similarity matrices, with the teacher's
error-level ranking choosing the rows. Loss, keys and defaults: docs/methods.md#sskd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import flat_width


def projection_head(width: int) -> nn.Sequential:
    """Linear(d, d) -> ReLU -> Linear(d, d) on a pooled embedding of width d (the authors' `wrapper.proj_head`)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


@register
class SSKD(Method):
    """Self-supervision KD (Xu et al., ECCV 2020), the authors' `student.py`.

    Both networks see the batch and its rotations by 90/180/270 degrees (`views` = 4, view-major). Init stage: the
    teacher's projection head (on its detached embedding) learns, with the teacher frozen, to pick for each
    rotated view its source image among the un-rotated ones (cross-entropy over cosine similarities); 60 epochs in
    the authors' code. Main phase (head frozen): 0.1·CE on the un-rotated view, 0.9·KD (T 4) on it, 2.7·KD (T 4)
    on the rotated views the teacher ranks well (`tf_ratio` 1.0 of its wrong rows), 10·KD (T 0.5) between the
    students' and the teacher's rotated×un-rotated similarity matrices of the heads' outputs (`ss_ratio` 0.75).
    """

    name = "sskd"
    paper = ("Xu, Liu, Li, Loy. Knowledge Distillation Meets Self-Supervision. ECCV 2020 (arXiv:2006.07114)")
    defaults = {"weight": 1.0, "kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0, "temperature": 4.0,
                "tf_temperature": 4.0, "ss_temperature": 0.5, "tf_ratio": 1.0, "ss_ratio": 0.75}
    positive = ("temperature", "tf_temperature", "ss_temperature")
    ce_weight = 0.1
    has_init_stage = True
    frozen_in_main = ("teacher_head",)
    student_tap_names = ("embedding",)
    teacher_tap_names = ("embedding",)
    views = 4

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        for key in ("tf_ratio", "ss_ratio"):
            if not 0.0 <= self.hp[key] <= 1.0:
                raise KdlabError(f"method.sskd.{key} must be in [0, 1] (the kept share of the rows the teacher gets "
                                 f"wrong), got {self.hp[key]}; use the authors' {self.defaults[key]}")

    def build(self, ctx: BuildContext) -> None:
        self.student_head = projection_head(flat_width(ctx.student_shapes["embedding"], "student embedding"))
        self.teacher_head = projection_head(flat_width(ctx.teacher_shapes["embedding"], "teacher embedding"))

    def expand_batch(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise KdlabError(f"method 'sskd' rotates its images, which must be square; got a batch of shape "
                             f"{tuple(images.shape)}; use square images or another method")
        return losses.rotate_views(images, self.views)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.teacher_head]

    def teacher_similarity(self, batch: DistillBatch) -> torch.Tensor:
        embedding = batch.teacher["embedding"].flatten(1).detach()
        return losses.rotation_similarity(self.teacher_head(embedding), batch.views)

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"sskd_head": losses.sskd_contrastive(self.teacher_similarity(batch))}

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.views != self.views:
            raise KdlabError(f"method 'sskd' needs its {self.views} rotated views of each image; run it through "
                             f"kdlab.DistillationLoss, which expands the batch with `expand_batch`")
        n = batch.targets.shape[0]
        s, t = batch.student_logits, batch.teacher_logits
        with torch.no_grad():
            t_sim = self.teacher_similarity(batch)
        s_sim = losses.rotation_similarity(self.student_head(batch.student["embedding"].flatten(1)), batch.views)
        hp = self.hp
        return {
            "sskd_kd": hp["kd_weight"] * losses.kd(s[:n], t[:n], temperature=hp["temperature"]),
            "sskd_tf": hp["tf_weight"] * losses.sskd_transform(s, t, batch.targets, batch.views,
                                                                hp["tf_temperature"], hp["tf_ratio"]),
            "sskd_ss": hp["ss_weight"] * losses.sskd_similarity(s_sim, t_sim, hp["ss_temperature"], hp["ss_ratio"]),
        }


__all__ = ["SSKD", "projection_head"]
