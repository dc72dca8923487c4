"""Feature-map methods: FitNet, AT, NST, VID, OD (overhaul), KD-SVD.

Each method reads stage outputs of both networks (paired by `matched_stages`, deepest stages aligned),
adapts the student where the method has a connector, and calls the pure loss in `kdlab.losses`.
Connectors are built from the probed tap shapes, so every method runs for same- and cross-architecture
pairs. Defaults follow ../shared/METHODS.md (§3 table; §5, §6, §7, §10, §15, §17) and the RepDistiller /
mdistiller CIFAR-100 settings, where these methods are trained with cross-entropy weight 1 and no KD term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method, matched_stages
from kdlab.methods.connectors import ConvConnector

# Children with these names are residual shortcuts, not the main path that feeds a ReLU.
_SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})


class _StageMethod(Method):
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

    def features(self, batch: DistillBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([batch.student[n] for n in self.student_stages], [batch.teacher[n] for n in self.teacher_stages])


def _shape3(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """(C, H, W) of a probed 4-d tap, or a one-line error for a flat tap."""
    if len(shape) != 3:
        raise KdlabError(f"{where} has shape {tuple(shape)}, not a (C, H, W) feature map; tap a convolutional "
                         f"stage output instead")
    return int(shape[0]), int(shape[1]), int(shape[2])


# --------------------------------------------------------------------------------------------- FitNet


class ConvReg(nn.Module):
    """RepDistiller's FitNet regressor (`models/util.py` ConvReg): conv, BN(C_t), ReLU (METHODS.md §5 c).

    Conv by size: H_s = 2H_t → 3x3 stride 2 pad 1; 2H_s = H_t → 4x4 transposed conv stride 2 pad 1;
    H_s >= H_t → kernel (1+H_s-H_t) x (1+W_s-W_t) (large for large size gaps, as in RepDistiller).
    RepDistiller tests only H; here both H and W must fit the rule. Conv bias and init: PyTorch defaults.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        c_s, h_s, w_s = (int(v) for v in student_shape)
        c_t, h_t, w_t = (int(v) for v in teacher_shape)
        if (h_s, w_s) == (2 * h_t, 2 * w_t):
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif (2 * h_s, 2 * w_s) == (h_t, w_t):
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"ConvReg does not apply to student {h_s}x{w_s} -> teacher {h_t}x{w_t}")
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = nn.ReLU()

    @staticmethod
    def applies(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> bool:
        _, h_s, w_s = (int(v) for v in student_shape)
        _, h_t, w_t = (int(v) for v in teacher_shape)
        return (h_s, w_s) == (2 * h_t, 2 * w_t) or (2 * h_s, 2 * w_s) == (h_t, w_t) or (h_s >= h_t and w_s >= w_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def hint_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """ConvReg where its size rule applies; otherwise (student smaller, not by exactly 2x) our extension:
    1x1 conv + BN + ReLU, bilinearly resized to the teacher's size. Both end in a ReLU: the hint is post-ReLU."""
    if ConvReg.applies(student_shape, teacher_shape):
        return ConvReg(student_shape, teacher_shape)
    return ConvConnector(student_shape, teacher_shape, relu=True)


@register
class FitNet(_StageMethod):
    """FitNet hint loss, one-stage form of RepDistiller/mdistiller (METHODS.md §5): MSE(r(F_s), F_t).

    Hint = one matched stage, `hint_stage` indexing the matched stages (default -2, the second-to-last:
    f2 of three stages = RepDistiller `--hint_layer 2`, mdistiller `HINT_LAYER 2`). r = `hint_regressor`.
    Defaults: weight 100 (RepDistiller `-b 100`, mdistiller `FEAT_WEIGHT 100`), CE 1, no KD term. The
    paper's two-stage protocol (hint pre-training, then KD) is not what the benchmarks run.
    """

    name = "fitnet"
    paper = "Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015 (arXiv:1412.6550)"
    defaults = {"weight": 100.0, "hint_stage": -2}
    ce_weight = 1.0

    def stage_taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        s, t = matched_stages(student_points, teacher_points)
        i = self.hp["hint_stage"]
        if not -len(s) <= i < len(s):
            raise KdlabError(f"method.fitnet.hint_stage={i} is out of range for the {len(s)} matched stages "
                             f"({', '.join(s)}); use a value from {-len(s)} to {len(s) - 1}")
        return [s[i]], [t[i]]

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        s_shape = _shape3(ctx.student_shapes[self.student_stages[0]], f"student tap {self.student_stages[0]}")
        t_shape = _shape3(ctx.teacher_shapes[self.teacher_stages[0]], f"teacher tap {self.teacher_stages[0]}")
        self.regressor = hint_regressor(s_shape, t_shape)

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        (s,), (t,) = self.features(batch)
        return {"fitnet": losses.fitnet(self.regressor(s), t)}


# --------------------------------------------------------------------------------------------- AT, NST


@register
class AT(_StageMethod):
    """Attention transfer, code form (METHODS.md §6): Σ_stages mean (q_s - q_t)² over matched f1..fN.

    No connector (channel-agnostic; the larger map is pooled). Defaults β = 1000, p = 2 (official README,
    RepDistiller `-b 1000`, mdistiller `FEAT_WEIGHT 1000`, `AT.P 2`), CE 1.
    """

    name = "at"
    paper = "Zagoruyko, Komodakis. Paying More Attention to Attention. ICLR 2017 (arXiv:1612.03928)"
    defaults = {"weight": 1000.0, "p": 2.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        return {"at": losses.at(s, t, p=self.hp["p"])}


@register
class NST(_StageMethod):
    """Neuron selectivity transfer (METHODS.md §7): polynomial-kernel MMD² (d 2, c 0) over matched f1..fN.

    No connector (channel-agnostic). Defaults λ = 50 (RepDistiller `-b 50`, mdistiller `FEAT_WEIGHT 50`,
    official `kt_weight 50`), CE 1.
    """

    name = "nst"
    paper = ("Huang, Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. "
             "arXiv:1707.01219, 2017")
    defaults = {"weight": 50.0}
    ce_weight = 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        return {"nst": losses.nst(s, t)}


# --------------------------------------------------------------------------------------------- VID


def vid_regressor(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv C_s→C_t, ReLU, 1x1 C_t→C_t, ReLU, 1x1 C_t→C_t, no bias (RepDistiller VIDLoss, §15 c)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False),
                         nn.ReLU(), nn.Conv2d(c_out, c_out, 1, bias=False))


@register
class VID(_StageMethod):
    """Variational information distillation (METHODS.md §15): Gaussian NLL of f_t given r(f_s), per stage.

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

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        init = losses.vid_init_log_scale(self.hp["init_variance"], self.hp["eps"])
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        for s_name, t_name in zip(self.student_stages, self.teacher_stages, strict=True):
            c_s = _shape3(ctx.student_shapes[s_name], f"student tap {s_name}")[0]
            c_t = _shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")[0]
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


# --------------------------------------------------------------------------------------------- OD


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
      before the residual addition, as in mdistiller (METHODS.md §10 pitfall: an approximation);
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
class OD(_StageMethod):
    """Overhaul of feature distillation (METHODS.md §10): partial L2 between connector(student pre-ReLU)
    and the margin-clipped teacher pre-ReLU at matched stages, stage-weighted, / B.

    Connector per stage: 1x1 conv (no bias, He-normal) + BN(C_t), keeping the student's spatial size (the
    loss pools the teacher to it, as mdistiller). Margins E[x | x < 0] come from the teacher BN before
    each ReLU (`margin_batchnorm`), computed once and stored as buffers. The teacher runs in train mode
    (BN batch statistics), as the authors and mdistiller do (issue #37); the engine restores its running
    statistics after every forward. Defaults: weight 1e-3 (official /1000, mdistiller CIFAR `FEAT_WEIGHT`;
    ImageNet uses 1e-4), CE 1, no KD term.
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
        for i, (s_name, t_name) in enumerate(zip(self.student_stages, self.teacher_stages, strict=True)):
            c_s, h_s, w_s = _shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            c_t = _shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")[0]
            self.connectors.append(ConvConnector((c_s, h_s, w_s), (c_t, h_s, w_s)))
            bn = margin_batchnorm(ctx.teacher, ctx.teacher_points[t_name], c_t)
            self.register_buffer(f"margin{i}", losses.od_margin(bn.weight, bn.bias))

    @property
    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.num_stages)]

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        s = [conn(x) for conn, x in zip(self.connectors, s, strict=True)]
        return {"od": losses.od(s, t, self.margins)}


