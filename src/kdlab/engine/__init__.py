"""Training engine: one loop (trainer), objectives, checkpoints, evaluation, logging."""

from .evaluate import evaluate
from .objectives import StepOutput, SupervisedObjective
from .trainer import Trainer

__all__ = ["Trainer", "StepOutput", "SupervisedObjective", "evaluate"]
