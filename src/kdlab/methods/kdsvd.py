"""KD-SVD: Lee, Kim, Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018
(arXiv:1807.06819).

The form of github.com/HobbitLong/RepDistiller (`distiller_zoo/KDSVD.py`), with the gradient clipping of the
authors' code (github.com/sseung0703/SSKD_SVD, github.com/sseung0703/KD_methods_with_TF `nets/SVP.py`). Loss,
keys and defaults: docs/methods.md#kdsvd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import StageMethod


@register
class KDSVD(StageMethod):
    """Self-supervised KD with SVD, RepDistiller form, on matched post-ReLU f1..fN.

    The original needs equal channels per stage; our extension (for any pair) maps a student stage with a
    different width through a 1x1 conv + BN connector (as the TF2 port's adaptors), keeping its spatial
    size; equal-width stages are used as they are. `clip_to_ce`: the engine clips this loss's gradient
    per parameter to ‖∇CE‖·sigmoid(epoch) with the official 0-indexed epoch (sigmoid(0) = 0.5 in the first
    epoch), as the authors' code (missing in RepDistiller/mdistiller).
    Defaults: weight 1, k 1 (mdistiller `KDSVD.K 1`, `FEAT_WEIGHT 1.0`), CE 1.
    """

    name = "kdsvd"
    paper = ("Lee, Kim, Song. Self-supervised Knowledge Distillation Using Singular Value Decomposition. "
             "ECCV 2018 (arXiv:1807.06819)")
    defaults = {"weight": 1.0, "k": 1}
    ce_weight = 1.0
    clip_to_ce = True

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hp["k"] < 1:
            raise KdlabError(f"method.kdsvd.k={self.hp['k']} must be >= 1; use the default k=1")

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.connectors = nn.ModuleList()
        k = self.hp["k"]
        for (s_name, t_name), ((c_s, h_s, w_s), (c_t, h_t, w_t)) in zip(
                zip(self.student_stages, self.teacher_stages, strict=True), self.stage_shapes(ctx), strict=True):
            rank = min(c_t, h_t * w_t, h_s * w_s)  # the student is mapped to the teacher's c_t channels
            if k > rank:
                raise KdlabError(f"method.kdsvd.k={k} exceeds the {rank} singular vectors (min(C, H*W)) of the "
                                 f"matched stages {s_name} ({c_s}, {h_s}, {w_s}) -> {t_name} ({c_t}, {h_t}, {w_t}); "
                                 f"lower k")
            same = c_s == c_t
            self.connectors.append(nn.Identity() if same else ConvConnector((c_s, h_s, w_s), (c_t, h_s, w_s)))

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        mapped = [conn(x) for conn, x in zip(self.connectors, s, strict=True)]
        try:
            return {"kdsvd": losses.kdsvd(mapped, t, k=self.hp["k"])}
        except torch.linalg.LinAlgError:
            # float32 eigh can fail to converge on ill-conditioned Gram matrices (the loss decomposes the smaller
            # of C x C and HW x HW, which avoids the rank-deficient C x C case): name the shapes, not a LAPACK
            # traceback.
            pairs = ", ".join(f"{sn} {tuple(x.shape[1:])} -> {tn} {tuple(y.shape[1:])}"
                              for sn, tn, x, y in zip(self.student_stages, self.teacher_stages, s, t, strict=True))
            worst = min(t, key=lambda y: y.shape[-2] * y.shape[-1] / y.shape[1])
            raise KdlabError(
                f"kdsvd: the SVD of the stage features did not converge (student -> teacher stages, (C, H, W): "
                f"{pairs}); {worst.shape[-2]}x{worst.shape[-1]} maps with {worst.shape[1]} channels are too "
                "small for KD-SVD: train on larger images (e.g. data.image_size=32), pick a teacher whose stages "
                "keep larger maps, or use another method (mhgd, at, fitnet)") from None


__all__ = ["KDSVD"]