# --------------------------------------------------------------------------------------------- KD-SVD


@register
class KDSVD(_StageMethod):
    """Self-supervised KD with SVD (METHODS.md §17), RepDistiller form, on matched post-ReLU f1..fN.

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

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_stages, self.teacher_stages, strict=True):
            c_s, h_s, w_s = _shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            c_t = _shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")[0]
            same = c_s == c_t
            self.connectors.append(nn.Identity() if same else ConvConnector((c_s, h_s, w_s), (c_t, h_s, w_s)))

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s, t = self.features(batch)
        mapped = [conn(x) for conn, x in zip(self.connectors, s, strict=True)]
        try:
            return {"kdsvd": losses.kdsvd(mapped, t, k=self.hp["k"])}
        except torch.linalg.LinAlgError:
            # float32 eigh of a C x C Gram matrix of rank <= H*W can fail to converge when H*W << C (e.g. a
            # VGG teacher's 512-channel 1x1 maps on 8x8 digits): name the shapes, not a LAPACK traceback.
            pairs = ", ".join(f"{sn} {tuple(x.shape[1:])} -> {tn} {tuple(y.shape[1:])}"
                              for sn, tn, x, y in zip(self.student_stages, self.teacher_stages, s, t, strict=True))
            worst = min(t, key=lambda y: y.shape[-2] * y.shape[-1] / y.shape[1])
            raise KdlabError(
                f"kdsvd: the SVD of the stage features did not converge (student -> teacher stages, (C, H, W): "
                f"{pairs}); {worst.shape[-2]}x{worst.shape[-1]} maps with {worst.shape[1]} channels are too "
                "small for KD-SVD: train on larger images (e.g. data.image_size=32), pick a teacher whose stages "
                "keep larger maps, or use another method (mhgd, at, fitnet)") from None


__all__ = ["AT", "ConvReg", "FitNet", "KDSVD", "NST", "OD", "VID", "hint_regressor", "margin_batchnorm",
           "vid_regressor"]
