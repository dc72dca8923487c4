"""kdlab export: round trips (zoo model through the CLI, a torchvision model, a model of your own), the check that
refuses a broken export, and bad input (one line, nothing overwritten)."""

import json
import sys

import pytest
import torch
from torch import nn

from kdlab import models
from kdlab.cli import main
from kdlab.deploy import export as export_module
from kdlab.deploy.export import export_model
from kdlab.deploy.load import load_model
from kdlab.deploy.runtimes import open_exported
from kdlab.deploy.samples import preprocess, random_samples
from kdlab.deploy.verify import tolerance
from kdlab.errors import KdlabError


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _round_trip(path, fmt, model, spec):
    """The written file, reopened from disk, against PyTorch at a batch size the export was not traced with."""
    x = preprocess(random_samples(spec, 5, seed=7).pixels, spec)
    with torch.inference_mode():
        reference = model(x)
    out = open_exported(path, fmt)(x)
    assert out.shape == reference.shape
    assert (out - reference).abs().max() <= tolerance(reference)


def test_zoo_model_to_onnx_through_the_cli(runs, tmp_path, capsys):
    out = tmp_path / "student.onnx"
    code, text, err = run(["export", str(runs["distill"]), "--out", str(out), "--data", "digits", "--check", "16"],
                          capsys)
    assert code == 0, err
    assert "max |logit diff|" in text and "tolerance" in text and "top-1 on the digits test split (450" in text
    meta = json.loads((tmp_path / "student.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["opset"] >= 17 and meta["dynamic_batch"] and meta["input"] == "input"
    assert meta["preprocessing"]["mean"] == [0.3053] and meta["input_shape"] == ["batch", 1, 8, 8]
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["source"].endswith("last.pt")
    assert meta["check"]["passed"] and meta["check"]["images"] == 16
    assert abs(meta["top1"]["difference_points"]) <= 0.1
    _round_trip(out, "onnx", load_model(runs["distill"]), load_model(runs["distill"]).kdlab_input)


def test_cross_quality_student_exports_at_its_resolution(runs, tmp_path, capsys):
    out = tmp_path / "cq.pt2"
    assert main(["export", str(runs["cross"]), "--format", "pt2", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "cq.pt2.json").read_text())
    assert meta["input_shape"] == ["batch", 1, 4, 4]
    assert (meta["preprocessing"]["downscaled_from"], meta["preprocessing"]["resize_mode"]) == (8, "area")
    model = load_model(runs["cross"])
    _round_trip(out, "pt2", model, model.kdlab_input)


def test_torchvision_model_to_torchscript(tmp_path):
    model = models.create("tv:resnet18", 10, in_channels=3, image_size=16).eval()
    meta = export_model(model, tmp_path / "r18.pt", "torchscript", input_shape=(3, 16, 16),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), check=4)
    assert meta["check"]["passed"] and meta["preprocessing"]["std"] == [0.25] * 3
    _round_trip(tmp_path / "r18.pt", "torchscript", model, {"image_size": 16, "in_channels": 3,
                                                              "mean": [0.5] * 3, "std": [0.25] * 3})


class OwnNet(nn.Module):
    """A user's model: not from kdlab's zoo, a non-square input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 10, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_own_model_to_pt2_and_onnx(tmp_path):
    torch.manual_seed(0)
    model = OwnNet().eval()
    spec = {"image_size": [6, 10], "in_channels": 3, "mean": None, "std": None}
    for fmt in ("pt2", "onnx"):
        meta = export_model(model, tmp_path / f"own.{fmt}", fmt, input_shape=(3, 6, 10), check=3)
        assert meta["input_shape"] == ["batch", 3, 6, 10] and meta["check"]["batches"] == [3, 1]
        _round_trip(tmp_path / f"own.{fmt}", fmt, model, spec)


def test_wrong_preprocessing_or_weight_is_refused_and_nothing_written(runs, tmp_path, capsys, monkeypatch):
    model = load_model(runs["train"])
    out = tmp_path / "bad.pt2"
    from kdlab.deploy.export import prepare

    _, spec, samples, _, _ = prepare(runs["train"], check=8)
    assert samples.normalised is not None  # the run's digits test images
    wrong = {**spec, "mean": [spec["mean"][0] + 0.05]}  # a JSON with the wrong mean
    with pytest.raises(KdlabError, match=r"export refused, nothing written: .*max \|logit diff\| .* > tolerance"):
        export_model(model, out, "pt2", spec=wrong, samples=samples)
    assert list(tmp_path.iterdir()) == []

    real_write = export_module.write

    def perturbed_write(m, path, fmt, example, opset=None, exporter="dynamo"):
        broken = load_model(runs["train"])
        with torch.no_grad():
            broken.stem[0].weight[0, 0, 0, 0] += 0.5
        return real_write(broken, path, fmt, example, opset, exporter)

    monkeypatch.setattr(export_module, "write", perturbed_write)
    code, _, err = run(["export", str(runs["train"]), "--format", "pt2", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "export refused" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_never_overwritten_without_force(runs, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    out.write_text("mine")
    code, _, err = run(["export", str(runs["train"]), "--format", "pt2", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and "--force" in err and err.count("\n") == 1
    assert out.read_text() == "mine"
    assert main(["export", str(runs["train"]), "--format", "pt2", "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:2] == b"PK" and (tmp_path / "model.pt2.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "unknown export format 'tflite'"),
    (["--out", "{file}/sub/m.onnx"], "is a file, not a folder"),
    (["--out", "{tmp}"], "is a folder"),
    (["--check", "0"], "--check must be at least 1"),
])
def test_bad_input_is_one_line(runs, tmp_path, capsys, args, message):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [a.replace("{file}", str(blocker)).replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "m.onnx")]
    code, _, err = run(["export", str(runs["train"]), *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and blocker.read_text() == "x"


def test_run_without_weights_and_cohort_without_member(runs, tmp_path, capsys):
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "config.yaml").write_text("model: resnet8\n")
    code, _, err = run(["export", str(empty), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "holds no model weights" in err and err.count("\n") == 1
    code, _, err = run(["export", str(runs["mutual"]), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "--member" in err and err.count("\n") == 1
    assert main(["export", str(runs["mutual"]), "--member", "1", "--format", "pt2",
                 "--out", str(tmp_path / "m.pt2")]) == 0
    assert json.loads((tmp_path / "m.pt2.json").read_text())["member"] == "s1_wrn_16_1"


def test_missing_extra_names_the_install(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    code, _, err = run(["export", str(runs["train"]), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'kdlab[deploy]'" in err
    assert list(tmp_path.iterdir()) == []
