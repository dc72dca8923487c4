"""Teacher-output caching (--cache-teacher) and fixed augmentation (data.fixed_augmentation).

End-to-end runs go through the `kdlab` command: on digits (no random augmentation, augment off) and on a
tiny CIFAR-10 the test writes (crop + flip: fixed augmentation). Teacher forwards are counted with a
forward pre-hook, per training epoch.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlab.runner.distill
from kdlab.cli import main
from kdlab.data import load
from kdlab.data.memory import TensorLoader
from kdlab.distillation.teacher_cache import TeacherCache
from kdlab.errors import KdlabError

DIGITS = ["--data", "digits", "--batch-size", "128", "--quiet"]


def write_cifar10(root: Path, per_batch: int = 32, test_size: int = 32) -> Path:
    """A CIFAR-10 python folder with random (seeded) images: 5 x per_batch training images."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for b in range(1, 6):
        dump(f"data_batch_{b}", {b"labels": rng.integers(0, 10, per_batch).tolist(),
                                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)})
    dump("test_batch", {b"labels": rng.integers(0, 10, test_size).tolist(),
                        b"data": rng.integers(0, 256, (test_size, 3072), dtype=np.uint8)})
    dump("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return root


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A digits teacher, a tiny written CIFAR-10 and a teacher on it (one epoch each)."""
    root = tmp_path_factory.mktemp("cache")
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--out", str(root / "t"), *DIGITS]) == 0
    write_cifar10(root / "data")
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--data", "cifar10", "--data-root",
                 str(root / "data"), "--batch-size", "32", "--quiet", "--out", str(root / "tc")]) == 0
    return root


@pytest.fixture
def teacher_calls(monkeypatch) -> Counter:
    """Teacher forwards per training epoch (0: before training, e.g. the cache's size probe)."""
    calls: Counter = Counter()
    epoch = {"now": 0}
    set_epoch = TensorLoader.set_epoch

    def tracking(self, value):
        epoch["now"] = int(value)
        set_epoch(self, value)

    original = kdlab.runner.distill.load_teachers

    def counting(config, info):
        epoch["now"] = 0  # a new run: nothing trained yet
        teachers = original(config, info)
        for t in teachers:
            t.register_forward_pre_hook(lambda _m, _i: calls.update([epoch["now"]]))
        return teachers

    monkeypatch.setattr(TensorLoader, "set_epoch", tracking)
    monkeypatch.setattr(kdlab.runner.distill, "load_teachers", counting)
    return calls


def distill(out: Path, teacher: Path, *extra: str, data: list[str] = DIGITS, epochs: int = 2) -> int:
    return main(["distill", "--teacher", str(teacher), "--student", "resnet8", "--epochs", str(epochs),
                 "--out", str(out), *data, *extra])


def losses(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith(("train_loss", "test_", "train_top1"))} for r in lines]


def same_weights(a: Path, b: Path) -> None:
    sa, sb = torch.load(a / "last.pt", weights_only=True), torch.load(b / "last.pt", weights_only=True)
    assert sa["model"].keys() == sb["model"].keys()
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name


# --------------------------------------------------------------------------------------------- exactness
def test_cached_equals_uncached_and_reused_across_runs(work, tmp_path, teacher_calls, capsys):
    cache = tmp_path / "cache"
    args = ["--method", "kd+at", "data.augment=false", f"cache_dir={cache}"]
    batches = 11  # ceil(1347 / 128)
    # (epoch 0: AT's shape probe when the objective is built, and the cache's own size probe)
    assert distill(tmp_path / "plain", work / "t" / "last.pt", *args) == 0
    assert (teacher_calls[1], teacher_calls[2]) == (batches, batches)

    teacher_calls.clear()
    assert distill(tmp_path / "cached", work / "t" / "last.pt", *args, "--cache-teacher") == 0
    assert (teacher_calls[1], teacher_calls[2]) == (batches, 0)  # epoch 2 runs from the cache
    assert losses(tmp_path / "cached") == losses(tmp_path / "plain")
    same_weights(tmp_path / "cached", tmp_path / "plain")
    files = list(cache.glob("*.pt"))
    assert len(files) == 1

    # A second run loads the file: the teacher never runs, and training is still the same.
    teacher_calls.clear()
    capsys.readouterr()
    assert distill(tmp_path / "again", work / "t" / "last.pt", *args, "--cache-teacher", data=DIGITS[:-1]) == 0
    assert (teacher_calls[1], teacher_calls[2]) == (0, 0)
    assert "teacher cache: loaded" in capsys.readouterr().out
    assert losses(tmp_path / "again") == losses(tmp_path / "plain")
    same_weights(tmp_path / "again", tmp_path / "plain")


def test_fixed_augmentation_cached_equals_uncached(work, tmp_path, teacher_calls):
    data = ["--data", "cifar10", "--data-root", str(work / "data"), "--batch-size", "32", "--quiet",
            "data.fixed_augmentation=true"]
    args = ["--method", "kd", f"cache_dir={tmp_path / 'cache'}"]
    assert distill(tmp_path / "plain", work / "tc" / "last.pt", *args, data=data) == 0
    assert teacher_calls == Counter({1: 5, 2: 5})
    teacher_calls.clear()
    assert distill(tmp_path / "cached", work / "tc" / "last.pt", *args, "--cache-teacher", data=data) == 0
    assert teacher_calls == Counter({0: 1, 1: 5})
    assert losses(tmp_path / "cached") == losses(tmp_path / "plain")
    same_weights(tmp_path / "cached", tmp_path / "plain")


def test_changed_teacher_or_fraction_invalidates(work, tmp_path, teacher_calls):
    cache = tmp_path / "cache"
    args = ["--method", "kd", "--cache-teacher", "data.augment=false", f"cache_dir={cache}"]
    assert distill(tmp_path / "a", work / "t" / "last.pt", *args, epochs=1) == 0
    assert len(list(cache.glob("*.pt"))) == 1
    teacher_calls.clear()
    assert distill(tmp_path / "a2", work / "t" / "last.pt", *args, epochs=1) == 0
    assert sum(teacher_calls.values()) == 0  # same key: loaded from disk, no teacher forward at all

    # Same architecture, one weight changed: a new key, the teacher runs again, a second file.
    state = torch.load(work / "t" / "last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 0.01
    torch.save(state, tmp_path / "edited.pt")
    teacher_calls.clear()
    assert distill(tmp_path / "b", tmp_path / "edited.pt", *args, epochs=1) == 0
    assert teacher_calls[1] == 11
    assert len(list(cache.glob("*.pt"))) == 2

    teacher_calls.clear()
    assert distill(tmp_path / "c", work / "t" / "last.pt", *args, "data.fraction=0.5", epochs=1) == 0
    assert teacher_calls[1] == 6  # 674 samples / 128
    assert len(list(cache.glob("*.pt"))) == 3


# --------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("extra, needles", [
    (["--data", "cifar10", "--batch-size", "32", "--method", "kd"], ["data.fixed_augmentation=true",
                                                                    "data.augment=false"]),
    (["--data", "digits", "--method", "od"], ["'od'", "train mode"]),
    (["--data", "digits", "--method", "tfkd_virtual"], ["nothing to cache", "'tfkd_virtual'"]),
    (["--data", "digits", "--method", "at", "cache_max_gb=0.000001"], ["MB", "cache_max_gb="]),
])
def test_refuses_with_one_line(work, tmp_path, capsys, extra, needles):
    teacher = work / ("tc" if "cifar10" in extra else "t") / "last.pt"
    code = main(["distill", "--teacher", str(teacher), "--student", "resnet8", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "r"), "--data-root", str(work / "data"), "--cache-teacher",
                 f"cache_dir={tmp_path / 'cache'}", *extra])
    one_line_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------- units
