"""Device-resident in-memory datasets (data.on_device): the same batches as the host path, without a copy per step.

On the CPU `on_device=True` runs the device-resident code (whole-epoch draws, gather, crop_at and flip on the resident
tensors) and `on_device=False` the host path (per-batch index_select, random_crop, random_flip), so comparing them
here compares the two implementations; tests/data/test_gpu_data.py repeats the comparison on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from kdlab import data
from kdlab.config import build
from kdlab.data.memory import InMemoryDataset, TensorLoader, resolve_on_device
from kdlab.errors import KdlabError


def dataset(n: int = 50, channels: int = 3, size: int = 8, padding: int = 2) -> InMemoryDataset:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return InMemoryDataset(name="tiny", images=images, targets=torch.arange(n) % 5, num_classes=5,
                           class_names=[str(i) for i in range(5)], mean=(0.4,) * channels, std=(0.2,) * channels,
                           crop_padding=padding, flip=True)


def batches(loader: TensorLoader, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for s, t in zip(x, y, strict=True):
            assert s.dtype == t.dtype and s.shape == t.shape
            assert torch.equal(s, t)


@pytest.mark.parametrize("kwargs", [
    dict(shuffle=True, augment=True),  # random crop + flip, a partial last batch
    dict(shuffle=True, augment=True, drop_last=True),
    dict(shuffle=True, augment=True, fixed_augmentation=True),
    dict(shuffle=True, augment=True, randaugment=(2, 9)),
    dict(shuffle=False, augment=False, pad_shards=False, channels_last=True),  # a test loader
    dict(shuffle=True, augment=True, num_replicas=3, rank=2),
])
def test_device_resident_batches_equal_the_host_path(kwargs) -> None:
    data_set = dataset()
    host = TensorLoader(data_set, batch_size=16, seed=11, on_device=False, **kwargs)
    resident = TensorLoader(data_set, batch_size=16, seed=11, on_device=True, **kwargs)
    assert not host.on_device and resident.on_device
    for epoch in (1, 2):
        a, b = batches(host, epoch), batches(resident, epoch)
        assert_same_batches(a, b)
    if kwargs["augment"]:  # the comparison is not vacuous: augmentation changed the images
        plain = TensorLoader(data_set, batch_size=16, seed=11, on_device=True,
                             **{**kwargs, "augment": False, "fixed_augmentation": False})
        assert not torch.equal(torch.cat([x[0] for x in b]), torch.cat([x[0] for x in batches(plain, 2)]))
    if kwargs.get("channels_last"):
        assert b[0][0].is_contiguous(memory_format=torch.channels_last)


def test_resident_copy_is_made_once_and_follows_a_replaced_dataset() -> None:
    data_set = dataset()
    loader = TensorLoader(data_set, batch_size=16, on_device=True)
    first = loader.resident()
    batches(loader, 1)
    assert loader.resident() is first  # one copy for every epoch
    loader.dataset = data_set.subset(torch.arange(10))  # what --eval-subset does to a test loader
    images, targets, indices = loader.resident()
    assert images.shape[0] == 10 and torch.equal(indices, torch.arange(10))
    assert len(batches(loader, 1)) == 1


def test_on_device_values_and_auto() -> None:
    assert resolve_on_device("auto", "cpu") is False and resolve_on_device("auto", "cuda") is True
    assert resolve_on_device("true", "cpu") is True and resolve_on_device(False, "cuda") is False
    assert resolve_on_device("False", "cuda") is False
    with pytest.raises(KdlabError, match="data.on_device 'sometimes' is not one of auto, true, false"):
        resolve_on_device("sometimes", "cpu")


def test_config_key_accepts_auto_true_false() -> None:
    assert build([]).data.on_device == "auto"
    assert build([{"data": {"on_device": True}}]).data.on_device == "true"
    assert build([{"data": {"on_device": "false"}}]).data.on_device == "false"
    with pytest.raises(KdlabError, match="data.on_device 'gpu' is not one of auto, true, false"):
        build([{"data": {"on_device": "gpu"}}])


def test_build_loaders_passes_on_device() -> None:
    train, test, _ = data.build_loaders("digits", batch_size=32, on_device="true")
    assert train.on_device and test.on_device
    train, test, _ = data.build_loaders("digits", batch_size=32)  # auto on the CPU: the host path
    assert not train.on_device and not test.on_device


def test_a_run_resumes_with_another_on_device_setting() -> None:
    from kdlab.config import to_dict
    from kdlab.engine.trainer import resume_conflicts

    saved = to_dict(build([{"data": {"on_device": "false"}}]))
    assert resume_conflicts(saved, to_dict(build([{"data": {"on_device": "true"}}]))) == []  # the same batches
    assert resume_conflicts(saved, to_dict(build([{"data": {"decode": "gpu"}}]))) == ["data.decode: 'cpu' -> 'gpu'"]
