"""Training objectives: what one step computes. The trainer loop is the same for all of them.

An objective is an nn.Module whose trainable parameters are what the optimizer updates; calling it on a
batch returns a `StepOutput` (total loss, named loss terms for logging, the logits used for training
accuracy). `kdlab.distill.DistillationLoss` is the distillation objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    # Set when the objective fills the gradients itself (gradient clipping between loss terms).
    backward: Callable[..., None] | None = None

    def __iter__(self):
        """Unpacks as `loss, terms = objective(images, targets)`."""
        return iter((self.loss, self.terms))


class SupervisedObjective(nn.Module):
    """Plain cross-entropy training of one model (teachers and baseline students)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1) -> StepOutput:
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), targets)
        return StepOutput(loss=loss, terms={"ce": loss.detach()}, logits=logits)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"": self.model}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
