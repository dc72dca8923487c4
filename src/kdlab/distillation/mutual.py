"""Deep Mutual Learning's objective (Zhang et al. 2018): a cohort of N >= 2 students trained together.

Each student k minimises CE + (its variant's) KL from its peers' predictions: DML averages KL(p_l || p_k)
over the peers l != k; DML_e uses KL from the peers' average prediction. Peers' predictions are constants for
student k, so one backward pass over the summed losses gives every student exactly its own gradient, and one
SGD over all parameters equals one SGD per student with the same hyperparameters (SGD state is per
parameter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab import losses
from kdlab.data.augment import Mix
from kdlab.engine.objectives import StepOutput, classification_loss
from kdlab.errors import KdlabError

VARIANTS = {"dml": losses.dml, "dml_e": losses.dml_ensemble}


class Ensemble(nn.Module):
    """The cohort's averaged prediction as a model: log of the mean softmax (a valid logit vector)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        object.__setattr__(self, "members", members)  # not registered: the members are saved on their own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()

    def train(self, mode: bool = True) -> Ensemble:
        for m in self.members:
            m.train(mode)
        return super().train(mode)


class MutualObjective(nn.Module):
    """Σ_k [CE(z_k, y) + weight · mimicry_k(z_1..z_N)] over the cohort; terms logged per student."""

    def __init__(self, students: list[nn.Module], names: list[str], variant: str = "dml", temperature: float = 1.0,
                 weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if len(students) < 2:
            raise KdlabError("deep mutual learning needs at least 2 students; pass --models a,b[,c...]")
        if variant not in VARIANTS:
            raise KdlabError(f"unknown DML variant '{variant}'; use one of {', '.join(VARIANTS)}")
        self.students = nn.ModuleList(students)
        self.names = names
        self.mimicry = VARIANTS[variant]
        self.temperature = temperature
        self.weight = weight
        self.label_smoothing = float(label_smoothing)  # of each student's CE term only
        self.ensemble = Ensemble(list(self.students))
        self._forwards: list = list(self.students)  # what a training step calls (compiled by compile_networks)

    def compile_networks(self, compile_fn=torch.compile) -> None:
        """--compile: each student's training forward runs compiled; evaluation and state stay the plain modules'."""
        self._forwards = [compile_fn(s) for s in self.students]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1, mix: Mix | None = None) -> StepOutput:
        logits = [forward(images) for forward in self._forwards]
        terms: dict[str, torch.Tensor] = {}
        total = 0
        for k, name in enumerate(self.names):
            ce = classification_loss(logits[k], targets, mix, self.label_smoothing)
            kl = self.weight * self.mimicry(logits, k, temperature=self.temperature)
            terms[f"{name}_ce"], terms[f"{name}_kl"] = ce.detach(), kl.detach()
            total = total + ce + kl
        return StepOutput(loss=total, terms=terms, logits=logits[0])

    def eval_models(self) -> dict[str, nn.Module]:
        return {**dict(zip(self.names, self.students, strict=True)), "ensemble": self.ensemble}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def cohort_names(model_names: list[str]) -> list[str]:
    """Unique, readable names for the students: 's0_resnet32', 's1_resnet32', ..."""
    return [f"s{i}_{name}" for i, name in enumerate(model_names)]
