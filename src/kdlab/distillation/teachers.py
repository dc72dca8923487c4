"""Several teachers for one DistillationLoss: the teacher_mix weights, the combined teacher and per-teacher methods.

A method that reads only the teacher's logits sees one combined teacher whose logits are T·log Σ_i w_i·σ_T(z_i)
(`mix_teacher_logits`, T = the method's temperature), so σ_T of it is the weighted mean of the teachers'
distributions and KD is exactly KD from the averaged soft targets. Every other method that reads a teacher
(features, relations) gets one instance per teacher, with its own connectors, and its terms are the
teacher_mix-weighted sum of the per-teacher terms. `TeacherMix` holds that plan; with one teacher it is empty
and hands the single batch to each method unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import methods as method_registry
from kdlab.errors import KdlabError
from kdlab.methods.base import DistillBatch, Method
from kdlab.methods.taps import LOGITS

RunMethod = Callable[[Method, DistillBatch], dict[str, torch.Tensor]]


def teacher_list(teacher: nn.Module | Sequence[nn.Module] | None) -> list[nn.Module]:
    """`teacher` as a list: [] for None, [teacher] for one model, the models of a sequence."""
    if teacher is None:
        return []
    if isinstance(teacher, nn.Module):
        return [teacher]
    return list(teacher)


def mix_weights(mix: Sequence[float] | None, count: int) -> list[float]:
    """teacher_mix checked against the number of teachers and normalised to sum 1 (None: equal weights)."""
    if mix is None:
        return [1.0 / count] * count
    weights = [float(w) for w in mix]
    if len(weights) != count:
        raise KdlabError(f"teacher_mix has {len(weights)} weights for {count} teachers; give one weight per "
                         f"teacher, e.g. teacher_mix=[{', '.join(['0.5'] * count)}]")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise KdlabError(f"teacher_mix weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def mix_teacher_logits(teacher_logits: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                       temperature: float = 1.0) -> torch.Tensor:
    """Combined logits T·log Σ_i w_i·σ_T(z_i) of several teachers: σ_T of them is the weighted mean distribution.

    So KD against them is exactly KD from the averaged soft targets (`losses.kd_from_probs` on
    `losses.average_teacher_probs`), and logit-based methods (DKD, DIST, LS-KD, Tf-KD self) get a well-defined
    teacher. Computed as a logsumexp of log w_i + log σ_T(z_i), which stays finite where the mean underflows.
    """
    check_teacher_classes([int(z.shape[-1]) for z in teacher_logits])
    weights = mix_weights(weights, len(teacher_logits))
    log_w = torch.tensor(weights, dtype=torch.float32, device=teacher_logits[0].device).log().view(-1, 1, 1)
    log_p = torch.stack([F.log_softmax(z.float() / temperature, dim=1) for z in teacher_logits])
    return temperature * torch.logsumexp(log_w + log_p, dim=0)


def check_teacher_classes(counts: Sequence[int]) -> None:
    """One-line error unless every teacher predicts the same number of classes."""
    if len(set(int(c) for c in counts)) > 1:
        raise KdlabError(f"the teachers predict different numbers of classes ({', '.join(map(str, counts))}); "
                         f"use teachers trained on the same dataset and classes")


class TeacherMix:
    """How an objective's methods meet its teachers: which read the combined teacher, which run per teacher.

    Args:
        methods: the objective's methods (the instances for the first teacher).
        teacher_taps: the teacher taps each of `methods` declared (same order); a method that reads a teacher's
            logits and nothing else is `mixed` when there are several teachers.
        weights: the normalised teacher_mix, one weight per teacher ([] without teachers).
        hparams: the methods' hyperparameters, to create the further instances alike.

    Attributes:
        mixed: names of the methods that read the combined teacher (empty with fewer than two teachers).
        copies: one ModuleDict {name: instance} per teacher after the first, holding a new instance of every
            teacher-reading method that is not mixed. The objective registers this ModuleList as a submodule
            (its parameters are trained and saved with the objective's); it is empty with one teacher.
    """

    def __init__(self, methods: Sequence[Method], teacher_taps: Sequence[Sequence[str]], weights: Sequence[float],
                 hparams: Mapping[str, Mapping[str, Any]]):
        self.weights = list(weights)
        several = len(self.weights) > 1
        self.mixed: set[str] = {m.name for m, taps in zip(methods, teacher_taps, strict=True)
                                if several and m.needs_teacher and m.needs_teacher_logits() and set(taps) <= {LOGITS}}
        self.copies = nn.ModuleList(
            nn.ModuleDict({m.name: method_registry.create(m.name, **hparams.get(m.name, {}))
                           for m in methods if self._per_teacher(m)})
            for _ in self.weights[1:])

    def _per_teacher(self, m: Method) -> bool:
        return m.needs_teacher and m.name not in self.mixed

    def instances(self, m: Method) -> list[Method]:
        """`m`'s instance for each teacher when it runs per teacher, else [m]."""
        if not len(self.copies) or not self._per_teacher(m):
            return [m]
        return [m, *(copies[m.name] for copies in self.copies)]

    def terms(self, m: Method, batches: Sequence[DistillBatch], run: RunMethod) -> dict[str, torch.Tensor]:
        """`run`'s terms of method `m`: on the combined teacher, teacher_mix-weighted per teacher, or on the one
        batch. `batches` holds one batch per teacher (the same student outputs, that teacher's outputs)."""
        if m.name in self.mixed:
            temperature = float(m.hp.get("temperature", 1.0))
            mixed = mix_teacher_logits([b.teacher_logits for b in batches], self.weights, temperature)
            return run(m, replace(batches[0], teacher_logits=mixed))
        instances = self.instances(m)
        if len(instances) == 1:
            return run(m, batches[0])
        terms: dict[str, torch.Tensor] = {}
        for inst, batch, weight in zip(instances, batches, self.weights, strict=True):
            for name, value in run(inst, batch).items():
                terms[name] = weight * value if name not in terms else terms[name] + weight * value
        return terms


__all__ = ["TeacherMix", "check_teacher_classes", "mix_teacher_logits", "mix_weights", "teacher_list"]
