"""On a CUDA GPU (pytest -m gpu; skipped without one): a bf16 + channels_last KD step, the fused optimizer against the
unfused one, and no host synchronisation inside the training steps (torch.cuda.set_sync_debug_mode).

tests/engine/test_fused_optimizer.py and tests/engine/test_step_sync.py check the same code on the CPU.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdlab import models
from kdlab.config import Config
from kdlab.data.memory import InMemoryDataset, TensorLoader
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.trainer import Trainer, make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "no CUDA GPU here: run pytest -m gpu on a GPU machine (benchmarks/gpu_check.sh)"))]
CUDA = torch.device("cuda")
STEPS = 5


def cifar_like(n: int = STEPS * 64) -> InMemoryDataset:
    g = torch.Generator().manual_seed(0)
    return InMemoryDataset(name="synthetic", images=torch.randint(0, 256, (n, 3, 32, 32), generator=g,
                                                                   dtype=torch.uint8),
                           targets=torch.arange(n) % 100, num_classes=100, class_names=[str(i) for i in range(100)],
                           mean=(0.5, 0.49, 0.44), std=(0.27, 0.26, 0.28), crop_padding=4, flip=True)


def kd_trainer(tmp_path, precision: str, channels_last: bool, log_every: int = 50) -> Trainer:
    data = cifar_like()
    torch.manual_seed(0)
    teacher = models.create("resnet20", 100).to(CUDA).eval()
    student = models.create("resnet8", 100).to(CUDA)
    if channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    objective = DistillationLoss(teacher, student, method="kd", input_shape=(3, 32, 32), train_targets=data.targets,
                                 epochs=1, num_classes=100).to(CUDA)
    objective.set_phase("main")
    config = Config(device="cuda", precision=precision, channels_last=channels_last, log_every=log_every)
    config.optim.epochs = 1
    loader = TensorLoader(data, 64, shuffle=True, augment=True, device=CUDA, channels_last=channels_last)
    return Trainer(config, objective, loader, None, tmp_path, {}, CUDA, quiet=True)


def test_bf16_channels_last_kd_step_gives_a_finite_loss(tmp_path) -> None:
    trainer = kd_trainer(tmp_path, "bf16", True)
    assert trainer.train_loader.on_device and trainer.optimizer.defaults.get("fused") is True
    record = trainer.train_epoch(1)
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert record["images_per_sec"] > 0


def test_no_host_synchronisation_inside_the_steps(tmp_path) -> None:
    """Steps after the first (which is logged) run under sync_debug_mode 'error': any host wait raises."""
    trainer = kd_trainer(tmp_path, "bf16", True, log_every=10**6)
    train_step, count = trainer.train_step, [0]

    def strict_step(*args, **kwargs):
        count[0] += 1
        if count[0] == 1:
            return train_step(*args, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.train_step = strict_step
    trainer.train_epoch(1)
    assert count[0] == STEPS


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_fused_step_equals_the_unfused_step(kind) -> None:
    """The same gradients into make_optimizer's fused optimizer and torch's per-tensor loop: the same weights."""
    torch.manual_seed(0)
    model = models.create("resnet8", 10).to(CUDA)
    reference = copy.deepcopy(model)
    config = Config()
    config.optim.optimizer = kind
    fused = make_optimizer(list(model.parameters()), config, 0.05)
    assert fused.defaults.get("fused") is True
    o = config.optim
    unfused = (torch.optim.SGD(reference.parameters(), lr=0.05, momentum=o.momentum, weight_decay=o.weight_decay,
                               foreach=False) if kind == "sgd" else
               torch.optim.AdamW(reference.parameters(), lr=0.05, betas=tuple(o.betas), weight_decay=o.weight_decay,
                                 foreach=False))
    g = torch.Generator(device=CUDA).manual_seed(1)
    for _ in range(3):  # momentum and Adam's moments carry over steps
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            p.grad = torch.randn(p.shape, device=CUDA, generator=g) * 0.1
            q.grad = p.grad.clone()
        fused.step()
        unfused.step()
    # fp32 arithmetic in another order (one kernel vs per-tensor loops): torch.testing's float32 tolerances.
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1.3e-6, atol=1e-5, msg=name)
