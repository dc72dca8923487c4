"""VID: Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge Transfer", CVPR 2019
(arXiv:1904.05835).

Regressor and variances as github.com/HobbitLong/RepDistiller (`distiller_zoo/VID.py`, `-b 1`), with the
log-scales optimised. Loss, keys and defaults: docs/methods.md#vid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch
from kdlab.methods.stages import StageMethod


def vid_regressor(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv C_s→C_t, ReLU, 1x1 C_t→C_t, ReLU, 1x1 C_t→C_t, no bias (RepDistiller VIDLoss)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False),
                         nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False))


@register
class VID(StageMethod):
    """Variational information distillation: Gaussian NLL of f_t given r(f_s), per stage.

    Per matched stage a regressor (`vid_regressor`, mid width C_t) and trainable per-channel log-scales α
    with σ² = softplus(α) + eps starting at `init_variance`. The α are `nn.Parameter`s of this module, so
    they are optimised (mdistiller forgets them, leaving σ² at 5). As in RepDistiller, a larger student map
    is pooled to the teacher's size before the regressor; a larger teacher map is pooled by the loss.
    Defaults: weight 1, init_variance 5.0, eps 1e-5 (RepDistiller `-b 1`; mdistiller `VID.*`), CE 1.
    """

    name = "vid"
    paper = "Ahn et al. Variational Information Distillation for Knowledge Transfer. CVPR 2019 (arXiv:1904.05835)"
    defaults = {"weight": 1.0, "init_variance": 5.0, "eps": 1e-5}
    ce_weight = 1.0

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not self.hp["init_variance"] > self.hp["eps"]:
            raise KdlabError(f"method.vid.init_variance={self.hp['init_variance']} must exceed method.vid.eps="
                             f"{self.hp['eps']} (σ² = softplus(α) + eps); use 5.0")

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        init = losses.vid_init_log_scale(self.hp["init_variance"], self.hp["eps"])
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        for (c_s, _, _), (c_t, _, _) in self.stage_shapes(ctx):
            self.regressors.append(vid_regressor(c_s, c_t))
            self.log_scales.append(nn.Parameter(torch.full((c_t,), init)))

    def means(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Regressor outputs μ per stage, the student first pooled down to the teacher's size if larger."""
        out = []
        for regressor, s, t in zip(self.regressors, student, teacher, strict=True):
            if s.shape[-2] > t.shape[-2] or s.shape[-1] > t.shape[-1]:
                s = F.adaptive_avg_pool2d(s, (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])))
            out.append(regressor(s))
        return out

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        return {"vid": losses.vid(self.means(s, t), t, list(self.log_scales), eps=self.hp["eps"])}


__all__ = ["VID", "vid_regressor"]
