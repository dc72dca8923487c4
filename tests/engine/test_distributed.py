"""Scale-out on CPU with gloo: 2 processes, through the engine directly and through the real `torchrun` path.

What the tests prove:
* DDP through kdlab's Trainer trains exactly like one process on the same global batch (gradients averaged,
  also on the KD-SVD path that sets gradients itself; data sharded; train logs and test metrics reduced),
  for models without BatchNorm (whose per-rank batch statistics would legitimately differ).
* `torchrun -m kdlab train|distill` writes one run directory from rank 0 only, whose test_top1 is exactly
  what `kdlab eval` measures on its best.pt; a 2-process run resumes in 2 processes and in 1 process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.config import Config
from kdlab.data import InMemoryDataset, TensorLoader, build_loaders
from kdlab.distillation.loss import DistillationLoss
from kdlab.engine.evaluate import evaluate
from kdlab.engine.logging import read_metrics
from kdlab.engine.trainer import Trainer
from kdlab.runner.checkpoints import load_trained_model

TESTS = Path(__file__).resolve().parent
WORLD = 2
GLOBAL_BATCH = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TAPS = {"student": {"stage1": "stage1", "stage2": "stage2"}, "teacher": {"stage1": "stage1", "stage2": "stage2"}}


# --------------------------------------------------------------------------------------------- engine level
class TinyNet(nn.Module):
    """Two conv stages and a linear head, no BatchNorm: DDP on any split of the batch equals one process."""

    def __init__(self, width: int = 6, classes: int = 4):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(width * 16, classes)  # flattened: the class is where the bright quadrant is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage2(self.stage1(x)).flatten(1))


def _dataset(n: int, train: bool) -> InMemoryDataset:
    """4 classes of 8x8 images: a bright quadrant per class plus noise (learnable in a few steps)."""
    g = torch.Generator().manual_seed(1 if train else 2)
    targets = torch.arange(n) % 4
    images = torch.randint(0, 90, (n, 1, 8, 8), generator=g)
    for c in range(4):
        r, q = divmod(c, 2)
        images[targets == c, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 120
    return InMemoryDataset("tiny", images.to(torch.uint8), targets, 4, list("abcd"), (0.3,), (0.3,), train=train)


def _initial_models() -> tuple[TinyNet, TinyNet]:
    """Teacher and student as every rank (and the reference) builds them: the same initial weights."""
    torch.manual_seed(0)
    return TinyNet(), TinyNet()


def _train_tiny(method: str, run_dir: Path, ctx=None) -> None:
    """2 epochs of `method` distillation of a TinyNet, on `ctx`'s shard of the global batch."""
    world, rank = (ctx.world_size, ctx.rank) if ctx is not None else (1, 0)
    teacher, student = _initial_models()
    objective = DistillationLoss(teacher, student, method=method, taps=TAPS, input_shape=(1, 8, 8), ce_weight=1.0)
    config = Config()
    config.optim.epochs, config.optim.lr, config.optim.schedule = 2, 0.1, "constant"
    config.log_every = 1
    common = dict(seed=3, num_replicas=world, rank=rank)
    train = TensorLoader(_dataset(256, True), GLOBAL_BATCH // world, shuffle=True, **common)
    test = TensorLoader(_dataset(101, False), 16, pad_shards=False, **common)  # uneven shards: 51 + 50
    arch = {"model": "tiny", "num_classes": 4, "in_channels": 1, "image_size": 8, "data": "tiny"}
    Trainer(config, objective, train, test, run_dir, arch, torch.device("cpu"), distributed=ctx, quiet=True).fit()


def _worker(rank: int, init_file: str, out: str) -> None:
    """One rank of the engine-level test (run in a subprocess): the methods, then `kdlab train` on a run."""
    import contextlib
    import io
    from datetime import timedelta

    import torch.distributed as dist

    from kdlab.engine.distributed import current

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    out_dir = Path(out)
    for method in ("kd", "kdsvd", "dot"):
        _train_tiny(method, out_dir / method, current())
    # The CLI inside this group: rank 0 finds the run, every rank reports the error and exits with 2.
    before = (out_dir / "kd" / "last.pt").read_bytes() if rank == 0 else b""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--data", "digits", "--model", "resnet8", "--out", str(out_dir / "kd"), "--quiet"])
    unchanged = rank != 0 or (out_dir / "kd" / "last.pt").read_bytes() == before
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"code": code, "error": stderr.getvalue(),
                                                          "unchanged": unchanged}))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """The same training in 2 processes (DDP, batch 16 each) and in this process (batch 32)."""
    base = tmp_path_factory.mktemp("engine")
    two, one = base / "two", base / "one"
    for method in ("kd", "kdsvd", "dot"):
        (two / method).mkdir(parents=True)  # the runner's job (rank 0) in real runs
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_distributed as t; "
            f"t._worker(int(sys.argv[1]), {str(base / 'init')!r}, {str(two)!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    for method in ("kd", "kdsvd", "dot"):  # meanwhile, the 1-process reference
        (one / method).mkdir(parents=True)
        _train_tiny(method, one / method)
    for p in procs:
        try:
            output, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process engine run did not finish in 120 s")
        assert p.returncode == 0, output[-3000:]
    return one, two


