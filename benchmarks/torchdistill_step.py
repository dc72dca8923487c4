"""torchdistill's own KD training step, for benchmarks/reference_loop.py (PyPI `torchdistill`, the `bench` extra).

The step is the one torchdistill's CIFAR examples run (github.com/yoshitomo-matsubara/torchdistill,
`configs/sample/cifar10/kd/*-final_run.yaml` and `examples/torchvision/image_classification.py`): a
`DistillationBox` built by `get_distillation_box` from a training config, its DataLoader over a per-sample
PIL dataset (RandomCrop + RandomHorizontalFlip + ToTensor + Normalize, wrapped to yield supplementary dicts),
`forward_process` (teacher under no_grad, its `KDLoss` = alpha * CE + (1 - alpha) * T^2 * KL inside a
`WeightedSumLoss`), `post_forward_process` (backward, SGD step, zero_grad) and the example's per-step
`loss.item()` for its metric logger. Only the device (`device`: the CPU by default, or the GPU of
`reference_loop.py --device cuda`, where each batch is copied to it before `forward_process`, as the example's
training loop does), the batch and the numbers of the KD recipe are set here, to match the other loops of the
benchmark: T 4, CE 0.1 / KD 0.9 (alpha 0.1), SGD lr 0.05 momentum
0.9 weight decay 5e-4.
"""

from __future__ import annotations

import importlib.util
import time

import torch
from torch.utils.data import Dataset, RandomSampler


def available() -> bool:
    return importlib.util.find_spec("torchdistill") is not None


class PairsDataset(Dataset):
    """A (image, target, index) dataset as torchdistill's wrapper expects it: (image, target) per sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target, _ = self.dataset[index]
        return image, target


def train_config(batch_size: int, workers: int, temperature: float, ce_weight: float) -> dict:
    """The KD training config of torchdistill's CIFAR examples, as a dict, with this benchmark's numbers."""
    model = {"forward_proc": "forward_batch_only", "sequential": [], "frozen_modules": []}
    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": temperature, "alpha": ce_weight, "reduction": "batchmean"}
    return {
        "num_epochs": 1,
        "train_data_loader": {"dataset_id": "train", "requires_supp": True,
                              "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": batch_size, "num_workers": workers, "drop_last": True,
                                         "persistent_workers": workers > 0}},
        "teacher": {**model, "requires_grad": False},
        "student": {**model, "adaptations": None, "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {
            "kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }


class TorchdistillStep:
    """`run(steps)` trains `steps` batches with torchdistill's box; returns (wall seconds, CPU seconds)."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, dataset: Dataset, batch_size: int,
                 workers: int, temperature: float, ce_weight: float, device: torch.device | str = "cpu"):
        from torchdistill.core.distillation import get_distillation_box  # noqa: PLC0415 - optional dependency

        config = train_config(batch_size, workers, temperature, ce_weight)
        self.device = torch.device(device)
        self.box = get_distillation_box(teacher, student, {"train": PairsDataset(dataset)}, config,
                                        self.device, None, False, 1)
        self.box.pre_epoch_process(epoch=0)  # teacher eval, student train (torchdistill's default)
        self.iterator = None
        self.losses: list[float] = []

    def batches(self, steps: int):
        for _ in range(steps):
            batch = None
            if self.iterator is not None:
                batch = next(self.iterator, None)
            if batch is None:  # a new epoch of the persistent loader
                self.iterator = iter(self.box.train_data_loader)
                batch = next(self.iterator)
            yield batch

    def run(self, steps: int) -> tuple[float, float]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        for images, targets, supp in self.batches(steps):
            images, targets = images.to(self.device), targets.to(self.device)
            loss = self.box.forward_process(images, targets, supp)
            self.box.post_forward_process(loss=loss)
            self.losses.append(loss.item())
        if cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu
