"""`kdlab sweep` and `kdlab report` end to end on the embedded digits data, and the configs/ tree.

One tiny sweep (teacher resnet8 for 1 epoch; baseline, KD and DKD students for 2 epochs on 30% of the data,
seeds 0 and 1, batch 128) is interrupted in its second run, resumed, finished and re-run; the report's
numbers are checked against a hand computation from the runs' metrics.jsonl files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import shlex
import shutil
import statistics
import warnings
from pathlib import Path

import pytest
import yaml

from kdlab import config as cfg
from kdlab import methods, models
from kdlab.cli import build_parser, config_from_args, main
from kdlab.engine.trainer import Trainer
from kdlab.experiments.report import Cell, method_cell
from kdlab.experiments.sweep import distill_layer, load_sweep

REPO = Path(__file__).resolve().parents[2]
SWEEP = {
    "data": "digits",
    "fractions": [0.3],
    "seeds": [0, 1],
    "config": {"data": {"batch_size": 128}, "optim": {"epochs": 2}},
    "teachers": {"resnet8": {"config": {"optim": {"epochs": 1}}}},
    "students": ["resnet8"],
    "methods": {"baseline": {}, "kd": {}, "dkd": {"hparams": {"warmup": 1}}},
}
PAIR = "digits-f0.3/resnet8-resnet8"
RUNS = ["digits/teachers/resnet8/s0", *[f"digits-f0.3/students/resnet8/s{s}" for s in (0, 1)],
        *[f"{PAIR}/{m}/s{s}" for m in ("kd", "dkd") for s in (0, 1)]]


def call(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def write_sweep(path: Path, root: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({"out": str(root), **SWEEP, **changes}))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Runs the sweep through the CLI: dry run, a run interrupted in epoch 2 of its 2nd run, a dry run, the
    resumed run, and a re-run that must not train anything. Returns the paths and every output."""
    base = tmp_path_factory.mktemp("sweep")
    root = base / "root"
    file = write_sweep(base / "tiny.yaml", root)
    result = {"root": root, "file": file, "dry_before": call(["sweep", file, "--dry-run"])}
    result["root_after_dry_run"] = root.exists()

    original = Trainer.train_epoch
    fired = []

    def interrupted(self, *args, **kwargs):
        epoch = kwargs.get("epoch", args[0] if args else None)
        if epoch == 2 and not fired:
            fired.append(self.run_dir)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", interrupted)
        result["interrupted"] = call(["sweep", file, "--quiet"])
    result["killed_dir"] = fired[0]
    result["killed_metrics"] = (fired[0] / "metrics.jsonl").read_text()
    result["dry_after_kill"] = call(["sweep", file, "--dry-run"])
    result["finish"] = call(["sweep", file, "--quiet"])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("kdlab.experiments.sweep.run_train", no_training)
        mp.setattr("kdlab.experiments.sweep.run_distill", no_training)
        result["rerun"] = call(["sweep", file, "--quiet"])
    return result


def states(output: str) -> dict[str, str]:
    """run name -> state from a sweep listing."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("done", "resume", "new", "changed", "external"):
            found[parts[1]] = parts[0]
    return found


def last_and_best(run_dir: Path, key: str = "test_top1") -> tuple[float, float]:
    """By hand: the metric at the last epoch and at the epoch of the highest test top-1."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda r: r["test_top1"])
    return lines[-1][key], best[key]


# ------------------------------------------------------------------------------------------------ sweep
def test_dry_run_lists_states_and_commands_without_running(sweep):
    code, out, err = sweep["dry_before"]
    assert code == 0, err
    assert states(out) == {name: "new" for name in RUNS}
    assert "7 runs (7 new)" in out
    assert out.count("kdlab train ") == 3 and out.count("kdlab distill ") == 4
    assert not sweep["root_after_dry_run"]
    code, out, err = sweep["dry_after_kill"]
    assert code == 0, err
    expected = {name: "new" for name in RUNS}
    expected.update({RUNS[0]: "done", RUNS[1]: "resume"})
    assert states(out) == expected
    assert "--resume" in out  # the resume command of the killed run


