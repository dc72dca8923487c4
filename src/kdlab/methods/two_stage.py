"""Two-stage methods: AB, FSP and FT (an init stage before the main phase; METHODS.md §13, §14, §16).

`kdlab distill` first trains each method's `init_modules` on `init_forward`'s loss alone for
`--init-epochs` epochs (RepDistiller: 30, SGD at the base LR, no CE), then runs the main phase, where
`forward` gives the method's term (AB and FSP: none, i.e. CE only, as RepDistiller). FT's paraphraser
(and MHGD's attention network in relation.py) is trained in the init stage and frozen afterwards:
`FrozenAfterInit` holds that logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method, deepest_stage, matched_stages
from kdlab.methods.connectors import ConvConnector, resize_to


def _shape3(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """(C, H, W) of a probed 4-d tap, or a one-line error for a flat tap."""
    if len(shape) != 3:
        raise KdlabError(f"{where} has shape {tuple(shape)}, not a (C, H, W) feature map; tap a convolutional "
                         f"stage output instead")
    return int(shape[0]), int(shape[1]), int(shape[2])


class FrozenAfterInit(Method):
    """A method whose `frozen_in_main` submodules are trained in the init stage and frozen in the main phase.

    Frozen = `requires_grad` off and eval mode kept through `train()`. DistillationLoss.set_phase does not
    tell methods about the phase yet, so `forward` freezes lazily on the first main-phase step (the
    optimizer may still hold the parameters, but they get no gradient, so SGD skips them) and
    `init_forward` unfreezes; `set_phase` is the hook an engine can call instead.
    """

    frozen_in_main: ClassVar[tuple[str, ...]] = ()
    _frozen = False

    def _frozen_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.frozen_in_main]

    def freeze(self) -> None:
        if not self._frozen:
            for module in self._frozen_modules():
                module.requires_grad_(False)
                module.eval()
            self._frozen = True

    def unfreeze(self) -> None:
        if self._frozen:
            for module in self._frozen_modules():
                module.requires_grad_(True)
                module.train(self.training)
            self._frozen = False

    def set_phase(self, phase: str) -> None:
        self.unfreeze() if phase == "init" else self.freeze()

    def train(self, mode: bool = True) -> FrozenAfterInit:
        super().train(mode)
        if self._frozen:
            for module in self._frozen_modules():
                module.eval()
        return self


# ------------------------------------------------------------------------------------------------- AB


class _Resize(nn.Module):
    """Parameter-free connector for equal channel counts: only the spatial size is adapted."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(int(v) for v in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.size)


@register
class AB(Method):
    """Activation-boundary distillation (Heo et al., AAAI 2019; METHODS.md §14).

    Init stage: the student and per-stage connectors are trained on the alternative-L2 loss between
    connector(student pre-ReLU stage) and the teacher's pre-ReLU stage at the matched stages, stage
    weights ¼, ½, 1 (deepest 1), summed and divided by B inside `kdlab.losses.ab`, times `init_weight`
    3/1000 (official and RepDistiller), margin 1. Connector: 1x1 conv (no bias) + BN, He-normal init,
    identity when the channels match (official), resized to the teacher's map if the sizes differ.
    Main phase (`main`): 'ce' (default, RepDistiller: CE only, connectors unused, `-b` has no effect) or
    'kd' (official CIFAR-10 script: `weight`·KL(σ_T(z_t) ‖ σ_T(z_s)) batch-mean with T = 3 and no T², CE
    weight 0). The teacher stays in eval mode in both stages (RepDistiller; the official init runs it in
    train mode).
    """

    name = "ab"
    paper = ("Heo et al. Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons. "
             "AAAI 2019 (arXiv:1811.03233)")
    defaults = {"weight": 1.0, "init_weight": 3e-3, "margin": 1.0, "main": "ce", "temperature": 3.0}
    ce_weight = 1.0
    has_init_stage = True
    mains = ("ce", "kd")

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hp["main"] not in self.mains:
            raise KdlabError(f"method.ab.main must be 'ce' (RepDistiller) or 'kd' (official), got {self.hp['main']!r}")
        self.ce_weight = 0.0 if self.hp["main"] == "kd" else 1.0  # the official KD stage has no CE term

    def needs_teacher_logits(self) -> bool:
        return self.hp["main"] == "kd"

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_stages, self.teacher_stages = matched_stages(student_points, teacher_points, pre_teacher=True,
                                                                  pre_student=True)
        return list(self.student_stages), list(self.teacher_stages)

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_stages, self.teacher_stages, strict=True):
            s_shape = _shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            t_shape = _shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")
            same = s_shape[0] == t_shape[0]
            self.connectors.append(_Resize(t_shape[1:]) if same else ConvConnector(s_shape, t_shape))

    def connected(self, batch: DistillBatch) -> list[torch.Tensor]:
        return [conn(batch.student[n]) for conn, n in zip(self.connectors, self.student_stages, strict=True)]

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        t = [batch.teacher[n] for n in self.teacher_stages]
        return {"ab": self.hp["init_weight"] * losses.ab(self.connected(batch), t, margin=self.hp["margin"])}

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if self.hp["main"] == "ce":
            return {}
        temperature = self.hp["temperature"]
        kl = losses.kd(batch.student_logits, batch.teacher_logits, temperature=temperature) / temperature**2
        return {"ab_kd": kl}


