"""The Method base class: declared taps + optional connectors + a pure loss from kdlab.losses.

A method is a small nn.Module. It declares which intermediate outputs (taps) of the student and the
teacher it reads, builds its connectors once the tap shapes are known (`build`), and maps a
`DistillBatch` to named loss terms (`forward`). The engine multiplies the terms by the method's `weight`
(and `scale(epoch)` for warm-ups) and adds cross-entropy. Nothing outside the method knows its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from kdlab.data.augment import Mix
from kdlab.engine.objectives import classification_loss
from kdlab.errors import KdlabError, closest
from kdlab.methods.taps import LOGITS


@dataclass
class BuildContext:
    """What a method may look at while building connectors: the models and their probed tap shapes."""

    student: nn.Module
    teacher: nn.Module
    student_points: dict[str, str]  # available symbolic taps -> module paths
    teacher_points: dict[str, str]
    student_shapes: dict[str, torch.Size] = field(default_factory=dict)  # shapes without the batch dim
    teacher_shapes: dict[str, torch.Size] = field(default_factory=dict)
    num_classes: int = 0
    train_targets: torch.Tensor | None = None  # labels of the (possibly fractioned) training set (CRD's memory)
    train_indices: torch.Tensor | None = None  # their positions in the full training set (= batch.indices values)
    epochs: int = 0
    # The per-channel (mean, std) with which the inputs were normalised, images = (pixels in [0, 1] - mean) / std,
    # for methods that transform images in pixel space (MLKD's strong view); None where the caller did not say.
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


@dataclass
class DistillBatch:
    """One step's inputs to a method. Teacher tensors are constants (captured without autograd)."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    targets: torch.Tensor
    indices: torch.Tensor | None
    epoch: int
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    # Views of each image in the outputs above (a method's `expand_batch`, e.g. SSKD's 4 rotations): the rows are
    # laid out view-major, rows [0, B) being the batch as loaded; `targets` and `indices` hold its B images.
    views: int = 1
    # The recipe's cross-entropy setting: the batch's mixing (mixup/CutMix, None when unmixed) and label smoothing,
    # for methods that put a CE term on a head of their own (`task_loss`).
    mix: Mix | None = None
    label_smoothing: float = 0.0

    def task_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The recipe's CE of `logits` (B rows, the batch as loaded): mixed and smoothed as the engine's CE term."""
        return classification_loss(logits, self.targets, self.mix, self.label_smoothing)


class Method(nn.Module):
    """Base class of distillation methods; subclasses set the class attributes and `forward`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    # Hyperparameters with the paper's / authors' defaults; 'weight' is the outer weight of the method.
    defaults: ClassVar[dict[str, Any]] = {"weight": 1.0}
    # Hyperparameters that must be > 0 (temperatures, ...); checked with the others when the method is created.
    positive: ClassVar[tuple[str, ...]] = ()
    ce_weight: ClassVar[float] = 1.0  # default cross-entropy weight when this method leads
    teacher_train_mode: ClassVar[bool] = False  # True where the authors run the teacher's BN in train mode
    uses_teacher_logits: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = True  # False for teacher-free methods (Tf-KD virtual teacher)
    student_tap_names: ClassVar[tuple[str, ...]] = ()
    teacher_tap_names: ClassVar[tuple[str, ...]] = ()
    # Two-stage methods (FitNet hints, FT paraphraser, AB, FSP) train `init_modules` on `init_forward`'s loss
    # for `--init-epochs` epochs before the main phase (no cross-entropy in that stage).
    has_init_stage: ClassVar[bool] = False
    # Submodules (attribute names) that the init stage trains and the main phase freezes: no gradient, eval
    # mode kept through `train()` (FT's paraphraser, MHGD's attention network). `DistillationLoss` does the
    # freezing, for every teacher's copy of the method, so a method only names them.
    frozen_in_main: ClassVar[tuple[str, ...]] = ()
    # KD-SVD and MHGD clip their gradient per parameter to ‖∇CE‖·sigmoid(epoch), epoch 0-indexed as in the
    # authors' code (github.com/sseung0703/KD_methods_with_TF, .../MHGD), so 0.5·‖∇CE‖ in the first epoch.
    clip_to_ce: ClassVar[bool] = False
    # Hyperparameters counted in epochs -> the run length their default was published for (DKD's warm-up of 20
    # epochs in mdistiller's 240-epoch CIFAR recipe). A run of another length scales the default (see
    # `fit_to_run`); a value the user sets is kept.
    epoch_hparams: ClassVar[dict[str, int]] = {}
    # Methods that train on several views of each image (SSKD: 4 rotations) set `views` and return the view-major
    # batch from `expand_batch`; `DistillationLoss` runs both networks on it, computes CE on the first view and
    # gives every other method of a combination the first view only (docs/architecture.md#methods).
    views: ClassVar[int] = 1
    # The optimizer the method trains with when it is more than a loss (DOT: 'dot', kdlab.engine.dot); None:
    # the run's optim.optimizer.
    optimizer: ClassVar[str | None] = None

    def __init__(self, **hparams: Any):
        super().__init__()
        self.hp = self.check_hparams(hparams)
        self.given = frozenset(hparams)  # the hyperparameters set explicitly, not defaulted

    def fit_to_run(self, epochs: int) -> None:
        """Scale the defaulted `epoch_hparams` to a run of `epochs` epochs (0: length unknown, keep them)."""
        for key, reference in self.epoch_hparams.items():
            if key not in self.given and epochs > 0 and epochs != reference and self.hp[key] > 0:
                self.hp[key] = max(1, int(self.defaults[key] * epochs / reference + 0.5))

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `hparams`, with unknown names and wrong types rejected in one line."""
        values = dict(cls.defaults)
        for key, value in hparams.items():
            if key not in cls.defaults:
                raise KdlabError(
                    f"method '{cls.name}' has no hyperparameter '{key}'{closest(key, cls.defaults)}; "
                    f"its hyperparameters are: {', '.join(f'{k}={v}' for k, v in cls.defaults.items())}")
            default = cls.defaults[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok and isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
                    ok = False
                if ok:
                    value = type(default)(value)
            else:
                ok = True
            if not ok:
                raise KdlabError(f"method.{cls.name}.{key} must be like {default!r}, got {value!r}")
            values[key] = value
        for key in cls.positive:
            if not values[key] > 0:
                raise KdlabError(f"method.{cls.name}.{key} must be > 0, got {values[key]!r}; "
                                 f"use e.g. {cls.defaults[key]!r}")
        return values

    @property
    def weight(self) -> float:
        return float(self.hp["weight"])

    def taps(self, student_points: dict[str, str], teacher_points: dict[str, str]) -> tuple[list[str], list[str]]:
        """Symbolic taps this method reads from the student and the teacher (LOGITS needs no hook)."""
        return list(self.student_tap_names), list(self.teacher_tap_names)

    def needs_teacher_logits(self) -> bool:
        return self.uses_teacher_logits

    def build(self, ctx: BuildContext) -> None:
        """Create connectors from the probed shapes; called once before training."""

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """Modules whose parameters the init stage trains (default: the student and this method's connectors)."""
        return [student, self]

    def set_phase(self, phase: str) -> None:
        """Called when the run switches between the 'init' and 'main' phases; `frozen_in_main` modules are
        frozen by `DistillationLoss`, so most methods need nothing here."""

    def expand_batch(self, images: torch.Tensor) -> torch.Tensor:
        """The (views·N, ...) batch both networks see, rows [0, N) being `images` (only called when views > 1)."""
        return images

    def init_forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        """Loss terms of the init stage (only called when `has_init_stage`)."""
        raise NotImplementedError

    def scale(self, epoch: int) -> float:
        """Extra factor on the method's loss in `epoch` (1-indexed), e.g. a linear warm-up."""
        return 1.0

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class EmbeddingMethod(Method):
    """A method reading the pooled embeddings of both networks (their classifiers' input), not the logits."""

    uses_teacher_logits = False
    student_tap_names = ("embedding",)
    teacher_tap_names = ("embedding",)


__all__ = ["Method", "EmbeddingMethod", "BuildContext", "DistillBatch", "LOGITS"]
