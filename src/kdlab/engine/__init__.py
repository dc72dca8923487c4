"""Training engine: one loop (trainer), objectives, checkpoints, evaluation, logging."""

from kdlab.engine.evaluate import evaluate
from kdlab.engine.objectives import StepOutput, SupervisedObjective
from kdlab.engine.trainer import Trainer

__all__ = ["Trainer", "StepOutput", "SupervisedObjective", "evaluate"]