# ------------------------------------------------------------------------------------------------ FSP


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
    """Flow-of-solution-procedure matrices (Yim et al., CVPR 2017; METHODS.md §16), RepDistiller protocol.

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
            c_s, h_s, w_s = _shape3(ctx.student_shapes[s_name], f"student tap {s_name}")
            c_t = _shape3(ctx.teacher_shapes[t_name], f"teacher tap {t_name}")[0]
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


# ------------------------------------------------------------------------------------------------- FT


def _conv_stack(channels: Sequence[int], transposed: bool = False) -> nn.Sequential:
    """3x3 (transposed) convs, stride 1, padding 1, with bias and LeakyReLU(0.1) after each (official FT)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [conv(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=True), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT paraphraser (official `Models/FeatureProjection.py`): encoder C→C→kC→kC, decoder kC→kC→C→C
    (transposed convs), LeakyReLU(0.1) after every layer including the last, no BN."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack((channels, channels, factor_channels, factor_channels))
        self.decoder = _conv_stack((factor_channels, factor_channels, channels, channels), transposed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register
class FT(FrozenAfterInit):
    """Factor transfer (Kim, Park, Kwak, NeurIPS 2018; METHODS.md §13), the authors' formula
    (Jangho-Kim/Factor-Transfer-pytorch), not RepDistiller's AT-style variant.

    Init stage: a paraphraser (encoder/decoder of 3x3 convs, rate k = 0.5, LeakyReLU 0.1, no BN) on the
    teacher's deepest stage is trained alone on the L1 reconstruction mean|P(F_t) − F_t| (`init_modules`
    = the paraphraser; official: 5 epochs; RepDistiller: 30). Main phase: the paraphraser is frozen (eval,
    no gradient); a translator (the encoder's three convs, C_s→C_s→kC_t→kC_t, trainable with the student)
    on the student's deepest stage gives φ_s, resized to the teacher factor's spatial size if needed, and
    the loss is `weight`·mean|φ_s/‖φ_s‖ − φ_t/‖φ_t‖| over per-sample flattened factors. Defaults: weight
    β = 500, rate 0.5 (official `--beta 500 --rate 0.5`; RepDistiller uses 200 with its variant), CE 1.
    """

    name = "ft"
    paper = ("Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer. "
             "NeurIPS 2018 (arXiv:1802.04977)")
    defaults = {"weight": 500.0, "rate": 0.5}
    ce_weight = 1.0
    has_init_stage = True
    uses_teacher_logits = False
    frozen_in_main = ("paraphraser",)

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        self.student_tap, self.teacher_tap = deepest_stage(student_points), deepest_stage(teacher_points)
        return [self.student_tap], [self.teacher_tap]

    def build(self, ctx: BuildContext) -> None:
        self.taps(ctx.student_points, ctx.teacher_points)
        c_s = _shape3(ctx.student_shapes[self.student_tap], f"student tap {self.student_tap}")[0]
        c_t, h_t, w_t = _shape3(ctx.teacher_shapes[self.teacher_tap], f"teacher tap {self.teacher_tap}")
        if not 0 < self.hp["rate"] <= 4:
            raise KdlabError(f"method.ft.rate must be in (0, 4], got {self.hp['rate']}; use the official 0.5")
        factor = max(1, int(c_t * self.hp["rate"]))
        self.factor_size = (h_t, w_t)
        self.paraphraser = Paraphraser(c_t, factor)
        self.translator = _conv_stack((c_s, c_s, factor, factor))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        self.unfreeze()
        t = batch.teacher[self.teacher_tap]
        return {"ft_paraphraser": losses.paraphraser_reconstruction(self.paraphraser(t), t)}

    def factors(self, batch: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(student factor, teacher factor): translator output at the factor's size, frozen encoder output."""
        with torch.no_grad():
            teacher = self.paraphraser.encoder(batch.teacher[self.teacher_tap])
        student = resize_to(self.translator(batch.student[self.student_tap]), teacher.shape[-2:])
        return student, teacher

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        self.freeze()
        student, teacher = self.factors(batch)
        return {"ft": losses.ft(student, teacher)}


__all__ = ["AB", "FSP", "FT", "FrozenAfterInit", "Paraphraser"]
