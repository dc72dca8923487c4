"""Early warnings for runs that are failing in a way a setting explains: a student collapsed to (about) one
class (at chance after two epochs and 100 optimiser steps), or a loss that explodes.

Published defaults are kept where they were published, but some do not carry over to small runs: AT's weight of
1000 (for CIFAR's 32x32 maps) sent digits students to a single class, and MobileNetV2 / ShuffleNetV1 at lr 0.05
blow up on 8x8 inputs. The run goes on as asked; one line, once, names the likely cause and the key to change.
"""

from __future__ import annotations

import math
from typing import Any

CHANCE_FACTOR = 1.5  # test and train top-1 at most this times chance: the model is not learning the task
LOSS_GROWTH = 10.0  # train loss this many times its first epoch's value: the optimisation is diverging
# A model may sit at chance for its first few steps (a tiny training set has only a few per epoch); at chance after
# this many optimiser steps, and at least two epochs, it is not learning.
MIN_STEPS = 100


class RunHealth:
    """Looks at each epoch's record; `observe` returns a warning line the first time one applies, else None."""

    def __init__(self, num_classes: int, method: str | None, lr: float, steps_per_epoch: int = 0):
        self.chance = 100.0 / max(1, num_classes)
        self.steps_per_epoch = steps_per_epoch  # 0: unknown, then five epochs stand for enough steps
        self.method = (method or "").split("+")[0] or None
        self.lr = lr
        self.first_loss: float | None = None
        self.warned = False

    def observe(self, epoch: int, record: dict[str, Any]) -> str | None:
        loss, train, test = record.get("train_loss"), record.get("train_top1"), record.get("test_top1")
        if self.first_loss is None and _finite(loss):
            self.first_loss = float(loss)
        if self.warned:
            return None
        warning = self._exploding(epoch, loss, record) or self._collapsed(epoch, train, test)
        self.warned = warning is not None
        return warning

    def _exploding(self, epoch: int, loss: Any, record: dict[str, Any]) -> str | None:
        grew = (_finite(loss) and self.first_loss is not None and self.first_loss > 0
                and loss > LOSS_GROWTH * self.first_loss)
        if not (record.get("diverged") or not _finite(loss) or grew):
            return None
        what = "its outputs are not finite" if record.get("diverged") or not _finite(loss) else \
            f"its training loss grew from {self.first_loss:.3g} to {loss:.3g}"
        return (f"kdlab: warning: epoch {epoch}: {what}; the learning rate is likely too high for this model and "
                f"input size (MobileNetV2/ShuffleNet on 8x8 inputs, for example): lower optim.lr (now {self.lr:g})")

    def _collapsed(self, epoch: int, train: Any, test: Any) -> str | None:
        enough = epoch * self.steps_per_epoch >= MIN_STEPS if self.steps_per_epoch else epoch >= 5
        if epoch < 2 or not enough or not (_finite(train) and _finite(test)):
            return None
        limit = CHANCE_FACTOR * self.chance
        if train > limit or test > limit:
            return None
        cause = (f"a distillation weight too large for this run (the published method.{self.method}.weight is for "
                 f"its paper's data); lower method.{self.method}.weight, or optim.lr") if self.method else \
            "a learning rate too high or too low for this model; change optim.lr"
        return (f"kdlab: warning: epoch {epoch}: the model is at chance (train {train:.1f}%, test {test:.1f}%, "
                f"chance {self.chance:.1f}%), as if it predicted one class; likely {cause}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
