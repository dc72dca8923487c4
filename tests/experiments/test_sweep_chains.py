"""TAKD chains in a sweep file (`chains:`, docs/experiments.md): one distillation run per link, each link's
teacher the previous link's best.pt; planned, run, killed in the student's link and resumed, re-run without
training, and reported (the assistant's link in its own column, the student's beside the pair's other methods).
Digits, 1 epoch per run, batch 128, 30% of the training split."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from kdlab.cli import main
from kdlab.engine.trainer import Trainer
from kdlab.experiments.sweep import load_sweep

SWEEP = {
    "data": "digits",
    "fractions": [0.3],
    "seeds": [0],
    "config": {"data": {"batch_size": 128}, "optim": {"epochs": 2}},
    "teachers": {"resnet20": {"config": {"optim": {"epochs": 1}}}},
    "students": {"small": {"model": "resnet8"}},
    "methods": {"baseline": {}, "kd": {}},
    "chains": {"takd": {"models": ["resnet20", "resnet14", "small"], "hparams": {"temperature": 5.0},
                        "per_link": {"small": {"config": {"ce_weight": 0.85}}}}},
}
TEACHER = "digits/teachers/resnet20/s0"
ASSISTANT = "digits-f0.3/takd/resnet20-resnet14/s0"  # the assistant: a zoo model name
STUDENT = "digits-f0.3/takd/resnet20-resnet14-small/s0"  # the student: an entry of students:


def call(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def write(path: Path, root: Path, **changes) -> Path:
    spec = {"out": str(root), **SWEEP, **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    base = tmp_path_factory.mktemp("chain")
    root = base / "root"
    file = write(base / "chain.yaml", root)
    result = {"root": root, "file": file, "dry": call(["sweep", file, "--dry-run"])}
    original, fired = Trainer.train_epoch, []

    def interrupted(self, *args, **kwargs):  # a kill in epoch 2 of the student's link
        epoch = kwargs.get("epoch", args[0] if args else None)
        if epoch == 2 and "resnet14-small" in str(self.run_dir) and not fired:
            fired.append(self.run_dir)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", interrupted)
        result["killed"] = call(["sweep", file, "--quiet"])
    result["dry_after_kill"] = call(["sweep", file, "--dry-run"])
    result["assistant_mtime"] = (root / ASSISTANT / "best.pt").stat().st_mtime
    result["finish"] = call(["sweep", file, "--quiet"])
    result["report"] = call(["report", root, "--epoch", "last", "--metrics", "top1"])
    return result


def states(output: str) -> dict[str, str]:
    return {p[1]: p[0] for p in (line.split() for line in output.splitlines())
            if len(p) >= 2 and p[0] in ("done", "resume", "new", "changed", "external")}


def test_plan_has_one_run_per_link_each_from_the_previous_best(chain):
    code, out, _ = chain["dry"]
    assistant, student = ASSISTANT, STUDENT
    assert code == 0
    assert list(states(out)) == [TEACHER, "digits-f0.3/students/small/s0", "digits-f0.3/resnet20-small/kd/s0",
                                 assistant, student]
    assert f"{student}  <- {assistant}/best.pt" in out  # the dependency, shown in the dry run
    runs = {r.name: r for r in load_sweep(chain["file"]).runs}
    root = chain["root"].resolve()
    assert runs[assistant].config.teachers == [str(root / TEACHER / "best.pt")]
    assert runs[student].config.teachers == [str(root / assistant / "best.pt")]
    assert runs[student].teacher == assistant and runs[assistant].teacher == TEACHER
    assert runs[assistant].config.model == "resnet14" and runs[student].config.model == "resnet8"
    assert runs[student].config.methods["kd"]["temperature"] == 5.0 and runs[student].config.ce_weight == 0.85
    assert runs[assistant].config.ce_weight is None  # per_link applies to its link only
    assert runs[student].config.data.fraction == 0.3


def test_killed_link_resumes_and_finished_links_are_skipped(chain):
    assert chain["killed"][0] == 130
    assistant, student = ASSISTANT, STUDENT
    after = states(chain["dry_after_kill"][1])
    assert after[assistant] == "done" and after[student] == "resume"
    code, out, _ = chain["finish"]
    assert code == 0 and f"resume {student}" in out and f"start {assistant}" not in out
    assert (chain["root"] / assistant / "best.pt").stat().st_mtime == chain["assistant_mtime"]
    lines = (chain["root"] / student / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_only_the_student_brings_its_whole_chain(chain):
    code, out, _ = call(["sweep", chain["file"], "--dry-run", "--only", "*-small/s0"])
    assert code == 0
    assert list(states(out)) == [TEACHER, ASSISTANT, STUDENT]  # not the pair's kd run nor the baseline


def test_report_shows_each_link(chain):
    code, out, _ = chain["report"]
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    head = table[0]
    assert "resnet20 [0.27M] → resnet14" in head and "resnet20 [0.27M] → resnet8" in head
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert "kd via resnet14" in rows  # the student's link, in the column of the chain's first teacher
    columns = [c.strip() for c in head.split("|")[2:-1]]
    assert len(columns) == 2  # teacher -> assistant (its link) and teacher -> student (baseline, kd, the chain)
    student_dir = chain["root"] / STUDENT
    last = json.loads((student_dir / "metrics.jsonl").read_text().splitlines()[-1])["test_top1"]
    cells = [c for c in rows["kd via resnet14"] if c not in ("–", "")]
    assert len(cells) == 1 and cells[0].startswith(f"{last:.2f} (")  # with its gain over the baseline
    teacher_top1 = json.loads((chain["root"] / TEACHER / "metrics.jsonl").read_text().splitlines()[-1])["test_top1"]
    assert all(c.startswith(f"{teacher_top1:.2f}") for c in rows["teacher"])  # the chain's first teacher


@pytest.mark.parametrize("chains, message", [
    ({"takd": {"models": ["resnet20", "resnet8"]}}, "at least one assistant"),
    ({"takd": {"models": ["resnet56", "resnet8", "small"]}}, "must be a teacher"),
    ({"takd": {"models": ["resnet20", "resnet8", "resnet8"]}}, "twice"),
    ({"takd": {"models": ["resnet20", "resnett8", "small"]}}, "did you mean 'resnet8'"),
    ({"takd": {"models": ["resnet20", "resnet14", "small"], "per_link": {"resnet20": {}}}}, "valid keys there"),
    ({"takd": {"models": ["resnet20", "resnet14", "small"], "methodd": "kd"}}, "did you mean 'method'"),
    ({"takd": {"models": ["resnet20", "resnet14", "small"], "method": "kdd"}}, "did you mean 'kd'"),
    ({"resnet20-small": {"models": ["resnet20", "resnet14", "small"]}}, "rename the chain"),
])
def test_bad_chains_are_one_line_errors(tmp_path, chains, message):
    code, _, err = call(["sweep", write(tmp_path / "bad.yaml", tmp_path / "root", chains=chains), "--dry-run"])
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_a_sweep_of_chains_alone_needs_no_students_or_methods(tmp_path):
    spec = {k: v for k, v in SWEEP.items() if k not in ("students", "methods")}
    spec["chains"] = {"c": {"models": ["resnet20", "resnet14", "resnet8"]}}
    file = tmp_path / "only.yaml"
    file.write_text(yaml.safe_dump({"out": str(tmp_path / "root"), **spec}))
    names = [r.name for r in load_sweep(file).runs]
    assert names == [TEACHER, "digits-f0.3/c/resnet20-resnet14/s0", "digits-f0.3/c/resnet20-resnet14-resnet8/s0"]


def test_takd_cifar100_file_plans_the_published_chain(tmp_path):
    """configs/sweeps/takd-cifar100.yaml: the authors' lambda/T per link (issue #7 of their repository), converted
    to kdlab's batch-mean KD (weight = lambda / 100, ce_weight = 1 - lambda)."""
    file = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "takd-cifar100.yaml"
    runs = {r.name: r.config for r in load_sweep(file, out=str(tmp_path)).runs}
    assistant = runs["cifar100/takd/resnet110-resnet20/s0"]
    student = runs["cifar100/takd/resnet110-resnet20-resnet8/s0"]
    assert (assistant.model, assistant.ce_weight, assistant.methods["kd"]) == (
        "resnet20", 0.5, {"temperature": 5.0, "weight": 0.005})
    assert (student.model, student.ce_weight, student.methods["kd"]) == (
        "resnet8", 0.85, {"temperature": 5.0, "weight": 0.0015})
    assert student.teachers == [str(tmp_path.resolve() / "cifar100/takd/resnet110-resnet20/s0/best.pt")]
    direct = runs["cifar100/resnet110-resnet8/kd/s0"]
    assert (direct.ce_weight, direct.methods["kd"]["weight"], direct.methods["kd"]["temperature"]) == (0.8, 0.002, 2.0)
    for config in runs.values():
        assert (config.optim.epochs, config.optim.lr, config.optim.milestones, config.optim.weight_decay,
                config.data.batch_size, config.data.augment) == (160, 0.01, [120], 0.0001, 128, False)
    assert "cifar100/students/resnet20/s0" in runs and "cifar100/students/resnet8/s0" in runs
