"""kdlab profile: the tables' shape (few repeats, no timing assertions), MAC counting, the Pareto front."""

import csv
import io
import json

import torch
from torch import nn

from kdlab.cli import main
from kdlab.deploy import latency
from kdlab.deploy.pareto import pareto_front
from kdlab.deploy.profile import collect, count_macs, markdown, measure_all, to_csv


def test_collect_finds_the_teacher_from_the_config(runs):
    entries = collect([runs["distill"]])
    assert [(e.role, e.path.name, e.label) for e in entries] == [("teacher", "best.pt", "teacher"),
                                                                 ("student", "last.pt", "kd")]
    cohort = collect([runs["mutual"]])
    assert [(e.role, e.member) for e in cohort] == [("mutual", "s0_resnet8"), ("mutual", "s1_wrn_16_1")]


def test_markdown_and_csv_tables(runs, tmp_path):
    results, header = measure_all([runs["distill"]], calibration=32, warmup=1, repeats=2, threads=1, batches=(1, 4))
    lines = markdown(results, header, (1, 4)).splitlines()
    assert "threads: 1" in lines[0] and "bf16 native:" in lines[0] and "p50 / p90 of 2 timed calls" in lines[0]
    models_table = [line for line in lines if line.startswith("| teacher |") or line.startswith("| kd |")]
    backends = 5 if latency.cpu_bf16_is_native() else 4
    assert len(models_table) == 2 * (1 + backends)  # one row per model, one per model and backend
    row = next(line for line in lines if line.startswith("| kd | student | resnet8 |")).split("|")
    assert row[4].strip() == "77.75k" and row[5].strip() == "763.52k"  # params, MACs of resnet8 on 8x8
    summary = json.loads((runs["distill"] / "summary.json").read_text())
    assert row[9].strip() == f"{summary['last']['test_top1']:.2f}"  # top-1 of last.pt's epoch, from the run
    assert row[10].strip() == f"{summary['last']['test_ece']:.2f}"
    rows = list(csv.DictReader(io.StringIO(to_csv(results, 1, (1, 4)))))
    assert len(rows) == 2 * backends * 2  # models x backends x batch sizes
    assert {r["batch"] for r in rows} == {"1", "4"} and {r["threads"] for r in rows} == {"1"}
    assert all(float(r["p50_ms"]) <= float(r["p90_ms"]) for r in rows)


def test_cli_writes_the_plot_and_refuses_an_existing_one(runs, tmp_path, capsys):
    plot = tmp_path / "pareto.png"
    args = ["profile", str(runs["train"]), "--repeats", "1", "--warmup", "0", "--calibration", "16",
            "--threads", "1", "--plot", str(plot)]
    assert main(args) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG" and "| teacher | baseline | resnet8 |" in capsys.readouterr().out
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["profile", str(runs["train"]), "--format", "xml"]) == 2


def test_macs_are_half_the_counted_flops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    expected = 3 * 8 * 9 * 4 * 4 + 8 * 4 * 4 * 10  # conv: Cin*Cout*k*k*H*W; linear: in*out
    assert count_macs(model, torch.zeros(2, 3, 4, 4)) == expected


def test_pareto_front_keeps_points_no_other_beats():
    pts = [(1.0, 80.0, "a", "fp32"), (2.0, 79.0, "b", "fp32"), (3.0, 90.0, "c", "fp32"), (0.5, 70.0, "d", "int8")]
    assert [p[2] for p in pareto_front(pts)] == ["d", "a", "c"]


def test_measure_counts_its_calls():
    calls = []
    timing = latency.measure(lambda x: calls.append(x.shape[0]), torch.zeros(3, 1), warmup=2, repeats=5)
    assert len(calls) == 7 and timing.batch == 3 and timing.repeats == 5
    assert timing.min_ms <= timing.p50_ms <= timing.p90_ms


def test_latency_benchmark_script_quick(capsys):
    import importlib
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        text = importlib.import_module("deploy_latency").main(["--quick", "--threads", "1"])
    finally:
        sys.path.remove(str(benchmarks))
    assert "| resnet8 | onnxruntime int8 |" in text and "threads: 1" in text