def test_sweep_runs_everything_and_resumes_the_killed_run(sweep):
    assert sweep["interrupted"][0] == 130
    assert sweep["killed_dir"] == sweep["root"] / RUNS[1]
    code, out, err = sweep["finish"]
    assert code == 0, err
    assert f"resume {RUNS[1]}" in out and f"start {RUNS[0]}" not in out  # the finished teacher is skipped
    for name in RUNS:
        run_dir = sweep["root"] / name
        summary = json.loads((run_dir / "summary.json").read_text())
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, summary["epochs"] + 1)), name
    # The killed run continued from its epoch-1 checkpoint: its first metrics line is the one written before.
    killed = (sweep["root"] / RUNS[1] / "metrics.jsonl").read_text().splitlines()
    assert killed[0] == sweep["killed_metrics"].splitlines()[0] and len(killed) == 2
    config = yaml.safe_load((sweep["root"] / PAIR / "dkd/s1/config.yaml").read_text())
    assert config["teachers"] == [str((sweep["root"] / RUNS[0] / "best.pt").resolve())]
    assert config["methods"] == {"dkd": {"warmup": 1}} and config["seed"] == 1 and config["data"]["fraction"] == 0.3


def test_rerun_skips_finished_runs(sweep):
    code, out, err = sweep["rerun"]
    assert code == 0, err
    assert states(out) == {name: "done" for name in RUNS}


def test_dry_run_commands_build_the_same_config(sweep):
    for run in load_sweep(sweep["file"]).runs:
        argv = shlex.split(run.command())[1:]
        args, extra = build_parser().parse_known_args(argv)
        args.overrides = [*args.overrides, *extra]
        assert cfg.to_dict(config_from_args(args)) == cfg.to_dict(run.config), run.name


def test_only_selects_runs_and_their_teacher(sweep):
    code, out, err = call(["sweep", sweep["file"], "--dry-run", "--only", "*/kd/*"])
    assert code == 0, err
    assert set(states(out)) == {RUNS[0], f"{PAIR}/kd/s0", f"{PAIR}/kd/s1"}


def test_changed_settings_stop_the_sweep_and_overwrite_nothing(sweep, tmp_path):
    methods_changed = {**SWEEP["methods"], "kd": {"hparams": {"temperature": 2.0}}}
    file = write_sweep(tmp_path / "changed.yaml", sweep["root"], methods=methods_changed)
    code, out, _ = call(["sweep", file, "--dry-run"])
    assert code == 0 and states(out)[f"{PAIR}/kd/s0"] == "changed" and states(out)[RUNS[1]] == "done"
    before = (sweep["root"] / PAIR / "kd/s0/metrics.jsonl").read_bytes()
    code, _, err = call(["sweep", file])
    assert code == 2 and "other settings" in err and "methods.kd.temperature" in err
    assert err.count("\n") == 1
    assert (sweep["root"] / PAIR / "kd/s0/metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("changes, message", [
    ({"method": {"kd": {}}}, "did you mean 'methods'"),
    ({"methods": {"kd": {"hparam": {"temperature": 2}}}}, "did you mean 'hparams'"),
    ({"methods": {"kd": {"hparams": {"temprature": 2}}}}, "did you mean 'temperature'"),
    ({"methods": {"kdd": {}}}, "did you mean 'kd'"),
    ({"config": {"optim": {"lrr": 0.1}}}, "did you mean 'lr'"),
    ({"config": {"seed": 3}}, "set by the sweep"),
    ({"students": ["resnet9"]}, "did you mean 'resnet8'"),
    ({"pairs": [["resnet8", "resnet20"]]}, "no student 'resnet20'"),
])
def test_bad_sweep_files_give_one_line_errors(tmp_path, changes, message):
    file = write_sweep(tmp_path / "bad.yaml", tmp_path / "root", **changes)
    code, out, err = call(["sweep", file])
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and err.startswith("kdlab: error: sweep file")
    assert not (tmp_path / "root").exists()


# ------------------------------------------------------------------------------------------------ report
def expected_cell(runs: list[Path], baseline: list[Path] | None, which: int, key: str = "test_top1") -> str:
    values = [last_and_best(r, key)[which] for r in runs]
    mean, std = statistics.mean(values), statistics.stdev(values)
    text = f"{mean:.2f} ± {std:.2f}"
    if baseline is not None:
        base = statistics.mean(last_and_best(r, key)[which] for r in baseline)
        text += f" ({mean - base:+.2f})"
    return f"{text} [n={len(runs)}]"


