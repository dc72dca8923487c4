"""No host synchronisation inside a training step: over an epoch, tensors are read on the host only where the
loop means to (the loss and accuracy of step 1 and of every log_every-th step, the epoch's totals at its end).

Every call that reads a tensor's value on the host (and on a GPU would wait for the device: item, float, int,
bool, tolist, numpy, index) is recorded with the step it happened in, on the CPU path, which is the GPU path's code.
"""

from __future__ import annotations

import pytest
import torch

from kdlab import models
from kdlab.config import Config
from kdlab.data.memory import InMemoryDataset, TensorLoader
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.objectives import SupervisedObjective
from kdlab.engine.trainer import Trainer

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "__index__")
STEPS = 6


def data(n: int = STEPS * 8) -> InMemoryDataset:
    g = torch.Generator().manual_seed(0)
    return InMemoryDataset(name="tiny", images=torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                           targets=torch.arange(n) % 4, num_classes=4, class_names=list("abcd"), mean=(0.5,) * 3,
                           std=(0.25,) * 3, crop_padding=1, flip=True)


def objective(kind: str, dataset: InMemoryDataset):
    torch.manual_seed(0)
    student = models.create("resnet8", 4, image_size=8)
    if kind == "train":
        return SupervisedObjective(student)
    teacher = models.create("resnet8", 4, image_size=8).eval()
    return DistillationLoss(teacher, student, method="kd", input_shape=(3, 8, 8), train_targets=dataset.targets,
                            epochs=1, num_classes=4)


def record_reads(monkeypatch, trainer: Trainer) -> list[tuple[str, int, str]]:
    """(where, step, call): where = 'step' (inside train_step), 'loop' (between steps) or 'end' (after the loop)."""
    events: list[tuple[str, int, str]] = []
    state = {"where": "loop", "step": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            events.append((state["where"], state["step"], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    train_step = trainer.train_step

    def counted_step(*args, **kwargs):
        state["step"] += 1
        state["where"] = "step"
        try:
            return train_step(*args, **kwargs)
        finally:
            state["where"] = "loop"

    monkeypatch.setattr(trainer, "train_step", counted_step)
    scheduler_step = trainer.scheduler.step

    def after_the_loop():  # train_epoch steps the LR schedule right after its last batch
        state["where"] = "end"
        scheduler_step()

    monkeypatch.setattr(trainer.scheduler, "step", after_the_loop)
    return events


@pytest.mark.parametrize("kind", ["train", "kd"])
@pytest.mark.parametrize("on_device", [False, True])
def test_an_epoch_reads_tensors_only_at_the_logged_steps(monkeypatch, tmp_path, kind, on_device) -> None:
    dataset = data()
    loader = TensorLoader(dataset, batch_size=8, shuffle=True, augment=True, on_device=on_device)
    config = Config(device="cpu", log_every=STEPS + 10)
    config.optim.epochs = 1
    obj = objective(kind, dataset)
    if kind == "kd":
        obj.set_phase("main")
    trainer = Trainer(config, obj, loader, None, tmp_path, {}, torch.device("cpu"), quiet=True)
    events = record_reads(monkeypatch, trainer)
    record = trainer.train_epoch(1)
    assert trainer.scheduler.last_epoch == 1 and record["epoch"] == 1
    inside = [e for e in events if e[0] == "step"]
    between = [e for e in events if e[0] == "loop"]
    assert inside == [], f"host reads inside train_step: {inside}"
    # Step 1 is always logged (the progress bar's first loss and accuracy); with log_every > steps no other is.
    assert sorted(between) == [("loop", 1, "__float__"), ("loop", 1, "__float__")], between
    assert any(e[0] == "end" for e in events)  # the epoch's totals are read once, after the loop
    assert len(loader) == STEPS


def test_a_logged_step_reads_its_loss(monkeypatch, tmp_path) -> None:
    """The counter sees the reads it is meant to see: log_every=2 adds the loss and accuracy of steps 2, 4, 6."""
    dataset = data()
    loader = TensorLoader(dataset, batch_size=8, shuffle=True, augment=True)
    config = Config(device="cpu", log_every=2)
    config.optim.epochs = 1
    trainer = Trainer(config, objective("train", dataset), loader, None, tmp_path, {}, torch.device("cpu"),
                      quiet=True)
    events = record_reads(monkeypatch, trainer)
    trainer.train_epoch(1)
    steps = sorted({step for where, step, _ in events if where == "loop"})
    assert steps == [1, 2, 4, 6] and not [e for e in events if e[0] == "step"]
