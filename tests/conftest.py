"""Shared test setup: small thread counts (tests run two at a time on 2 cores) and the real datasets.

Tests on real data are marked ``@pytest.mark.real_data("cifar100", ...)`` and take the ``real_data_root``
fixture: the folder in $KDLAB_DATA, checked for the named datasets' files; the test skips without them. With
KDLAB_REQUIRE_REAL_DATA=1 (set by .ci/run) any skipped real-data test fails the session instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# The files each dataset's loader reads, under the data root.
REAL_DATA_FILES = {
    "cifar100": [f"cifar-100-python/{name}" for name in ("train", "test", "meta")],
    "mnist": [f"MNIST/raw/{split}-{kind}-idx{dim}-ubyte.gz" for split in ("train", "t10k")
              for kind, dim in (("images", 3), ("labels", 1))],
}
_skipped_real_data: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_data(*datasets): needs these real datasets under $KDLAB_DATA "
                                       f"(one of {', '.join(REAL_DATA_FILES)})")


@pytest.fixture
def real_data_root(request: pytest.FixtureRequest) -> Path:
    """$KDLAB_DATA, holding every file of the datasets named in the test's real_data marker; else skip."""
    marker = request.node.get_closest_marker("real_data")
    names = marker.args if marker else ()
    unknown = [n for n in names if n not in REAL_DATA_FILES]
    if not names or unknown:
        pytest.fail(f"mark the test @pytest.mark.real_data(...) with datasets from {sorted(REAL_DATA_FILES)}")
    root = os.environ.get("KDLAB_DATA")
    if not root:
        pytest.skip(f"real {'/'.join(names)} data: set KDLAB_DATA to the folder holding it (e.g. /path/to/data)")
    missing = [f for n in names for f in REAL_DATA_FILES[n] if not (Path(root) / f).is_file()]
    if missing:
        pytest.skip(f"real data: KDLAB_DATA={root} lacks {', '.join(missing)}")
    return Path(root)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in the controller for its workers' reports too (pytest-xdist forwards them), so the list is complete.
    if report.skipped and "real_data" in report.keywords:
        _skipped_real_data.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (os.environ.get("KDLAB_REQUIRE_REAL_DATA") == "1" and _skipped_real_data
            and not hasattr(session.config, "workerinput")):  # decided once, by the controller
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if os.environ.get("KDLAB_REQUIRE_REAL_DATA") == "1" and _skipped_real_data:
        terminalreporter.write_line(f"FAILED: KDLAB_REQUIRE_REAL_DATA=1 but {len(_skipped_real_data)} real-data "
                                    f"test(s) skipped (KDLAB_DATA={os.environ.get('KDLAB_DATA')!r}): "
                                    + ", ".join(_skipped_real_data), red=True)


@pytest.fixture(scope="session")
def digits_resnet8(tmp_path_factory) -> Path:
    """best.pt of a resnet8 trained for 2 epochs on digits (DIGITS_FAST): a teacher, or a student to fine-tune."""
    from cli_flags import DIGITS_FAST
    from kdlab.cli import main

    out = tmp_path_factory.mktemp("digits-resnet8") / "run"
    assert main(["train", "--model", "resnet8", "--epochs", "2", "--out", str(out), *DIGITS_FAST]) == 0
    return out / "best.pt"


@pytest.fixture
def whole_and_resumed(tmp_path, interrupt_in_epoch):
    """`whole_and_resumed(args)`: the CLI run `args` (train/distill/mutual, without --out) once uninterrupted and
    once killed as epoch 2 starts, then resumed by `kdlab <command> --out DIR --resume`; returns both last.pt states
    (whole, resumed), whose weights a lossless resume makes equal. The run directories are tmp_path/whole, /killed."""
    from kdlab.cli import main

    def run(args: list[str]) -> tuple[dict, dict]:
        assert main([*args, "--out", str(tmp_path / "whole")]) == 0
        interrupt_in_epoch(2)
        assert main([*args, "--out", str(tmp_path / "killed")]) == 130
        interrupt_in_epoch(None)
        assert main([args[0], "--out", str(tmp_path / "killed"), "--resume", "--quiet"]) == 0
        return tuple(torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("whole", "killed"))

    return run


@pytest.fixture
def interrupt_in_epoch(monkeypatch):
    """`interrupt_in_epoch(n)`: the next runs stop with Ctrl-C as epoch n starts (as a kill would), until
    `interrupt_in_epoch(None)` lets them train again."""
    from kdlab.engine.trainer import Trainer

    original = Trainer.train_epoch

    def arm(epoch):
        def interrupted(self, current):
            if current == epoch:
                raise KeyboardInterrupt
            return original(self, current)

        monkeypatch.setattr(Trainer, "train_epoch", original if epoch is None else interrupted)

    return arm