def block(report: str, title_part: str) -> str:
    """The Markdown table whose heading contains `title_part`."""
    for chunk in report.split("### ")[1:]:
        if title_part in chunk.splitlines()[0]:
            return chunk
    raise AssertionError(f"no table '{title_part}' in:\n{report}")


def row(table: str, label: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {label} |"))


def test_report_mean_std_gain_and_counts_match_the_metrics_files(sweep):
    root = sweep["root"]
    code, report, err = call(["report", root])
    assert code == 0, err
    baseline = [root / RUNS[1], root / RUNS[2]]
    for epoch, which in (("last epoch", 0), ("best epoch", 1)):
        table = block(report, f"top-1 (%) — {epoch}")
        assert "resnet8 [0.08M] → resnet8 [0.08M]" in table
        assert row(table, "baseline").endswith(f"| {expected_cell(baseline, None, which)} |")
        for method in ("kd", "dkd"):
            runs = [root / PAIR / method / f"s{s}" for s in (0, 1)]
            assert row(table, method).endswith(f"| {expected_cell(runs, baseline, which)} |"), method
        teacher_top1 = last_and_best(root / RUNS[0])[which]
        assert row(table, "teacher").endswith(f"| {teacher_top1:.2f} [n=1] |")
        # rows: teacher and baseline first
        labels = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]
        assert labels == ["teacher", "baseline", "dkd", "kd"]
    ece = block(report, "ECE (%) — last epoch")
    runs = [root / PAIR / "kd" / f"s{s}" for s in (0, 1)]
    assert row(ece, "kd").endswith(f"| {expected_cell(runs, baseline, 0, 'test_ece')} |")
    assert "7 finished runs" in report


def test_report_csv_parses_with_the_same_numbers(sweep, tmp_path):
    out = tmp_path / "report.csv"
    code, stdout, err = call(["report", sweep["root"], "--format", "csv", "--out", out, "--epoch", "last",
                              "--metrics", "top1"])
    assert code == 0, err
    assert str(out) in stdout
    rows = list(csv.DictReader(out.open()))
    assert {r["epoch"] for r in rows} == {"last"} and {r["metric"] for r in rows} == {"top1"}
    kd = next(r for r in rows if r["method"] == "kd")
    values = [last_and_best(sweep["root"] / PAIR / "kd" / f"s{s}")[0] for s in (0, 1)]
    base = statistics.mean(last_and_best(sweep["root"] / RUNS[i])[0] for i in (1, 2))
    assert float(kd["mean"]) == pytest.approx(statistics.mean(values))
    assert float(kd["std"]) == pytest.approx(statistics.stdev(values))
    assert int(kd["n"]) == 2 and float(kd["gain"]) == pytest.approx(statistics.mean(values) - base)
    assert kd["teacher"] == "resnet8" and kd["student"] == "resnet8" and float(kd["fraction"]) == 0.3
    assert next(r for r in rows if r["method"] == "baseline")["gain"] == ""


