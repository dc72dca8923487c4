"""OD: Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019
(arXiv:1904.01866).

Partial L2 on pre-ReLU features with margins from the teacher's BN, as the authors'
github.com/clovaai/overhaul-distillation (`CIFAR-100/distiller.py`) and github.com/megvii-research/mdistiller
(`mdistiller/distillers/OFD.py`). Loss, keys and defaults: docs/methods.md#od.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch
from kdlab.methods.connectors import ConvConnector
from kdlab.methods.stages import StageMethod

# Children with these names are residual shortcuts, not the main path that feeds a ReLU.
_SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})


def _last_batchnorm(module: nn.Module) -> nn.BatchNorm2d | None:
    """The last BatchNorm2d registered in `module` outside shortcut branches (or `module` itself)."""
    found = None
    for name, sub in module.named_modules():
        if _SHORTCUT_NAMES.intersection(name.split(".")):
            continue
        if isinstance(sub, nn.BatchNorm2d):
            found = sub
    return found


def margin_batchnorm(model: nn.Module, path: str, channels: int) -> nn.BatchNorm2d:
    """The BatchNorm2d whose affine parameters give the OD margins of the pre-ReLU tap at `path`.

    * the tap is a BN (torchvision VGG-BN) → that BN;
    * the tap is a parameter-free hook point (zoo `preact`) → the nearest earlier sibling on the main path:
      a BN (WRN: the BN whose output is hooked), or the last BN of an earlier container; shortcut branches
      (`downsample`, `shortcut`) are skipped. For post-activation ResNets this is the last block's `bn2`,
      before the residual addition, as in mdistiller (an approximation: the ReLU follows the addition);
    * the tap is a container (MobileNetV2 group) → its last main-path BN.
    Raises KdlabError when no BN with `channels` affine channels precedes the tap.
    """
    module = model.get_submodule(path)
    bn: nn.BatchNorm2d | None = None
    if isinstance(module, nn.BatchNorm2d):
        bn = module
    elif not any(True for _ in module.parameters()):
        parent_path, _, _ = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        earlier: list[tuple[str, nn.Module]] = []
        for name, child in parent.named_children():
            if child is module:
                break
            earlier.append((name, child))
        for name, child in reversed(earlier):
            if name in _SHORTCUT_NAMES:
                continue
            bn = _last_batchnorm(child)
            if bn is not None or any(True for _ in child.parameters()):
                break  # a BN, or a layer without BN (conv) produced the tensor: stop either way
    else:
        bn = _last_batchnorm(module)
    fix = "use a teacher whose stages end in BN -> ReLU (ResNet, WRN, VGG-BN, MobileNetV2) or another method"
    if bn is None or not bn.affine:
        raise KdlabError(f"od: no affine BatchNorm2d found before the teacher's pre-ReLU tap '{path}' to compute "
                         f"the margins from; {fix}")
    if bn.num_features != channels:
        raise KdlabError(f"od: the BatchNorm2d before the teacher's pre-ReLU tap '{path}' has {bn.num_features} "
                         f"channels but the tap has {channels}, so it does not describe that tensor; {fix}")
    return bn


@register
class OD(StageMethod):
    """Overhaul of feature distillation: partial L2 between connector(student pre-ReLU) and the
    margin-clipped teacher pre-ReLU at matched stages, stage-weighted, / B.

    Connector per stage: 1x1 conv (no bias, He-normal) + BN(C_t), keeping the student's spatial size (the
    loss pools the teacher to it, as mdistiller). Margins E[x | x < 0] come from the teacher BN before
    each ReLU (`margin_batchnorm`), computed once and stored as buffers. The teacher runs in train mode
    (BN batch statistics), as the authors and mdistiller do (github.com/clovaai/overhaul-distillation/issues/37);
    the engine restores its running statistics after every forward. Defaults: weight 1e-3 (official /1000,
    mdistiller CIFAR `FEAT_WEIGHT`; ImageNet uses 1e-4), CE 1, no KD term.
    """

    name = "od"
    paper = "Heo et al. A Comprehensive Overhaul of Feature Distillation. ICCV 2019 (arXiv:1904.01866)"
    defaults = {"weight": 1e-3}
    ce_weight = 1.0
    teacher_train_mode = True
    pre_student = True
    pre_teacher = True

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.connectors = nn.ModuleList()
        self.num_stages = len(self.teacher_stages)
        for i, ((c_s, h_s, w_s), (c_t, _, _)) in enumerate(self.stage_shapes(ctx)):
            self.connectors.append(ConvConnector((c_s, h_s, w_s), (c_t, h_s, w_s)))
            bn = margin_batchnorm(ctx.teacher, ctx.teacher_points[self.teacher_stages[i]], c_t)
            self.register_buffer(f"margin{i}", losses.od_margin(bn.weight, bn.bias))

    @property
    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.num_stages)]

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        s = [conn(x) for conn, x in zip(self.connectors, s, strict=True)]
        return {"od": losses.od(s, t, self.margins)}


__all__ = ["OD", "margin_batchnorm"]