def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


# KD is smooth in its inputs: the two batch splits agree to float32 rounding, 1.5e-6 of the update (bound 1e-4).
# KD-SVD is not: the student vector matched per sample (argmax |cosine|), the teacher vector's sign and the
# clip branch (norm > bound) are discrete, and a rounding difference that flips one of them moves that step by
# a finite amount. Perturbing the initial weights by 1e-7, 1e-6 or 1e-5 (relative; float32's ulp is 6e-8) moved
# the final weights by at most 2.1% of their change over the run, ||a - b|| / ||a - a0|| per tensor (18 draws):
# it saturates (a few flips), so other CPUs' rounding lands in that range (AVX512: 1.2% of max|w|). Summing
# instead of averaging the hand-made gradients (a world-size factor of 2) moves every tensor by 48-55%.
# Bound 10%: 5x above the rounding spread, 5x below that bug. Metrics: losses and NLL within 5% (spread <= 0.6%;
# the bug moves the epoch-1 loss by 26%); top-1 and ECE, percent of 101 or 256 images, within 1 point.
# DOT is KD's loss under another optimizer: KD's tolerances (its two gradients are averaged over the ranks apart).
TOLERANCES = {"kd": {"update": 1e-4, "loss": 1e-5, "percent": 1e-3},
              "dot": {"update": 1e-4, "loss": 1e-5, "percent": 1e-3},
              "kdsvd": {"update": 0.1, "loss": 5e-2, "percent": 1.0}}


@pytest.mark.parametrize("method", ["kd", "kdsvd", "dot"])
def test_two_processes_train_like_one_on_the_same_global_batch(engine_runs, method):
    tol = TOLERANCES[method]
    one, two = (r / method for r in engine_runs)
    ref, got = read_metrics(one), read_metrics(two)
    assert [r["epoch"] for r in got] == [1, 2] == [r["epoch"] for r in ref]
    for r, g in zip(ref, got, strict=True):
        term = "kd" if method == "dot" else method  # DOT's loss is KD's
        for key in ["train_loss", "train_loss_ce", f"train_loss_{term}", "test_nll"]:
            assert _close(r[key], g[key], tol["loss"]), (method, r["epoch"], key, r[key], g[key])
        for key in ["train_top1", "test_top1", "test_ece"]:
            assert abs(r[key] - g[key]) <= tol["percent"], (method, r["epoch"], key, r[key], g[key])
    assert ref[-1]["test_top1"] > 25.0 + 10  # it learned something: the comparison is not between two no-ops
    a = torch.load(one / "last.pt", weights_only=True)["model"]
    b = torch.load(two / "last.pt", weights_only=True)["model"]
    start = _initial_models()[1].state_dict()
    assert a.keys() == b.keys() == start.keys()  # saved unwrapped: no 'module.' prefix
    for name in a:
        update = float((a[name] - start[name]).norm())
        assert update > 0, name  # every tensor trained: the bound below is not vacuous
        assert float((a[name] - b[name]).norm()) <= tol["update"] * update, (name, update)
    # Every one of the 101 test images counted exactly once over the 2 uneven shards.
    bins = json.loads((two / "reliability.json").read_text())["models"][""]["count"]
    assert sum(bins) == 101


