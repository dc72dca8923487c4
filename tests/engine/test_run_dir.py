"""--out that cannot hold a run (below a file, not writable): one `kdlab: error:` line before any training."""

from __future__ import annotations

import os

import pytest

from kdlab.cli import main

ARGS = ["train", "--data", "digits", "--epochs", "1", "--quiet", "data.fraction=0.3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "somefile.txt").write_text("not a folder")
    code, _, err = run([*ARGS, "--out", str(tmp_path / "somefile.txt" / "run")], capsys)
    assert code == 2 and _one_line(err), err
    assert "somefile.txt" in err and "--out" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run([*ARGS, "--out", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2 and _one_line(err), err
    assert str(locked / "run") in err and "--out" in err


def test_unwritable_out_is_one_line_also_for_root(tmp_path, capsys, monkeypatch):
    # As root the permission bits do not stop writes, so the check that the folder is writable is what is tested.
    locked = tmp_path / "locked"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path).startswith(str(locked))
                        else real_access(path, mode, **kw))
    code, _, err = run([*ARGS, "--out", str(locked)], capsys)
    assert code == 2 and _one_line(err), err
    assert "not writable" in err and not (locked / "last.pt").exists()
