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

from kdlab.data.augment import Mix


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    # Set when the objective fills the gradients itself (gradient clipping between loss terms).
    backward: Callable[..., None] | None = None
    # (task, distillation) with loss = task + distillation, for optimizers that treat their gradients apart
    # (DOT, kdlab.engine.dot); None when the loss has no such split.
    parts: tuple[torch.Tensor, torch.Tensor] | None = None

    def __iter__(self):
        """Unpacks as `loss, terms = objective(images, targets)`."""
        return iter((self.loss, self.terms))


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, mix: Mix | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """The cross-entropy term of every objective (in float32): with `label_smoothing` ε the target is
    (1 - ε)·one-hot + ε/K (Szegedy et al., CVPR 2016, arXiv:1512.00567; PyTorch's `label_smoothing`); for a batch
    mixed by kdlab.data.augment.BatchMixer, λ·CE(own label) + (1 - λ)·CE(partner's label) (mixup, CutMix)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if mix is None:
        return ce
    partner = F.cross_entropy(logits, mix.partner_targets, label_smoothing=label_smoothing)
    return mix.lam * ce + (1.0 - mix.lam) * partner


class SupervisedObjective(nn.Module):
    """Plain cross-entropy training of one model (teachers and baseline students)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = float(label_smoothing)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1, mix: Mix | None = None) -> StepOutput:
        logits = self.model(images)
        loss = classification_loss(logits, targets, mix, self.label_smoothing)
        return StepOutput(loss=loss, terms={"ce": loss.detach()}, logits=logits)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"": self.model}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
