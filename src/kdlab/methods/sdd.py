"""SDD: Wei, Luo, Wang, Zhang, Xu, Li, "Scale Decoupled Distillation", CVPR 2024 (arXiv:2403.13512).

The last feature map of each network (the `final_map` tap: the map its global pooling averages) is pooled to
1x1, 2x2 and 4x4 grids; every cell goes through the network's own classifier, and the student matches the
teacher cell by cell, cells where the teacher's local and global predictions disagree counted twice. As the
authors' github.com/shicaiwei123/SDD-CVPR2024 (`mdistiller/models/cifar/utils.py` `SPP`,
`mdistiller/distillers/KD.py` `sdd_kd_loss`, `SDD_DKD.py` `multi_dkd`, `SDD_nkd.py` `multi_nkd_loss`,
`mdistiller/engine/cfg.py`, `configs/cifar100/sdd_*`). Loss, keys and defaults: docs/methods.md#sdd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import shape3

FINAL = "final_map"
BASES = ("kd", "dkd", "nkd")


@register
class SDD(Method):
    """Scale-decoupled KD: Σ w·ℓ over the B·N (sample, cell) pairs / (B·N); ℓ = KD, DKD or NKD per cell.

    SD-KD defaults (mdistiller `KD.*` of the authors' repository): CE 0.1, weight 0.9, T 4, no warm-up,
    cells [1, 2, 4] (the `--M` of the paper's heterogeneous pairs; same-family pairs use [1, 2]),
    complementary weight 2. SD-DKD: `base=dkd`, CE 1, weight 1, α 1, β per pair (8 by default), warm-up 20.
    SD-NKD: `base=nkd`, CE 1, weight 1, T 4 and γ = the DKD β of the pair, warm-up 20.
    """

    name = "sdd"
    paper = "Wei et al. Scale Decoupled Distillation. CVPR 2024 (arXiv:2403.13512)"
    defaults = {"weight": 0.9, "temperature": 4.0, "scales": [1, 2, 4], "base": "kd", "alpha": 1.0,
                "beta": 8.0, "gamma": 8.0, "complementary_weight": 2.0, "warmup": 0}
    positive = ("temperature",)
    ce_weight = 0.1
    student_tap_names = (FINAL,)
    teacher_tap_names = (FINAL,)

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        hp = self.hp
        scales = hp["scales"]
        if (not isinstance(scales, (list, tuple)) or not scales or scales[0] != 1 or len(set(scales)) != len(scales)
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales)):
            raise KdlabError(f"method.sdd.scales={scales!r} must be distinct grid sizes starting with the global 1, "
                             f"e.g. [1, 2, 4] (heterogeneous pairs) or [1, 2] (same-family pairs)")
        hp["scales"] = [int(s) for s in scales]
        if hp["base"] not in BASES:
            raise KdlabError(f"method.sdd.base must be one of {', '.join(BASES)}, got {hp['base']!r}")
        for key in ("alpha", "beta", "gamma", "complementary_weight"):
            if hp[key] < 0:
                raise KdlabError(f"method.sdd.{key} must be >= 0, got {hp[key]}; use e.g. {self.defaults[key]}")
        if hp["warmup"] < 0:
            raise KdlabError(f"method.sdd.warmup must be >= 0 epochs, got {hp['warmup']}; 0 switches it off")
        self._checked = False

    def build(self, ctx: BuildContext) -> None:
        heads = []
        for role, model, points, shapes in (("student", ctx.student, ctx.student_points, ctx.student_shapes),
                                            ("teacher", ctx.teacher, ctx.teacher_points, ctx.teacher_shapes)):
            channels = shape3(shapes[FINAL], f"the {role}'s {FINAL} tap")[0]
            if "classifier" not in points:
                raise KdlabError(f"sdd needs the {role}'s Linear 'classifier' after the global pooling of its {FINAL}; "
                                 f"name it with taps={{'{role}': {{'classifier': 'path'}}}}")
            head = model.get_submodule(points["classifier"])
            if not isinstance(head, nn.Linear) or (channels is not None and head.in_features != channels):
                raise KdlabError(f"sdd: the {role}'s classifier '{points['classifier']}' must be a Linear layer on "
                                 f"the {channels}-channel pooled {FINAL}; point the taps at that map and layer")
            heads.append(head)
        # Held outside the module tree: neither network's classifier is a parameter or state of this method.
        object.__setattr__(self, "_student_head", heads[0])
        object.__setattr__(self, "_teacher_head", heads[1])
        object.__setattr__(self, "_student_model", ctx.student)
        object.__setattr__(self, "_teacher_model", ctx.teacher)

    def scale(self, epoch: int) -> float:
        return losses.dkd_warmup(epoch, self.hp["warmup"])

    def region_logits(self, feature_map: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """(B, N, K): the classifier on each cell of the multi-scale pooled map (cell 0: the global logits)."""
        cells = losses.sdd_pool(feature_map, self.hp["scales"])
        return head(cells.to(head.weight.dtype))

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student = self.region_logits(batch.student[FINAL], self._student_head)
        with torch.no_grad():
            teacher = self.region_logits(batch.teacher[FINAL], self._teacher_head)
        if not self._checked:
            self._check_global_cell("teacher", teacher[:, 0], batch.teacher_logits, self._teacher_model)
            self._check_global_cell("student", student[:, 0].detach(), batch.student_logits, self._student_model)
            self._checked = True
        hp = self.hp
        return {"sdd": losses.sdd(student, teacher, batch.targets, temperature=hp["temperature"], base=hp["base"],
                                  alpha=hp["alpha"], beta=hp["beta"], gamma=hp["gamma"],
                                  complementary_weight=hp["complementary_weight"])}

    def _check_global_cell(self, role: str, cell: torch.Tensor, logits: torch.Tensor | None,
                           model: nn.Module | None) -> None:
        """Once: the global cell must reproduce the network's logits, or the taps do not describe its head."""
        if logits is None or model is None:
            return
        if any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules()):
            return  # a dropout before the classifier makes the two differ by design
        exact = logits.dtype == cell.dtype == torch.float32
        logits = logits.detach().float()
        tolerance = 1e-3 if exact else 3e-2
        gap = float((cell.float() - logits).abs().max())
        if gap > tolerance * (1.0 + float(logits.abs().max())):
            raise KdlabError(f"sdd: the {role}'s classifier applied to the global average of its {FINAL} tap differs "
                             f"from its logits (max gap {gap:.3g}); SDD needs logits = Linear(global average of "
                             f"{FINAL}): point taps {FINAL}/classifier at that map and layer")


__all__ = ["SDD"]
