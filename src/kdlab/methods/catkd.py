"""CAT-KD: Guo, Yan, Li, Lin, "Class Attention Transfer Based Knowledge Distillation", CVPR 2023 (arXiv:2304.12777).

The authors' github.com/GzyAftermath/CAT-KD (`mdistiller/distillers/CAT_KD.py` `CAT_KD`, `CAT_loss`; the
re-parametrised `_test` models of `mdistiller/models/cifar/`; defaults from `configs/cifar100/CAT_KD/*.yaml`).
Loss, keys and defaults: docs/methods.md#catkd.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.stages import shape3

FINAL = "final_map"


@register
class CATKD(Method):
    """Class attention transfer: MSE of the r x r pooled class activation maps (CAMs) of both networks, plus CE.

    A CAM is the classifier applied as a 1x1 conv (no bias) to `final_map`, the map the global pooling
    averages into the classifier's input: what the authors' `_test` networks compute with `conv_test`. kdlab
    keeps the models as they are and reads the CAMs from the tap and the classifier's weight: the student's
    (trained by both CE and this loss, as `conv_test`) and the frozen teacher's. The maps are pooled to
    r x r before the classifier is applied, which equals pooling the CAMs (both are linear) and costs K/C
    as much. Defaults: weight (β) 15, resolution (r) 2, normalize False, CE 1, no KD term: the
    resnet32x4 -> resnet8x4 config `configs/cifar100/CAT_KD/res32x4_res8x4.yaml`.
    """

    name = "catkd"
    paper = ("Guo, Yan, Li, Lin. Class Attention Transfer Based Knowledge Distillation. CVPR 2023 "
             "(arXiv:2304.12777)")
    defaults = {"weight": 15.0, "resolution": 2, "normalize": False}
    ce_weight = 1.0
    uses_teacher_logits = False
    student_tap_names = (FINAL,)
    teacher_tap_names = (FINAL,)

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hp["resolution"] < 1:
            raise KdlabError(f"method.catkd.resolution={self.hp['resolution']} must be >= 1 (the CAMs are pooled "
                             f"to r x r); use 2 (4 for ShuffleNet students in the authors' configs)")

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        for role, points in (("student", student_points), ("teacher", teacher_points)):
            missing = [n for n in (FINAL, "classifier") if n not in points]
            if missing:
                raise KdlabError(
                    f"catkd needs the {role}'s '{FINAL}' tap (the map its global pooling averages) and a single "
                    f"Linear 'classifier' after that pooling; the {role} has no {', '.join(missing)}: name them "
                    f"with taps={{'{role}': {{'{FINAL}': 'path', 'classifier': 'path'}}}} or use another method")
        return [FINAL], [FINAL]

    def _classifier(self, model: nn.Module, points: dict[str, str], shape: torch.Size, role: str) -> nn.Linear:
        channels, _, _ = shape3(shape, f"{role} tap {FINAL}")
        module = model.get_submodule(points["classifier"])
        if not isinstance(module, nn.Linear) or module.in_features != channels:
            what = (f"Linear({module.in_features}, {module.out_features})" if isinstance(module, nn.Linear)
                    else type(module).__name__)
            raise KdlabError(
                f"catkd: the {role}'s classifier '{points['classifier']}' ({what}) does not read the {channels} "
                f"channels of its '{FINAL}' tap, so its class activation maps are undefined; point the taps at the "
                f"pooled map and the Linear that reads it, or use another method")
        return module

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        s_fc = self._classifier(ctx.student, ctx.student_points, ctx.student_shapes[FINAL], "student")
        t_fc = self._classifier(ctx.teacher, ctx.teacher_points, ctx.teacher_shapes[FINAL], "teacher")
        if s_fc.out_features != t_fc.out_features:
            raise KdlabError(f"catkd: the student has {s_fc.out_features} classes, the teacher {t_fc.out_features}; "
                             f"class attention transfer needs the same classes")
        # Held outside the module tree: the student's classifier trains with the student, the teacher's is frozen;
        # neither belongs to this method's parameters or state_dict.
        object.__setattr__(self, "_student_fc", s_fc)
        object.__setattr__(self, "_teacher_fc", t_fc)

    def pooled_cams(self, feature: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
        r = self.hp["resolution"]
        return losses.class_activation_maps(F.adaptive_avg_pool2d(feature.float(), (r, r)), classifier.weight)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        cams_s = self.pooled_cams(batch.student[FINAL], self._student_fc)
        with torch.no_grad():
            cams_t = self.pooled_cams(batch.teacher[FINAL], self._teacher_fc)
        return {"catkd": losses.catkd(cams_s, cams_t, resolution=self.hp["resolution"],
                                      normalize=self.hp["normalize"])}


__all__ = ["CATKD"]
