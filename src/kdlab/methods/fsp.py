"""FSP: Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017.

The protocol of github.com/HobbitLong/RepDistiller (`distiller_zoo/FSP.py`, `helper/pretrain.py`): FSP
matrices trained in an init stage, then CE only. Loss, keys and defaults: docs/methods.md#fsp.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import matched_stages, shape3

_Pair = tuple[torch.Tensor, torch.Tensor]


def _flow_points(points: dict[str, str], stages: list[str], role: str) -> list[str]:
    """The tap before the first matched stage (stem, or the previous stage) followed by the matched stages."""
    first = int(stages[0].removeprefix("stage"))
    before = "stem" if first == 1 else f"stage{first - 1}"
    if before not in points:
        raise KdlabError(f"fsp needs the {role}'s '{before}' tap (the map before {stages[0]}); name its module "
                         f"with taps={{'{role}': {{'{before}': 'path.to.module'}}}}")
    return [before, *stages]


@register
class FSP(Method):
    """Flow-of-solution-procedure matrices (Yim et al., CVPR 2017), RepDistiller protocol.

    Points: the map before the first matched stage (`stem` for a 3-stage pair) and the matched stages;
    pairs of consecutive points give (B, C1, C2) FSP matrices (the larger map of a pair pooled). Init
    stage: the student is trained on `init_weight`·Σ_pairs mean (G_s − G_t)² alone (RepDistiller: 30
    epochs, weight 1); main phase: CE only (RepDistiller's `-b` has no effect). RepDistiller needs equal
    channel counts; our extension for other pairs: a student point whose width differs from the
    teacher's goes through a 1x1 conv + BN connector (trained in the init stage, as the TF2 port's
    adaptors), so the matrices have the teacher's shape.
    """

    name = "fsp"
    paper = ("Yim, Joo, Bae, Kim. A Gift from Knowledge Distillation: Fast Optimization, Network Minimization "
             "and Transfer Learning. CVPR 2017")
    defaults = {"weight": 1.0, "init_weight": 1.0}
    ce_weight = 1.0
    has_init_stage = True
    uses_teacher_logits = False

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        s, t = matched_stages(student_points, teacher_points)
        self.student_flow = _flow_points(student_points, s, "student")
        self.teacher_flow = _flow_points(teacher_points, t, "teacher")
        return list(self.student_flow), list(self.teacher_flow)

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_flow, self.teacher_flow, strict=True):
            c_s, h_s, w_s = shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            c_t = shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")[0]
            self.connectors.append(nn.Identity() if c_s == c_t else ConvConnector((c_s, h_s, w_s), (c_t, h_s, w_s)))

    def pairs(self, batch: DistillBatch) -> tuple[list[_Pair], list[_Pair]]:
        """Consecutive (map, next map) pairs of the student (through its connectors) and of the teacher."""
        s = [conn(batch.student[n]) for conn, n in zip(self.connectors, self.student_flow, strict=True)]
        t = [batch.teacher[n] for n in self.teacher_flow]
        return list(zip(s[:-1], s[1:], strict=True)), list(zip(t[:-1], t[1:], strict=True))

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s_pairs, t_pairs = self.pairs(batch)
        return {"fsp": self.hp["init_weight"] * losses.fsp(s_pairs, t_pairs)}

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {}


__all__ = ["FSP"]
