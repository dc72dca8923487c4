"""Nothing kdlab reads can run code: every path that opens a checkpoint loads weights only.

A checkpoint with a pickled `__reduce__` payload (here: one that would create a marker file) must be
refused with one line on each path, and the payload must not run. kdlab's own checkpoints load with a plain
`torch.load(..., weights_only=True)`.
"""

import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from kdlab.cli import main

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--quiet", "data.fraction=0.3"]


class Payload:
    """Unpickling this calls os.mkdir(marker): the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "--model", "resnet8", "--out", str(out), *FAST]) == 0
    return out


def poison(checkpoint, marker):
    """The same checkpoint with a code payload added: a valid kdlab file plus one malicious object."""
    state = torch.load(checkpoint, weights_only=True)
    state["extra"] = {"note": Payload(marker)}
    torch.save(state, checkpoint)


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_own_checkpoints_load_weights_only(trained):
    for name in ("last.pt", "best.pt"):
        state = torch.load(trained / name, weights_only=True)
        assert state["arch"]["model"] == "resnet8" and state["epoch"] == 1
        assert isinstance(state["rng"]["numpy"][1], torch.Tensor)  # no ndarray in the file


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    from kdlab.engine import checkpoint as ckpt

    np.random.seed(5)
    np.random.rand(7)
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "rng.pt")
    expected = (np.random.rand(3), torch.rand(3))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert np.array_equal(np.random.rand(3), expected[0]) and torch.equal(torch.rand(3), expected[1])


def test_checkpoints_with_the_older_numpy_rng_state_still_load(tmp_path):
    """kdlab 0.1 kept numpy's RNG state as an ndarray: those plain arrays are allowed, nothing else."""
    from kdlab.engine import checkpoint as ckpt

    torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    state = ckpt.load(tmp_path / "old.pt")
    assert isinstance(state["rng"]["numpy"][1], np.ndarray)


@pytest.mark.parametrize("path", ["eval", "distill", "resume", "calibration", "sweep", "teacher-weights"])
def test_a_checkpoint_with_code_is_refused_on_every_loading_path(path, trained, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    poison(run_dir / "last.pt", marker)
    bad = str(run_dir / "last.pt")
    if path == "eval":
        args = ["eval", "--checkpoint", bad, "--data", "digits"]
    elif path == "distill":
        args = ["distill", "--teacher", bad, "--student", "resnet8", "--method", "kd", "--out",
                str(tmp_path / "kd"), *FAST]
    elif path == "resume":
        args = ["train", "--model", "resnet8", "--out", str(run_dir), "--resume", *FAST]
    elif path == "calibration":
        args = ["calibration", "--run", str(run_dir), "--out", str(tmp_path / "cal.png")]
    elif path == "teacher-weights":
        args = ["distill", "--teacher-model", "resnet8", "--teacher-weights", bad, "--student", "resnet8",
                "--method", "kd", "--out", str(tmp_path / "kd"), *FAST]
    else:
        sweep = {"out": str(tmp_path / "sweep"), "data": "digits", "seeds": [0],
                 "fractions": [0.3], "config": {"optim": {"epochs": 1}, "data": {"batch_size": 128}},
                 "teachers": {"given": {"model": "resnet8", "checkpoint": bad}},
                 "students": ["resnet8"], "methods": {"kd": {}}}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        args = ["sweep", str(tmp_path / "sweep.yaml"), "--quiet"]
    code, err = run(args, capsys)
    assert not marker.exists(), "the checkpoint's code ran"
    assert code != 0
    assert "Python code references" in err and "Traceback" not in err, err
    if path != "sweep":
        assert err.count("\n") == 1 and err.startswith("kdlab: error:"), err


def test_a_kdlab_checkpoint_given_as_outside_weights_says_to_pass_it_as_teacher(trained, tmp_path, capsys):
    code, err = run(["distill", "--teacher-model", "resnet8", "--teacher-weights", str(trained / "best.pt"),
                     "--student", "resnet8", "--method", "kd", "--out", str(tmp_path / "kd"), *FAST], capsys)
    assert code == 2 and "pass it as --teacher" in err and "weights_only" not in err, err
