"""On a CUDA GPU (pytest -m gpu; skipped without one): device-resident data and nvJPEG decoding against the CPU.

tests/data/test_on_device.py and tests/data/test_batch_decode.py check the same code on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from test_batch_decode import SIZE, file_bytes, levels_to_normalised, loader, make_tree
from test_on_device import assert_same_batches, batches, dataset

from kdlab.data.decode import decode_batch, eval_batch
from kdlab.data.folder import IMAGENET_MEAN, IMAGENET_STD
from kdlab.data.memory import TensorLoader

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "no CUDA GPU here: run pytest -m gpu on a GPU machine (benchmarks/gpu_check.sh)"))]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("kwargs", [
    dict(shuffle=True, augment=True),
    dict(shuffle=True, augment=True, fixed_augmentation=True),
    dict(shuffle=False, augment=False, pad_shards=False, channels_last=True),
])
def test_device_resident_batches_equal_the_host_path_on_cuda(kwargs) -> None:
    data_set = dataset(n=300, size=32, padding=4)
    host = TensorLoader(data_set, batch_size=64, seed=5, device=CUDA, on_device=False, **kwargs)
    resident = TensorLoader(data_set, batch_size=64, seed=5, device=CUDA, **kwargs)  # auto: on for CUDA
    cpu = TensorLoader(data_set, batch_size=64, seed=5, device="cpu", on_device=False, **kwargs)
    assert resident.on_device and not host.on_device
    resident_batches = batches(resident, 3)
    assert resident_batches[0][0].device.type == "cuda" and resident.resident()[0].device.type == "cuda"
    assert_same_batches(batches(host, 3), resident_batches)  # the same kernels on the same device: bit-equal
    for (x, t, i), (y, u, j) in zip(batches(cpu, 3), resident_batches, strict=True):
        assert torch.equal(t, u.cpu()) and torch.equal(i, j.cpu())  # same order, same samples
        # Crops and flips move uint8 pixels exactly; normalising in fp32 may round differently by one ulp.
        torch.testing.assert_close(x, y.cpu(), rtol=0, atol=1e-6)


@pytest.fixture
def tree(tmp_path):
    make_tree(tmp_path / "d")
    return tmp_path / "d"


def test_nvjpeg_decoding_matches_the_cpu_decoder(tree) -> None:
    jpegs = sorted(tree.rglob("*.jpg"))
    data, paths = [file_bytes(p) for p in jpegs], [str(p) for p in jpegs]
    on_gpu, on_cpu = decode_batch(data, paths, CUDA), decode_batch(data, paths, "cpu")
    diffs = [(g.cpu().int() - c.int()).abs() for g, c in zip(on_gpu, on_cpu, strict=True)]
    assert all(g.device.type == "cuda" and g.shape == c.shape for g, c in zip(on_gpu, on_cpu))
    # torchvision's own bound for its CUDA decoder against the CPU one (test/test_image.py): mean difference < 2.
    assert all(float(d.float().mean()) < 2 for d in diffs)
    decode_levels = max(int(d.max()) for d in diffs)  # measured here, on these files
    # The evaluation batches then differ by at most that many levels, plus one of rounding (resizing is convex).
    gpu_batch = eval_batch(on_gpu, SIZE, IMAGENET_MEAN, IMAGENET_STD).cpu()
    cpu_batch = eval_batch(on_cpu, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    assert float((gpu_batch - cpu_batch).abs().max()) <= levels_to_normalised(decode_levels + 1) + 1e-5
    print(f"nvJPEG vs CPU decoder: max {decode_levels} levels, mean {max(float(d.float().mean()) for d in diffs):.3f}")


def cuda_epoch(tree, seed: int) -> list[tuple[torch.Tensor, ...]]:
    ld = loader(tree, train=True, seed=seed)
    ld.device = CUDA  # decode="gpu" on the GPU itself
    ld.set_epoch(1)
    out = list(ld)
    assert all(t.device.type == "cuda" for b in out for t in b)
    return [tuple(t.cpu() for t in b) for b in out]


def test_folder_loader_decodes_on_the_gpu_deterministically(tree) -> None:
    first, again = cuda_epoch(tree, 2), cuda_epoch(tree, 2)
    assert [tuple(b[0].shape) for b in first] == [(4, 3, SIZE, SIZE)] * 3
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
