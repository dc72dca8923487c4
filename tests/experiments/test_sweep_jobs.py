"""`kdlab sweep --jobs N`: grid points in N processes at once, each with cores/N threads; students wait for their
teacher; the runs are ordinary run directories (the same results as a serial sweep with the same thread count)."""

from __future__ import annotations

import contextlib
import io
import json

import yaml

from kdlab.cli import main
from kdlab.experiments.parallel import threads_per_job

SWEEP = {"data": "digits", "fractions": [0.3], "seeds": [0], "config": {"data": {"batch_size": 128}, "optim":
         {"epochs": 1}, "threads": 1}, "teachers": {"resnet8": {"config": {"optim": {"epochs": 1}}}},
         "students": ["resnet8"], "methods": {"baseline": {}, "kd": {}}}
RUNS = ["digits/teachers/resnet8/s0", "digits-f0.3/students/resnet8/s0", "digits-f0.3/resnet8-resnet8/kd/s0"]


def sweep(tmp_path, name, *flags):
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump({"out": str(tmp_path / name), **SWEEP}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["sweep", str(file), "--quiet", *flags])
    return code, out.getvalue()


def last(root, run):
    return json.loads((root / run / "summary.json").read_text())["last"]


def test_two_jobs_run_the_grid_like_one(tmp_path):
    code, printed = sweep(tmp_path, "parallel", "--jobs", "2")
    assert code == 0, printed
    assert f"2 at a time, {threads_per_job(2)} thread(s) each" in printed
    # the student waits for its teacher: the teacher is done before the kd run starts
    lines = printed.splitlines()
    teacher_done = next(i for i, line in enumerate(lines) if RUNS[0] in line and "done" in line)
    kd_start = next(i for i, line in enumerate(lines) if RUNS[2] in line and "start" in line)
    assert teacher_done < kd_start
    code, printed = sweep(tmp_path, "serial")
    assert code == 0, printed
    if threads_per_job(2) == 1:  # same thread count: the same arithmetic, the same numbers
        for run in RUNS:
            assert last(tmp_path / "parallel", run) == last(tmp_path / "serial", run), run
    code, printed = sweep(tmp_path, "parallel", "--jobs", "2")  # everything done: nothing runs again
    assert code == 0 and "start" not in printed


def test_jobs_below_one_is_one_line(tmp_path, capsys):
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"out": str(tmp_path / "s"), **SWEEP}))
    assert main(["sweep", str(file), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


def test_serial_done_lines_give_each_runs_own_seconds(tmp_path, monkeypatch):
    """`--jobs 1` reports every run's duration, not the time since the sweep started."""
    import itertools

    from kdlab.experiments import sweep as sweep_module

    clock = itertools.count(0.0, 50.0)  # every reading 50 s after the previous one
    monkeypatch.setattr(sweep_module.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(sweep_module, "run_train",
                        lambda config, resume, quiet: {"last": {"test_top1": 1.0}, "best_top1": 1.0, "best_epoch": 1})
    runs = [sweep_module.PlannedRun(name=f"d/students/m/s{i}", kind="baseline", run_dir=tmp_path / f"s{i}",
                                    config=None) for i in range(3)]
    lines: list[str] = []
    assert sweep_module._execute(runs, True, lines.append) == {}
    assert [line.rsplit("[", 1)[1] for line in lines if "done:" in line] == ["50 s]"] * 3


def test_parallel_done_line_gives_the_runs_own_seconds(monkeypatch):
    """`--jobs N`: a finished run's line counts from when that run started, not from the sweep's start."""
    import queue
    from types import SimpleNamespace

    from kdlab.experiments import parallel

    run = SimpleNamespace(name="d/students/m/s0", state="new")
    results = queue.Queue()
    results.put((run.name, None, {"last": {"test_top1": 2.0}, "best_top1": 2.0, "best_epoch": 3}))
    running = {run.name: (SimpleNamespace(join=lambda: None), run, 1000.0)}  # started at t = 1000 s
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: 1042.0)
    lines: list[str] = []
    done: set[str] = set()
    parallel._collect(results, running, {}, done, lines.append)
    assert lines == ["    d/students/m/s0 done: last top-1 2.00%, best 2.00% (epoch 3) [42 s]"]
    assert done == {run.name} and not running
