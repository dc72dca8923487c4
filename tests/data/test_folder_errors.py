"""Unreadable images in ImageFolder data: one `kdlab: error:` line naming the file; data.unreadable=check|skip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdlab.cli import main
from kdlab.data.folder import IndexedImageFolder, find_unreadable
from kdlab.errors import KdlabError

# 16-pixel crops of 32x32 images, batch 4, one epoch: a few seconds on one CPU thread.
FAST = ["--data", "imagefolder", "--model", "resnet8", "--epochs", "1", "--batch-size", "4", "--quiet",
        "data.image_size=16"]


def make_folder(root, bad: bool = True):
    """train/ and val/ with classes a and b, 4 noise PNGs each; with `bad`, train/ also gets a file that is no
    image at all and a PNG cut after its header (which opens, then fails to decode)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if bad:
        (root / "train" / "a" / "notes.png").write_bytes(b"not an image")
        cut = root / "train" / "b" / "0.png"
        cut.write_bytes(cut.read_bytes()[:200])
    return [str(root / "train" / "a" / "notes.png"), str(root / "train" / "b" / "0.png")]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_mid_epoch_is_one_line_naming_it(tmp_path, capsys, workers):
    bad = make_folder(tmp_path / "d")
    code, _, err = run(["train", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *FAST,
                        f"data.workers={workers}"], capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert any(path in err for path in bad) and "data.unreadable=skip" in err


def test_check_refuses_before_training_and_skip_leaves_the_files_out(tmp_path, capsys):
    bad = make_folder(tmp_path / "d")
    code, _, err = run(["train", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "check"), *FAST,
                        "data.workers=0", "data.unreadable=check"], capsys)
    assert code == 2 and "2 of the 9 images" in err and bad[0] in err, err
    assert not (tmp_path / "check" / "last.pt").exists()
    code, _, err = run(["train", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "skip"), *FAST,
                        "data.workers=0", "data.unreadable=skip"], capsys)
    assert code == 0, err
    assert "left out 2 unreadable image(s)" in err and (tmp_path / "skip" / "last.pt").exists()


def test_unknown_unreadable_mode_is_refused(tmp_path, capsys):
    make_folder(tmp_path / "d", bad=False)
    code, _, err = run(["train", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *FAST,
                        "data.unreadable=skp"], capsys)
    assert code == 2 and "did you mean 'skip'" in err and len(err.strip().splitlines()) == 1


def test_dataset_check_and_skip(tmp_path):
    bad = make_folder(tmp_path / "d")
    assert [path for path, _ in find_unreadable(sorted(str(p) for p in (tmp_path / "d").rglob("*.png")))] == \
        sorted(bad)
    with pytest.raises(KdlabError, match="2 of the 9 images"):
        IndexedImageFolder(tmp_path / "d", train=True, image_size=16, unreadable="check")
    kept = IndexedImageFolder(tmp_path / "d", train=True, image_size=16, unreadable="skip")
    assert len(kept) == kept.full_size == 7 and kept.targets.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert all(kept[i][0].shape == (3, 16, 16) for i in range(len(kept)))  # every kept image decodes
    assert len(IndexedImageFolder(tmp_path / "d", train=False, image_size=16, unreadable="check")) == 8


def test_truncated_jpeg_is_found_although_pil_verify_passes_it(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        image.verify()  # headers only: no error
    assert [p for p, _ in find_unreadable([str(path)])] == [str(path)]