def test_fixed_augmentation_is_per_sample(work):
    """Each sample's view depends on (seed, index) only: not on the epoch, batch size or fraction."""
    full = load("cifar10", work / "data", train=True)
    half = full.fraction(0.5, seed=3)

    def views(dataset, batch_size, epoch, seed=0, fixed=True):
        loader = TensorLoader(dataset, batch_size, shuffle=True, augment=True, seed=seed, fixed_augmentation=fixed)
        loader.set_epoch(epoch)
        batches = list(loader)
        order = torch.cat([b[2] for b in batches])
        return order, {int(i): img for b in batches for i, img in zip(b[2], b[0], strict=True)}

    order1, a = views(full, 32, 1)
    order2, b = views(full, 7, 2)
    _, c = views(half, 16, 5)
    assert not torch.equal(order1, order2)  # the order still changes per epoch
    assert all(torch.equal(a[i], b[i]) for i in a)
    assert all(torch.equal(a[i], c[i]) for i in c)
    _, other_seed = views(full, 32, 1, seed=1)
    assert sum(not torch.equal(a[i], other_seed[i]) for i in a) > len(a) // 2
    _, random1 = views(full, 32, 1, fixed=False)
    _, random2 = views(full, 32, 2, fixed=False)
    assert sum(not torch.equal(random1[i], random2[i]) for i in a) > len(a) // 2  # unchanged default