def test_report_plots_are_png_files(sweep, tmp_path):
    code, _, err = call(["report", sweep["root"], "--plots", tmp_path / "plots", "--epoch", "last"])
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert files == [f"digits-f0.3_resnet8-resnet8-{kind}.png"
                     for kind in ("acc-ece", "curves", "gains", "reliability")]
    for path in (tmp_path / "plots").iterdir():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_gain_bars_are_sorted_with_the_seeds_spread():
    from kdlab.experiments.plots import draw_gains, draw_reliability, pyplot

    plt = pyplot()
    fig, (ax, rel) = plt.subplots(1, 2)
    draw_gains(ax, ["a", "b", "c"], [[1.0, 3.0], [-1.0], [0.5, 0.5, 0.5]], "gain")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b [n=1]", "c [n=3]", "a [n=2]"]  # best on top
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([-1.0, 0.5, 2.0])
    # reliability: a bin of 2 samples is faded, share-of-sample bars sum to 1
    draw_reliability(rel, [0.5, 0.9], [1.0, 0.8], [2, 98], "r")
    labels = [h.get_label() for h in rel.containers]
    assert labels == ["accuracy", "accuracy, < 5 samples", "share of samples"]
    assert sum(p.get_height() for p in rel.containers[2]) == pytest.approx(1.0)
    # every other seed: its bins of at least 5 samples as dots (the 3-sample bin has none)
    fig2, seeds = plt.subplots()
    draw_reliability(seeds, [0.5, 0.9], [1.0, 0.8], [2, 98], "r", [([0.6, 0.7], [3, 97]), ([0.4, 0.9], [10, 90])])
    dots = [c.get_offsets().tolist() for c in seeds.collections]
    assert dots == [[[0.75, 0.7]], [[0.25, 0.4], [0.75, 0.9]]]
    assert seeds.collections[0].get_label() == "other runs' accuracy"  # one legend entry for all other seeds
    plt.close(fig)
    plt.close(fig2)


def test_report_fraction_table_when_runs_differ_by_fraction(sweep, tmp_path):
    """The by-fraction layout: the same runs relabelled as full-data runs (config edited, not retrained)."""
    copy = tmp_path / "full"
    for name in RUNS[1:]:
        target = copy / name
        shutil.copytree(sweep["root"] / name, target)
        config = yaml.safe_load((target / "config.yaml").read_text())
        config["data"]["fraction"] = None
        (target / "config.yaml").write_text(yaml.safe_dump(config))
    code, report, err = call(["report", sweep["root"], copy, "--epoch", "last", "--metrics", "top1"])
    assert code == 0, err
    table = block(report, "by training-data fraction — last epoch")
    assert "| method | 100% data | 30% data |" in table
    kd = row(table, "kd").split("|")[2:4]
    assert kd[0].strip() == kd[1].strip()  # identical runs under both labels
    assert "digits, full training set" in report and "digits, 30% of the training set" in report


def test_report_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in ((["report", tmp_path / "empty"], "no finished kdlab runs"),
                          (["report", tmp_path / "missing"], "does not exist"),
                          (["report", tmp_path / "empty", "--metrics", "top1,eec"], "did you mean 'ece'"),
                          (["report", tmp_path / "empty", "--epoch", "final"], "use best, last or both")):
        code, _, err = call(args)
        assert code == 2 and message in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------------ configs
CONFIGS = sorted((REPO / "configs" / "cifar100").rglob("*.yaml"))


