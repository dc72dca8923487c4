"""kdlab quantize: int8 static quantization with ONNX Runtime on a small model, and its refusals."""

import json

import onnx
import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.deploy.export import user_spec
from kdlab.deploy.quantize import quantize_model
from kdlab.deploy.runtimes import open_exported
from kdlab.deploy.samples import random_samples
from kdlab.errors import KdlabError


def test_quantize_a_run(runs, tmp_path, capsys):
    out = tmp_path / "student.int8.onnx"
    assert main(["quantize", str(runs["distill"]), "--calibration", "128", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated on 128 digits training images" in text and "top-1 on the digits test split (450" in text
    graph = onnx.load(str(out)).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert weighted and int8
    # every Conv/Gemm reads its weight through a DequantizeLinear of an int8 initializer
    producers = {o: n for n in graph.node for o in n.output}
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear" and dq.input[0] in int8, node.name
    meta = json.loads((tmp_path / "student.int8.onnx.json").read_text())
    assert meta["quant_format"] == "QDQ" and meta["calibration_images"] == 128
    assert meta["fp32_check"]["passed"] and meta["top1"]["images"] == 450
    logits = open_exported(out, "onnx")(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # int8 rounding moves logits by a few quantisation steps, not by a class: most predictions agree
    assert meta["int8_vs_fp32"]["top1_agreement_percent"] >= 75.0


class RowGRU(nn.Module):
    """Reads an image row by row with a GRU: a layer without an int8 form in ONNX Runtime's QDQ quantizer."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.gru(x[:, 0])
        return self.head(out[:, -1])


def test_unsupported_layers_are_refused_in_one_line(tmp_path):
    spec = user_spec((1, 8, 8))
    with pytest.raises(KdlabError, match="layers without an int8 form .*GRU") as info:
        quantize_model(RowGRU().eval(), tmp_path / "gru.onnx", random_samples(spec, 16), spec=spec)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_quantize_refuses_an_existing_file_and_bad_counts(runs, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    out.write_text("mine")
    assert main(["quantize", str(runs["train"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["quantize", str(runs["train"]), "--calibration", "0", "--out", str(tmp_path / "r.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--calibration must be at least 1" in err and err.count("\n") == 1
