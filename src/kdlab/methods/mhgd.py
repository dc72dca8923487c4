"""MHGD: Lee, Song, "Graph-based Knowledge Distillation by Multi-head Attention Network", BMVC 2019
(arXiv:1907.02226).

After the authors' TF code: github.com/sseung0703/KD_methods_with_TF (`nets/Relation.py`, `op_util.py`) and
github.com/sseung0703/MHGD. Loss, keys and defaults: docs/methods.md#mhgd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import matched_stages


class AttentionHeads(nn.Module):
    """Multi-head attention graph between two consecutive stages' vectors (MHGD `Attention_head`).

    Each of H heads projects the current-stage vectors (sender) and the previous-stage vectors (receiver)
    with FC + BN to D2 = ⌊(C_prev + C_cur)/2⌋ and returns their inner products, a (H, B, B) graph.
    """

    def __init__(self, c_prev: int, c_cur: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.dim = (c_prev + c_cur) // 2
        self.sender = nn.Sequential(nn.Linear(c_cur, self.dim * num_heads), nn.BatchNorm1d(self.dim * num_heads))
        self.receiver = nn.Sequential(nn.Linear(c_prev, self.dim * num_heads),
                                      nn.BatchNorm1d(self.dim * num_heads))

    def forward(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        b = current.shape[0]
        send = self.sender(current).view(b, self.num_heads, self.dim).transpose(0, 1)  # (H, B, D2)
        receive = self.receiver(previous).view(b, self.num_heads, self.dim).transpose(0, 1)
        return send @ receive.transpose(1, 2)


class Estimator(nn.Module):
    """Predicts the current-stage teacher vectors from the previous stage through the attention graph
    (MHGD `Estimator`): FC+BN+ReLU, row-softmaxed graph with random head dropout, FC, L2-norm."""

    def __init__(self, c_prev: int, c_cur: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        dim = (c_prev + c_cur) // 2
        self.embed = nn.Sequential(nn.Linear(c_prev, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.out = nn.Linear(dim * num_heads, c_cur)
        nn.init.zeros_(self.out.bias)

    def forward(self, previous: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        h, b = graph.shape[0], graph.shape[1]
        g = F.softmax(graph, dim=-1)
        # drop_head: per sample, keep the heads whose noise is above the mean over heads (about half).
        noise = torch.randn(h, b, 1, device=g.device, dtype=g.dtype)
        g = g * (noise - noise.mean(dim=0, keepdim=True) > 0).to(g.dtype)
        x = g @ self.embed(previous)  # (H, B, D)
        return F.normalize(self.out(x.transpose(0, 1).reshape(b, -1)), dim=-1)


@register
class MHGD(Method):
    """Graph-based KD by multi-head attention (Lee & Song, BMVC 2019), after the official TF code
    (sseung0703/KD_methods_with_TF `nets/Relation.py`, `op_util.py`).

    Each matched post-ReLU stage is compressed per sample by SVD to one C-vector (teacher: top-1 right
    singular vector; student: top-4, aligned to the teacher as in KD-SVD). For consecutive stages, 8
    attention heads (FC+BN to ⌊(C_prev+C_cur)/2⌋) give (H, B, B) graphs.
    * Init stage (`has_init_stage`; 40 epochs in the original): the heads and an estimator are trained on
      teacher vectors only, loss Σ_levels mean(1 − ⟨V̂_t, V_t⟩); the student is not updated
      (`init_modules` returns only the attention network). The official extra 5e-4·Σw² on these weights
      is left to the optimizer's weight decay.
    * Main phase: the heads are frozen (eval BN, no gradient) and the loss is Σ_levels Σ_{h,i}
      KL(softmax(tanh G_s) ‖ softmax(tanh G_t)) (`kdlab.losses.mhgd`, a sum).
    `clip_to_ce`: the engine clips this loss's gradient per parameter to ‖∇CE‖·sigmoid(epoch − init_epochs)
    with the official 0-indexed epoch, as `Optimizer_w_MHGD`: sigmoid(0) = 0.5 in the first main epoch
    (kdlab's main-phase epochs count from 1, so the engine uses sigmoid(epoch − 1)). Our extension for any
    pair: a student stage whose width differs from the teacher's goes through a 1x1 conv + BN connector (the
    SVD alignment needs equal channels).
    Defaults: weight 1, 8 heads (official), CE 1.
    """

    name = "mhgd"
    paper = ("Lee, Song. Graph-based Knowledge Distillation by Multi-head Attention Network. BMVC 2019 "
             "(arXiv:1907.02226)")
    defaults = {"weight": 1.0, "num_heads": 8}
    ce_weight = 1.0
    uses_teacher_logits = False
    has_init_stage = True
    clip_to_ce = True
    frozen_in_main = ("attention",)
    student_vectors = 4  # top-4 student singular vectors, aligned to the teacher's top-1 (official)

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_stages, self.teacher_stages = matched_stages(student_points, teacher_points)
        if len(self.teacher_stages) < 2:
            raise KdlabError("mhgd needs at least two matched stages (graphs link consecutive stages); use models "
                             "with two or more stages or another method")
        return list(self.student_stages), list(self.teacher_stages)

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        if self.hp["num_heads"] < 1:
            raise KdlabError(f"method.mhgd.num_heads must be >= 1, got {self.hp['num_heads']}; use 8")
        self.connectors = nn.ModuleList()
        widths = []
        for s_name, t_name in zip(self.student_stages, self.teacher_stages, strict=True):
            s_shape, t_shape = ctx.student_shapes[s_name], ctx.teacher_shapes[t_name]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise KdlabError(f"mhgd reads (C, H, W) stage maps, but the student's {s_name} is {tuple(s_shape)} "
                                 f"and the teacher's {t_name} {tuple(t_shape)}; tap convolutional stages")
            c_s, c_t = int(s_shape[0]), int(t_shape[0])
            same = c_s == c_t
            self.connectors.append(nn.Identity() if same else ConvConnector(s_shape, (c_t, *s_shape[1:])))
            widths.append(c_t)
        h = self.hp["num_heads"]
        self.attention = nn.ModuleDict({
            "heads": nn.ModuleList(AttentionHeads(widths[i - 1], widths[i], h) for i in range(1, len(widths))),
            "estimators": nn.ModuleList(Estimator(widths[i - 1], widths[i], h) for i in range(1, len(widths))),
        })

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.attention]

    def teacher_vectors(self, batch: DistillBatch) -> list[torch.Tensor]:
        """Top-1 right singular vector (B, C) of each teacher stage."""
        return [losses.svd_compress(batch.teacher[n], k=1)[:, 0] for n in self.teacher_stages]

    def student_vectors_aligned(self, batch: DistillBatch, teacher: list[torch.Tensor]) -> list[torch.Tensor]:
        """Top-4 student singular vectors per stage, the one best aligned with the teacher's kept (B, C)."""
        out = []
        for conn, name, v_t in zip(self.connectors, self.student_stages, teacher, strict=True):
            v_s = losses.svd_compress(conn(batch.student[name]), k=self.student_vectors)
            out.append(losses.align_singular_vectors(v_s, v_t.unsqueeze(1))[:, 0])
        return out

    def graphs(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        heads = self.attention["heads"]
        return [heads[i - 1](vectors[i], vectors[i - 1]) for i in range(1, len(vectors))]

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        v_t = self.teacher_vectors(batch)
        total = None
        for i, (estimator, graph) in enumerate(zip(self.attention["estimators"], self.graphs(v_t), strict=True)):
            estimate = estimator(v_t[i], graph)
            level = (1.0 - (estimate * v_t[i + 1].to(estimate.dtype)).sum(dim=-1)).mean()
            total = level if total is None else total + level
        return {"mhgd_attention": total}

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        v_t = self.teacher_vectors(batch)
        with torch.no_grad():
            g_t = self.graphs(v_t)
        g_s = self.graphs(self.student_vectors_aligned(batch, v_t))
        return {"mhgd": losses.mhgd(g_s, g_t)}


__all__ = ["MHGD", "AttentionHeads", "Estimator"]