def test_configs_tree_covers_the_published_pairs():
    pairs = {p.parent.name for p in CONFIGS if p.parent.name != "train"}
    assert {"resnet56-resnet20", "resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2", "vgg13-mobilenetv2",
            "resnet32x4-shufflenetv2"} <= pairs
    assert {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet18"} <= {
        p.stem for p in CONFIGS if p.parent.name == "train"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_loads(path):
    config = cfg.build([cfg.load_yaml(path)])
    deit = path.stem == "deit"  # the one ViT recipe (configs/make_cifar100.py deit_recipe): DeiT's 300 AdamW epochs
    assert config.data.name == "cifar100" and config.optim.epochs == (300 if deit else 240)
    models.model_info(config.model)
    if path.parent.name == "train":
        assert not config.method
        return
    teacher, student = path.parent.name.split("-")
    assert config.model == student and config.teachers == [f"runs/cifar100/teachers/{teacher}/best.pt"]
    methods.parse(config.method, config.methods)
    if deit:
        assert (config.optim.optimizer, config.optim.lr) == ("adamw", 5e-4)
        return
    light = student.startswith(("mobilenet", "shufflenet"))
    # MLKD's configs carry its authors' LR (0.025; 0.01 for the light students, as the recipe's)
    assert config.optim.lr == (0.01 if light else 0.025 if path.stem == "mlkd" else 0.05)


def test_published_per_pair_hyperparameters():
    """What the configs run: their deviations on top of the method classes' defaults (docs/methods.md)."""
    def run(pair: str, name: str) -> tuple[dict, float, dict]:
        config = cfg.build([cfg.load_yaml(REPO / "configs" / "cifar100" / pair / f"{name}.yaml")])
        (method,) = methods.parse(config.method, config.methods)
        ce = method.ce_weight if config.ce_weight is None else config.ce_weight
        return method.hp, ce, config.methods

    assert run("resnet56-resnet20", "dkd")[0]["beta"] == 2.0
    assert run("wrn_40_2-wrn_16_2", "dkd")[0]["beta"] == 6.0
    assert run("resnet32x4-resnet8x4", "dkd")[0]["beta"] == 8.0
    assert run("resnet56-resnet20", "reviewkd")[0]["weight"] == 0.6
    assert run("resnet32x4-shufflenetv2", "reviewkd")[0]["weight"] == 8.0
    assert run("resnet56-resnet20", "dist")[:2] == ({"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}, 1.0)
    assert run("resnet56-resnet20", "crd")[0]["weight"] == 0.8
    assert run("resnet56-resnet20", "lskd")[:2] == ({"weight": 9.0, "temperature": 2.0}, 0.1)
    assert run("resnet56-resnet20", "kd")[:2] == ({"weight": 0.9, "temperature": 4.0, "standardize": False}, 0.1)
    hp, _, _ = run("resnet56-resnet20", "dkd_ls")
    assert (hp["alpha"], hp["beta"], hp["temperature"], hp["standardize"]) == (9.0, 18.0, 2.0, True)
    hp, _, _ = run("resnet56-resnet20", "cc")
    assert (hp["variant"], hp["weight"]) == ("repdistiller", 0.02)
    # the files hold only deviations from the classes' defaults: nothing for kd, dist, crd; beta alone for dkd
    assert run("resnet56-resnet20", "kd")[2] == run("resnet56-resnet20", "dist")[2] == {}
    assert run("resnet56-resnet20", "dkd")[2] == {"dkd": {"beta": 2.0}}


def test_cpu_sweep_file_plans(tmp_path):
    sweep = load_sweep(REPO / "configs" / "sweeps" / "cpu-cifar100.yaml", out=str(tmp_path / "cpu"))
    kinds = [r.kind for r in sweep.runs]
    assert kinds.count("teacher") == 1 and kinds.count("baseline") == 2
    by_method = {}
    for run in sweep.runs:
        if run.kind == "distill":
            by_method.setdefault(run.name.split("/")[-2], []).append(run)
    # the protocol's methods, with seeds 0 and 1: tfkd_self (whose teacher is the baseline) in the second file
    self_sweep = load_sweep(REPO / "configs" / "sweeps" / "cpu-cifar100-self.yaml", out=str(tmp_path / "cpu"))
    self_runs = [r for r in self_sweep.runs if r.kind == "distill"]
    assert [r.name for r in self_runs] == [f"cifar100-f0.1/resnet8-self-resnet8/tfkd_self/s{s}" for s in (0, 1)]
    # deit needs a ViT student: its column (baseline, kd, deit on deit_tiny_cifar) is a third file
    vit_sweep = load_sweep(REPO / "configs" / "sweeps" / "cpu-cifar100-vit.yaml", out=str(tmp_path / "cpu"))
    vit_methods = {r.name.split("/")[-2] for r in vit_sweep.runs if r.kind == "distill"}
    assert vit_methods == {"kd", "deit"}
    planned, registered = set(by_method) | {"tfkd_self"} | vit_methods, set(methods.list_methods())
    assert planned <= registered, sorted(planned - registered)
    if registered - planned:  # a new method needs no sweep entry for the suite to pass; the gap is shown
        warnings.warn(f"configs/sweeps/cpu-cifar100.yaml does not plan: {', '.join(sorted(registered - planned))}",
                      stacklevel=1)
    assert all(sorted(r.name[-2:] for r in runs) == ["s0", "s1"] for runs in by_method.values())
    baseline_s0 = next(r for r in sweep.runs if r.kind == "baseline" and r.name.endswith("/s0"))
    main_file = yaml.safe_load((REPO / "configs" / "sweeps" / "cpu-cifar100.yaml").read_text())
    self_file = yaml.safe_load((REPO / "configs" / "sweeps" / "cpu-cifar100-self.yaml").read_text())
    assert self_file["out"] == main_file["out"]
    # the ViT and bf16 files train under the main root from the same teacher entry, so its teacher run is reused
    for extra in ("cpu-cifar100-vit.yaml", "cpu-cifar100-bf16.yaml"):
        extra_file = yaml.safe_load((REPO / "configs" / "sweeps" / extra).read_text())
        assert extra_file["out"] == main_file["out"] and extra_file["teachers"] == main_file["teachers"], extra
        assert extra_file["config"] == main_file["config"], extra
    assert self_file["teachers"]["resnet8-self"]["checkpoint"] == f"{main_file['out']}/{baseline_s0.name}/best.pt"
    for run in sweep.runs + self_runs:
        assert run.config.precision == "fp32" and run.config.channels_last and run.config.data.name == "cifar100"
        if run.kind == "teacher":
            assert run.config.model == "resnet20" and run.config.data.fraction is None
        else:
            assert run.config.model == "resnet8" and run.config.data.fraction == 0.1
            schedule = dataclasses.replace(run.config.optim, optimizer="sgd")  # DOT: the same schedule
            assert run.config.optim.epochs == 10 and self_runs[0].config.optim == schedule
            assert run.config.optim.optimizer == ("dot" if run.config.method == "dot" else "sgd")


def test_report_keeps_a_baseline_that_is_also_a_teacher(sweep, tmp_path):
    """Tf-KD self: the seed-0 baseline is the teacher of a tfkd_self run and still a baseline (n=2)."""
    root = tmp_path / "self"
    for name in RUNS:
        shutil.copytree(sweep["root"] / name, root / name)
    self_run = root / PAIR / "tfkd_self" / "s0"
    shutil.copytree(sweep["root"] / PAIR / "kd" / "s0", self_run)
    config = yaml.safe_load((self_run / "config.yaml").read_text())
    config["method"] = "tfkd_self"
    config["methods"] = {}
    config["teachers"] = [str((root / RUNS[1] / "best.pt").resolve())]
    (self_run / "config.yaml").write_text(yaml.safe_dump(config))
    code, report, err = call(["report", root, "--epoch", "last", "--metrics", "top1"])
    assert code == 0, err
    table = block(report, "top-1 (%) — last epoch")
    baseline = [root / RUNS[1], root / RUNS[2]]
    assert row(table, "baseline").endswith(f"| {expected_cell(baseline, None, 0)} |")
    assert "(+" in row(table, "tfkd_self") or "(-" in row(table, "tfkd_self")


def test_report_tabulates_mutual_learning_cohorts_per_student(sweep, tmp_path):
    """A DML cohort of two resnet8 students sits beside the baseline: one cell, the students averaged into one
    value for their run (they are not two seeds)."""
    root = tmp_path / "dml"
    for name in RUNS[1:3]:
        shutil.copytree(sweep["root"] / name, root / name)
    run = root / "digits-f0.3/mutual/dml/s0"
    code, _, err = call(["mutual", "--models", "resnet8,resnet8", "--data", "digits", "--fraction", "0.3",
                         "--epochs", "2", "--batch-size", "128", "--seed", "0", "--out", run, "--quiet"])
    assert code == 0, err
    code, report, err = call(["report", root, "--epoch", "last", "--metrics", "top1"])
    assert code == 0, err
    table = block(report, "top-1 (%) — last epoch")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    values = [lines[-1][f"test_s{i}_resnet8_top1"] for i in (0, 1)]
    base = statistics.mean(last_and_best(root / name)[0] for name in RUNS[1:3])
    mean = statistics.mean(values)
    assert row(table, "dml").endswith(f"| {mean:.2f} ({mean - base:+.2f}) [n=1] |")
    assert "3 finished runs; 1 of them deep-mutual-learning cohorts" in report and "copies" not in report


def test_cpu_long_schedule_sweep_reuses_the_protocol_teacher(tmp_path):
    """configs/sweeps/cpu-cifar100-24ep.yaml: the 10-epoch protocol's recipe scaled to 24 epochs, its teacher."""
    main_file = yaml.safe_load((REPO / "configs" / "sweeps" / "cpu-cifar100.yaml").read_text())
    sweep = load_sweep(REPO / "configs" / "sweeps" / "cpu-cifar100-24ep.yaml", out=str(tmp_path / "long"))
    main = load_sweep(REPO / "configs" / "sweeps" / "cpu-cifar100.yaml", out=str(tmp_path / "cpu"))
    teacher = next(r for r in main.runs if r.kind == "teacher")
    long_file = yaml.safe_load((REPO / "configs" / "sweeps" / "cpu-cifar100-24ep.yaml").read_text())
    assert long_file["teachers"]["resnet20"]["checkpoint"] == f"{main_file['out']}/{teacher.name}/best.pt"
    assert long_file["out"] != main_file["out"]  # the 10-epoch runs keep their directories
    students = {r.name.split("/")[-2] if r.kind == "distill" else r.kind: r for r in sweep.runs
                if r.kind in ("distill", "baseline")}
    assert set(students) == {"baseline", "kd", "dkd", "dist", "crd"}
    for run in students.values():
        short = next(r for r in main.runs if r.name == run.name)  # the same run of the 10-epoch protocol
        assert (run.config.optim.epochs, run.config.optim.milestones) == (24, [15, 18, 21])
        assert (short.config.optim.epochs, short.config.optim.milestones) == (10, [6, 8, 9])
        assert run.config.methods == short.config.methods or run.name.endswith("dkd/s0")
        assert (run.config.data.fraction, run.config.precision, run.config.model) == (0.1, "fp32", "resnet8")
    assert students["dkd"].config.methods["dkd"]["warmup"] == 2  # 20 of 240 epochs


def test_distill_layer_stacks_the_sweep_layers_later_ones_winning():
    """base < student config < row config < row hparams < per-pair config < per-pair hparams."""
    entry = {"config": {"optim": {"lr": 0.2, "epochs": 3}}, "hparams": {"methods": {"kd": {"temperature": 2}}},
             "per_pair": {"a-b": {"config": {"optim": {"lr": 0.3}}, "hparams": {"methods": {"kd": {"weight": 5}}}}}}
    base = {"optim": {"lr": 0.05, "epochs": 1, "momentum": 0.8}, "precision": "fp32"}
    student = {"optim": {"epochs": 2}, "precision": "bf16"}
    layer = distill_layer(base, student, entry, "a-b")
    assert layer == {"optim": {"lr": 0.3, "epochs": 3, "momentum": 0.8}, "precision": "bf16",
                     "methods": {"kd": {"temperature": 2, "weight": 5}}}
    other = distill_layer(base, student, entry, "a-c")  # no per_pair entry for this pair
    assert other["optim"]["lr"] == 0.2 and other["methods"] == {"kd": {"temperature": 2}}
    assert base == {"optim": {"lr": 0.05, "epochs": 1, "momentum": 0.8}, "precision": "fp32"}  # not modified


def test_method_cell_compares_with_the_baseline_of_the_same_settings():
    runs = [object()]
    same, other = Cell([]), Cell([])
    signature = (("methods.kd.temperature", "4"), ("optim.epochs", "2"))
    cell = method_cell(runs, signature, {(("optim.epochs", "2"),): same, (("optim.epochs", "9"),): other})
    assert cell.baseline is same and not cell.baseline_differs  # method keys left out of the match
    only = method_cell(runs, signature, {(("optim.epochs", "9"),): other})
    assert only.baseline is other and only.baseline_differs  # the only baseline there is, marked
    none = method_cell(runs, signature, {(("optim.epochs", "8"),): same, (("optim.epochs", "9"),): other})
    assert none.baseline is None and none.gain("top1", "best") is None
    assert method_cell(runs, signature, {}).baseline is None


def test_a_key_added_to_kdlab_after_a_run_counts_with_its_default_in_the_report():
    """A run saved before `qat` (or any later key) existed groups with one saved with its default value."""
    from kdlab.experiments.report import effective_config

    old = {"model": "resnet8", "method": "kd", "optim": {"epochs": 10}}
    new = {**old, "qat": False, "optim": {"epochs": 10, "dot_delta": 0.075}}
    assert cfg.flatten(effective_config(old)) == cfg.flatten(effective_config(new))
    assert cfg.flatten(effective_config({**new, "qat": True})) != cfg.flatten(effective_config(old))