def test_cache_unit_lazy_fill_and_disk(tmp_path):
    indices = torch.tensor([3, 5, 8, 9])
    cache = TeacherCache(indices, key="k", path=tmp_path / "c.pt")
    logits = torch.arange(8.0).view(4, 2)
    feats = {"f": torch.arange(4.0).view(4, 1, 1, 1)}
    assert cache.lookup(0, torch.tensor([3, 5])) is None
    cache.store(0, torch.tensor([5, 3]), logits[[1, 0]], {"f": feats["f"][[1, 0]]})
    hit = cache.lookup(0, torch.tensor([3, 5]))
    assert torch.equal(hit[0], logits[:2]) and torch.equal(hit[1]["f"], feats["f"][:2])
    assert cache.lookup(0, torch.tensor([3, 8])) is None and cache.lookup(0, torch.tensor([4])) is None
    assert not (tmp_path / "c.pt").exists()
    cache.store(0, torch.tensor([9, 8, 3]), logits[[3, 2, 0]], {"f": feats["f"][[3, 2, 0]]})
    assert cache.complete and (tmp_path / "c.pt").exists()

    again = TeacherCache(indices, key="k", path=tmp_path / "c.pt")
    assert again.load()
    hit = again.lookup(0, torch.tensor([9, 3]))
    assert torch.equal(hit[0], logits[[3, 0]]) and torch.equal(hit[1]["f"], feats["f"][[3, 0]])
    assert not TeacherCache(indices, key="other", path=tmp_path / "c.pt").load()  # another key: not reused
    (tmp_path / "bad.pt").write_bytes(b"not a cache")
    assert not TeacherCache(indices, key="k", path=tmp_path / "bad.pt").load()
    small = TeacherCache(indices, max_bytes=10)
    with pytest.raises(KdlabError, match="cache_max_gb"):
        small.allocate(0, logits, feats)


def test_refuses_several_processes_and_unknown_loaders():
    from types import SimpleNamespace

    from kdlab.distillation.teacher_cache import check_cacheable

    config = SimpleNamespace(method="kd", data=SimpleNamespace(augment=False, name="digits"))
    objective = SimpleNamespace(teachers=[torch.nn.Linear(1, 1)], teacher_train_mode=False)
    loader = TensorLoader(load("digits"), 64)
    check_cacheable(config, objective, loader)  # accepted
    with pytest.raises(KdlabError, match="torchrun"):
        check_cacheable(config, objective, loader, SimpleNamespace(world_size=2))
    with pytest.raises(KdlabError, match="dataset indices"):
        check_cacheable(config, objective, [(torch.zeros(1), torch.zeros(1))])


def test_key_names_each_teachers_recorded_taps():
    """The key reads what each teacher records through the recorders' public signature, one entry per teacher."""
    from types import SimpleNamespace

    from kdlab import models
    from kdlab.distillation.loss import DistillationLoss
    from kdlab.distillation.teacher_cache import cache_key_parts

    torch.manual_seed(0)
    t1, t2, student = (models.create("resnet8", 10, in_channels=1, image_size=8) for _ in range(3))
    objective = DistillationLoss([t1, t2], student, "at", input_shape=(1, 8, 8))
    config = SimpleNamespace(data=SimpleNamespace(augment=False, name="digits", fraction=None, coarse=False,
                                                  image_size=None), precision="fp32", channels_last=False)
    parts = cache_key_parts(config, objective, TensorLoader(load("digits"), 64), torch.device("cpu"))
    recorders = objective.teacher_recorders
    assert [{k: t[k] for k in ("taps", "stop_early")} for t in parts["teachers"]] == [r.signature for r in recorders]
    assert all(t["stop_early"] and t["taps"] for t in parts["teachers"]) and not parts["logits"]  # AT: maps only
    assert parts["teachers"][0]["weights"] != parts["teachers"][1]["weights"]