def test_rank_zero_decides_about_the_run_directory_for_all(engine_runs):
    _, two = engine_runs
    reports = [json.loads((two / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["code"] for r in reports] == [2, 2] and reports[0]["unchanged"]
    assert reports[0]["error"] == reports[1]["error"] and "already holds a run" in reports[0]["error"]
    assert sorted(p.name for p in two.iterdir()) == ["dot", "kd", "kdsvd", "rank0.json", "rank1.json"]


# --------------------------------------------------------------------------------------------- torchrun
def torchrun(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m kdlab ARGS` (a free port is picked by --standalone)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "kdlab", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


# scale_lr: lr 0.05 (the digits recipe) x world size; constant schedule: resuming with more epochs changes nothing.
FAST = ["--data", "digits", "--threads", "1", "--quiet", "optim.schedule=constant", "optim.scale_lr=true"]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """A real 2-process `kdlab train` of one epoch, run from an empty folder."""
    cwd = tmp_path_factory.mktemp("torchrun")
    result = torchrun(["train", "--model", "resnet8", "--epochs", "1", "--out", "t2p", *FAST], cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return cwd


def test_torchrun_train_writes_one_run_that_kdlab_eval_confirms(torchrun_run, capsys):
    cwd = torchrun_run
    run = cwd / "t2p"
    assert [p.name for p in cwd.iterdir()] == ["t2p"]  # no other directory created by any rank
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "progress.log", "reliability.json", "summary.json", "tb"]
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer: rank 0's
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1]  # logged once, not once per rank
    assert records[0]["lr"] == pytest.approx(0.05 * WORLD)  # optim.scale_lr
    state = torch.load(run / "best.pt", weights_only=True)
    assert len(state["rng_ranks"]) == WORLD and not any(k.startswith("module.") for k in state["model"])
    # The same weights on the full test set in one process: the reduced metrics are that model's metrics.
    _, test_loader, info = build_loaders("digits", test_batch_size=100)
    model, _ = load_trained_model(run / "best.pt", info)
    result = evaluate(model, test_loader, torch.device("cpu"), num_classes=info.num_classes)
    assert result.count == 450
    assert result.top1 == records[0]["test_top1"]  # a count of correct images: equal, not close
    assert _close(result.nll, records[0]["test_nll"], 1e-4) and _close(result.ece, records[0]["test_ece"], 1e-4)
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", "digits"]) == 0
    printed = re.search(r"top-1 ([\d.]+)%", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == round(records[0]["test_top1"], 2)


def test_torchrun_run_resumes_in_two_processes_and_in_one(torchrun_run, tmp_path):
    run = tmp_path / "t2p"
    shutil.copytree(torchrun_run / "t2p", run)
    first = read_metrics(run)[0]
    resumed = torchrun(["train", "--model", "resnet8", "--epochs", "1", "--extend-to", "2", "--resume", "--out",
                        str(run), *FAST], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first
    assert records[1]["train_loss"] < first["train_loss"]  # continued from the trained weights, not from scratch
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    # The 2-process checkpoint continues in one process (the data order follows the new world size); the
    # scaled LR follows the new world size too.
    assert main(["train", "--model", "resnet8", "--extend-to", "3", "--resume", "--out", str(run), *FAST]) == 0
    final = read_metrics(run)
    assert [r["epoch"] for r in final] == [1, 2, 3] and final[:2] == records
    assert [r["lr"] for r in final] == pytest.approx([0.1, 0.1, 0.05])
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_torchrun_distill_with_kd(torchrun_run, tmp_path):
    teacher = torchrun_run / "t2p" / "best.pt"
    result = torchrun(["distill", "--teacher", str(teacher), "--student", "resnet8", "--method", "kd", "--epochs",
                       "1", "--out", "kd", "data.fraction=0.5", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["kd"]
    (record,) = read_metrics(tmp_path / "kd")
    assert {"train_loss_ce", "train_loss_kd", "test_top1"} <= set(record)
    assert _close(record["train_loss"], record["train_loss_ce"] + record["train_loss_kd"], 1e-4)
    student, arch = load_trained_model(tmp_path / "kd" / "best.pt")
    assert arch["model"] == "resnet8" and isinstance(student, nn.Module)


def test_sync_bn_is_refused_on_cpu_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--device", "cpu", "--out", str(tmp_path / "bn"), "sync_bn=true"])
    err = capsys.readouterr().err
    assert code == 2 and "SyncBatchNorm" in err and "--device cuda" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bn").exists()


def test_dot_is_not_kd_under_another_name(engine_runs):
    """The DOT comparison above is not KD's again: same loss, other momenta, other weights."""
    one, _ = engine_runs
    kd = torch.load(one / "kd" / "last.pt", weights_only=True)
    dot = torch.load(one / "dot" / "last.pt", weights_only=True)
    assert {k for s in dot["optimizer"]["state"].values() for k in s} == {"task_buffer", "distill_buffer"}
    assert any(not torch.allclose(kd["model"][k], dot["model"][k], atol=1e-3) for k in kd["model"])
