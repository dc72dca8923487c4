"""FT: Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018
(arXiv:1802.04977).

The authors' formula and paraphraser (github.com/Jangho-Kim/Factor-Transfer-pytorch `Models/FeatureProjection.py`,
`train_Paraphraser.py`, `train_student.py`), not the AT-style variant of github.com/HobbitLong/RepDistiller
(`distiller_zoo/FT.py`). Loss, keys and defaults: docs/methods.md#ft.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlab import losses
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.connectors import resize_to
from kdlab.methods.stages import deepest_stage, shape3


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
class FT(Method):
    """Factor transfer (Kim, Park, Kwak, NeurIPS 2018), the authors' formula
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
        c_s = shape3(ctx.student_shapes[self.student_tap], f"student tap {self.student_tap}")[0]
        c_t, h_t, w_t = shape3(ctx.teacher_shapes[self.teacher_tap], f"teacher tap {self.teacher_tap}")
        if not 0 < self.hp["rate"] <= 4:
            raise KdlabError(f"method.ft.rate must be in (0, 4], got {self.hp['rate']}; use the official 0.5")
        factor = max(1, int(c_t * self.hp["rate"]))
        self.factor_size = (h_t, w_t)
        self.paraphraser = Paraphraser(c_t, factor)
        self.translator = _conv_stack((c_s, c_s, factor, factor))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        t = batch.teacher[self.teacher_tap]
        return {"ft_paraphraser": losses.paraphraser_reconstruction(self.paraphraser(t), t)}

    def factors(self, batch: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(student factor, teacher factor): translator output at the factor's size, frozen encoder output."""
        with torch.no_grad():
            teacher = self.paraphraser.encoder(batch.teacher[self.teacher_tap])
        student = resize_to(self.translator(batch.student[self.student_tap]), teacher.shape[-2:])
        return student, teacher

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student, teacher = self.factors(batch)
        return {"ft": losses.ft(student, teacher)}


__all__ = ["FT", "Paraphraser"]
