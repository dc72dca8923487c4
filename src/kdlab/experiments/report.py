"""`kdlab report`: tables (Markdown or CSV) and plots from run directories.

Runs are found recursively (a run directory holds config.yaml, metrics.jsonl and, once finished,
summary.json). Runs that differ only by seed form one cell: mean ± sample std over seeds, the gain over
the baseline student (the same student trained alone on the same data), and the number of runs, e.g.
"75.01 ± 0.21 (+1.56) [n=3]". Rows are methods (teacher and baseline first); columns are teacher→student
pairs with parameter counts, as in the github.com/chitraz/KnowledgeDistillationForModelCompression README;
a second table pivots on the training-data fraction when runs differ by it, as in the
github.com/sseung0703/Knowledge_distillation_via_TF2.0 README. The roles come from the configs, not from
directory names: a training run is a teacher when some distillation run points at its checkpoint, otherwise
a baseline (and both when it is also the normally trained student of a column, as Tf-KD self's teacher is).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab import config as cfg
from kdlab.distillation.mutual import cohort_names
from kdlab.engine.logging import read_metrics
from kdlab.errors import KdlabError, closest
from kdlab.methods import get

METRICS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "nll": "NLL", "ece": "ECE (%)"}
LOWER_IS_BETTER = {"nll", "ece"}
EPOCHS = {"best": "best epoch (each run's highest test top-1; other metrics at that epoch)",
          "last": "last epoch"}
TEACHER, BASELINE = "teacher", "baseline"
# Settings that do not change what a run computes; ignored when deciding which runs belong together.
IGNORED = {"seed", "out", "teachers", "threads", "device", "log_every", "loggers", "data.root", "data.workers",
           "data.test_batch_size", "model", "method", "data.name", "data.fraction"}
METHOD_KEYS = ("methods", "ce_weight", "init_epochs", "teacher_model", "teacher_weights", "teacher_mix")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1; 0 for a single value)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class RunRecord:
    """One finished run directory, read once."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    teacher_dir: Path | None = None  # resolved directory of the teacher run (distillation runs)
    teacher: RunRecord | None = None
    member: str = ""  # a deep-mutual-learning cohort's student: its name in the run's metrics and reliability.json

    @property
    def data(self) -> str:
        return str((self.config.get("data") or {}).get("name", "?"))

    @property
    def fraction(self) -> float:
        value = (self.config.get("data") or {}).get("fraction")
        return 1.0 if value is None else float(value)

    @property
    def model(self) -> str:
        return str(self.summary.get("arch", {}).get("model") or self.config.get("model"))

    @property
    def method(self) -> str | None:
        return self.config.get("method") or None

    @property
    def params(self) -> int | None:
        return self.summary.get("params")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def signature(self, method_keys: bool = True) -> tuple:
        """The settings other than the seed (and where it ran) that define this run's group; method
        hyperparameters count with their defaults filled in, so `kd` and `kd temperature=4` are one group."""
        flat = cfg.flatten(effective_config(self.config))
        items = {k: v for k, v in flat.items() if k not in IGNORED
                 and (method_keys or k.split(".")[0] not in METHOD_KEYS)}
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in items.items()))

    def at(self, epoch: str) -> dict[str, Any]:
        """The metrics line of the last epoch, or of the best test top-1 (first one, as the trainer picks)."""
        if epoch == "last":
            return self.metrics[-1]
        finite = [r for r in self.metrics if math.isfinite(_number(r.get("test_top1")))] or self.metrics[-1:]
        return max(finite, key=lambda r: (_number(r.get("test_top1")), -int(r.get("epoch", 0))))

    def diverged(self, epoch: str) -> bool:
        """Whether the chosen epoch's test outputs were not finite (the trainer logs its numbers as null)."""
        record = self.at(epoch)
        return bool(record.get("diverged")) or not math.isfinite(_number(record.get("test_top1")))


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with each method's defaults (and the default CE weight) written out, and every key the saved
    config lacks (added to kdlab after the run) at its default, as a resume counts it: a run saved before `qat`
    existed and one saved with `qat: false` are one group."""
    config = cfg.merge(cfg.to_dict(cfg.Config()), config)
    spec = config.get("method")
    if not spec:
        return config
    config = dict(config)
    given = config.get("methods") or {}
    methods: dict[str, Any] = {}
    for index, name in enumerate(part.strip() for part in str(spec).split("+")):
        try:
            cls = get(name)
        except KdlabError:  # a method this version does not know: compare what was written
            methods[name] = given.get(name, {})
            continue
        methods[name] = {**cls.defaults, **given.get(name, {})}
        if index == 0 and config.get("ce_weight") is None:
            config["ce_weight"] = cls.ce_weight
    config["methods"] = methods
    return config


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_run(run_dir: Path) -> RunRecord | None:
    # A corrupt config.yaml is not an unfinished run: name the file instead of "no summary.json yet".
    try:
        config = cfg.yaml_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdlabError(f"{run_dir / 'config.yaml'} is not valid YAML{where}; restore it (kdlab writes it when a "
                         f"run starts) or move the run out of the folders you report on") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KdlabError(f"{run_dir / 'config.yaml'} cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                         f"restore it or move the run out of the folders you report on") from None
    if not isinstance(config, dict):
        raise KdlabError(f"{run_dir / 'config.yaml'} holds no mapping of config keys (a {type(config).__name__}); "
                         f"restore it or move the run out of the folders you report on")
    summary = _read_json(run_dir / "summary.json")
    if (run_dir / "summary.json").is_file() and not isinstance(summary, dict):
        raise KdlabError(f"{run_dir / 'summary.json'} is not a valid summary (corrupt JSON); rebuild it with "
                         f"`kdlab train/distill ... --out {run_dir} --resume` or move the run out of the folders "
                         f"you report on")
    metrics = read_metrics(run_dir)
    if not isinstance(summary, dict) or not metrics:
        return None
    return RunRecord(run_dir, config, summary, metrics)


def cohort_members(record: RunRecord) -> list[RunRecord]:
    """A deep-mutual-learning run as one record per cohort student: method 'dml' or 'dml_e', no teacher, its
    own test metrics (test_<name>_top1 -> test_top1, ...), so it sits beside the baseline of its architecture.
    Students of one cohort with the same architecture share a cell and are averaged per run: n counts seeds."""
    arch = record.summary["arch"]
    members = []
    for name, model in zip(cohort_names(arch["cohort"]), arch["cohort"], strict=True):
        prefix = f"test_{name}_"
        metrics = []
        for line in record.metrics:
            own = {k: v for k, v in line.items() if not k.startswith("test_")}
            own.update({"test_" + k[len(prefix):]: v for k, v in line.items() if k.startswith(prefix)})
            metrics.append(own)
        if not any("test_top1" in line for line in metrics):
            continue  # an older cohort run without per-student metrics (epochs --eval-every skipped have none)
        config = {**record.config, "model": model, "method": arch.get("variant", "dml"), "teachers": []}
        summary = {**record.summary, "arch": {**arch, "model": model},
                   "params": record.summary.get("params") if model == arch["cohort"][0] else None}
        members.append(RunRecord(record.run_dir, config, summary, metrics, member=name))
    return members


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


@dataclass
class Collection:
    runs: list[RunRecord]
    unfinished: list[Path] = field(default_factory=list)


def find_runs(paths: Iterable[str | Path]) -> Collection:
    """All finished runs under `paths` (run directories or folders holding them, searched recursively)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise KdlabError(f"'{path}' does not exist; pass run directories or a sweep root")
        found += [path] if _is_run_dir(path) else _run_dirs_below(path)
    records, unfinished = [], []
    seen: set[Path] = set()
    for run_dir in sorted(found):
        key = run_dir.resolve()
        if key in seen:
            continue
        seen.add(key)
        record = _read_run(run_dir)
        if record is None:
            unfinished.append(run_dir)
        elif "cohort" in record.summary.get("arch", {}):
            records += cohort_members(record)
        else:
            records.append(record)
    if not records:
        where = ", ".join(str(p) for p in paths)
        extra = f" ({len(unfinished)} unfinished: no summary.json yet)" if unfinished else ""
        raise KdlabError(f"no finished kdlab runs under {where}{extra}; pass run directories (config.yaml + "
                         f"metrics.jsonl + summary.json) or a sweep root")
    _link_teachers(records)
    return Collection(records, unfinished)


def _run_dirs_below(path: Path) -> list[Path]:
    """The run directories below `path`, searched depth first; a run directory's own subfolders (init/, tb/)
    are not runs of their own."""
    found: list[Path] = []
    stack = [path] if path.is_dir() else []
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir(), reverse=True):
            if child.is_dir():
                (found.append(child) if _is_run_dir(child) else stack.append(child))
    return found


def _link_teachers(records: list[RunRecord]) -> None:
    """Point each distillation run at its teacher's run: the reported run at that path; else a reported run
    whose path ends the same way (the sweep root was moved or copied, e.g. docs/results-cpu/runs); else the
    run still on disk at that path. Reported runs come first (on tails of 3+ parts, such as a sweep's
    'teachers/resnet20/s0'), so a report of a copied sweep does not depend on what else is on disk."""
    by_dir = {r.run_dir.resolve(): r for r in records if not r.member}
    loaded: dict[Path, RunRecord | None] = {}
    for record in records:
        teachers = record.config.get("teachers") or []
        if not teachers:
            continue
        teacher_dir = Path(str(teachers[0])).parent
        record.teacher_dir = teacher_dir
        resolved = teacher_dir.resolve()
        record.teacher = by_dir.get(resolved) or _moved_teacher(teacher_dir, by_dir, min_depth=3)
        if record.teacher is None and teacher_dir.is_dir():
            if resolved not in loaded:
                loaded[resolved] = _read_run(teacher_dir)
            record.teacher = loaded[resolved]
        if record.teacher is None:  # a short tail ('resnet20/s0') only where nothing better exists
            record.teacher = _moved_teacher(teacher_dir, by_dir, min_depth=2)


def _moved_teacher(teacher_dir: Path, by_dir: dict[Path, RunRecord], min_depth: int) -> RunRecord | None:
    """The one reported run whose path ends like teacher_dir (longest unique tail of min_depth-4 parts)."""
    parts = teacher_dir.parts
    for depth in range(min(len(parts), 4), min_depth - 1, -1):
        matches = [r for d, r in by_dir.items() if d.parts[-depth:] == parts[-depth:]]
        if len(matches) == 1:
            return matches[0]
    return None


# ------------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Column:
    data: str
    fraction: float
    teacher: str | None  # teacher model name (None: baseline-only column)
    student: str


@dataclass
class Cell:
    runs: list[RunRecord]
    baseline: Cell | None = None
    baseline_differs: bool = False  # the only baseline there is was trained with other settings

    def values(self, metric: str, epoch: str) -> list[float]:
        """One number per seed: a run's, or the mean of the students one cohort run has in this cell (a cohort's
        students are not seeds); a diverged run has none, so no mean includes it."""
        groups: dict[Any, list[float]] = {}
        for r in self.runs:
            if not r.diverged(epoch):
                groups.setdefault(_seed_key(r), []).append(_number(r.at(epoch).get(f"test_{metric}")))
        return [sum(v) / len(v) for v in groups.values()]

    def diverged(self, epoch: str) -> int:
        return len({_seed_key(r) for r in self.runs if r.diverged(epoch)})

    @property
    def seeds(self) -> int:
        """Independent runs in the cell (a cohort run counts once, whatever its number of students)."""
        return len({_seed_key(r) for r in self.runs})

    def stats(self, metric: str, epoch: str) -> tuple[float, float, int]:
        values = self.values(metric, epoch)
        mean, std = mean_std(values)
        return mean, std, len(values)

    def gain(self, metric: str, epoch: str) -> float | None:
        if self.baseline is None:
            return None
        return self.stats(metric, epoch)[0] - self.baseline.stats(metric, epoch)[0]


def _seed_key(run: RunRecord) -> Any:
    """What makes a run independent: its directory for a cohort's students, the record itself otherwise."""
    return ("cohort", run.run_dir) if run.member else id(run)


@dataclass
class Table:
    """Cells by (column, row label); rows ordered teacher, baseline(s), then methods."""

    columns: list[Column]
    rows: list[str]
    cells: dict[tuple[Column, str], Cell]
    params: dict[str, int | None]


def _variant_labels(groups: dict[tuple, list[RunRecord]], name: str) -> dict[tuple, str]:
    """'dkd' when a method has one setting in a column; 'dkd (methods.dkd.beta=2.0)' when several."""
    if len(groups) == 1:
        return {key: name for key in groups}
    flats = {key: dict(key) for key in groups}
    keys = sorted({k for flat in flats.values() for k in flat})
    differing = [k for k in keys if len({flats[g].get(k) for g in groups}) > 1]
    settings = {g: ", ".join(f"{_cli_key(k)}={_shown(flats[g].get(k))}" for k in differing) for g in groups}
    return {g: f"{name} ({settings[g]})" for g in groups}


def _cli_key(key: str) -> str:
    return "method." + key[len("methods."):] if key.startswith("methods.") else key


def _shown(value: str | None) -> str:
    return "-" if value is None else str(json.loads(value))


Groups = dict[tuple, list[RunRecord]]  # signature -> the runs of one setting


def build_table(runs: list[RunRecord]) -> Table:
    """Group finished runs into cells: columns by (data, fraction, teacher, student), rows by method."""
    distill = [r for r in runs if r.config.get("teachers") or r.method]
    base_groups = group_baselines(baseline_runs(runs, distill))
    dist_groups = group_distillations(distill)
    columns = table_columns(dist_groups, base_groups)
    cells: dict[tuple[Column, str], Cell] = {}
    rows: dict[str, int] = {}  # label -> sort rank
    for column in columns:
        cells.update(column_cells(column, base_groups.get((column.data, column.fraction, column.student), {}),
                                  dist_groups.get(column, {}), rows))
    ordered = sorted(rows, key=lambda label: (rows[label], label))
    return Table(columns, ordered, cells, param_counts(runs, distill))


def baseline_runs(runs: list[RunRecord], distill: list[RunRecord]) -> list[RunRecord]:
    """The training runs that are baselines: all but the teachers, and a teacher too when some distillation run
    trains that student on that data (Tf-KD self-training takes the baseline as its teacher)."""
    teacher_dirs = {r.teacher.run_dir.resolve() for r in runs if r.teacher is not None}
    distill_ids = {id(r) for r in distill}
    student_keys = {(r.data, r.fraction, r.model) for r in distill}
    return [r for r in runs if id(r) not in distill_ids
            and (r.run_dir.resolve() not in teacher_dirs or (r.data, r.fraction, r.model) in student_keys)]


def param_counts(runs: list[RunRecord], distill: list[RunRecord]) -> dict[str, int | None]:
    """Parameters per model name, from the first run of it (teachers of distillation runs included)."""
    params: dict[str, int | None] = {}
    for r in runs + [r.teacher for r in distill if r.teacher is not None]:
        params.setdefault(r.model, r.params)
    return params


def group_baselines(baselines: list[RunRecord]) -> dict[tuple[str, float, str], Groups]:
    """(data, fraction, model) -> the baselines' settings (method keys left out) -> runs."""
    groups: dict[tuple[str, float, str], Groups] = defaultdict(lambda: defaultdict(list))
    for r in baselines:
        groups[(r.data, r.fraction, r.model)][r.signature(method_keys=False)].append(r)
    return groups


def group_distillations(distill: list[RunRecord]) -> dict[Column, dict[str, Groups]]:
    """Column -> method -> settings -> runs; the column's teacher is the teacher run's model. A chain's link whose
    teacher is itself a distillation run (TAKD: teacher -> assistant -> student) goes into the column of the
    chain's first teacher, in the row '<method> via <assistant>[ → ...]'; the assistant's own link is an ordinary
    run in the column teacher → assistant."""
    groups: dict[Column, dict[str, Groups]] = defaultdict(lambda: defaultdict(dict))
    for r in distill:
        root, assistants = chain_of(r)
        row = r.method or "?"
        if assistants:
            teacher = root.model if root is not None else _teacher_name(assistants[0])
            row = f"{row} via {' → '.join(a.model for a in assistants)}"
        else:
            teacher = r.teacher.model if r.teacher is not None else _teacher_name(r)
        column = Column(r.data, r.fraction, teacher, r.model)
        groups[column][row].setdefault(r.signature(), []).append(r)
    return groups


def _is_distillation(record: RunRecord) -> bool:
    return bool(record.config.get("teachers") or record.method)


def chain_of(record: RunRecord) -> tuple[RunRecord | None, list[RunRecord]]:
    """(first teacher, assistants from it towards the student) of a distillation run: (its teacher, []) unless
    its teacher is itself a distillation run (a TAKD chain, docs/experiments.md#chains-teacher-assistants-takd)."""
    assistants: list[RunRecord] = []
    teacher = record.teacher
    while teacher is not None and _is_distillation(teacher) and all(teacher is not a for a in assistants):
        assistants.insert(0, teacher)
        if teacher.teacher is None and teacher.config.get("teachers"):  # an assistant read from disk, not linked
            teacher.teacher_dir = Path(str(teacher.config["teachers"][0])).parent
            teacher.teacher = _read_run(teacher.teacher_dir) if teacher.teacher_dir.is_dir() else None
        teacher = teacher.teacher
    return teacher, assistants


def table_columns(dist_groups: dict[Column, dict[str, Groups]],
                  base_groups: dict[tuple[str, float, str], Groups]) -> list[Column]:
    """Teacher→student columns, then a baseline-only column for each student no pair column holds."""
    columns = sorted(dist_groups, key=lambda c: (c.data, -c.fraction, c.teacher or "", c.student))
    students_with_pairs = {(c.data, c.fraction, c.student) for c in columns}
    columns += sorted((Column(d, f, None, s) for (d, f, s) in base_groups if (d, f, s) not in students_with_pairs),
                      key=lambda c: (c.data, -c.fraction, c.student))
    return columns


def column_cells(column: Column, base_variants: Groups, method_variants: dict[str, Groups],
                 rows: dict[str, int]) -> dict[tuple[Column, str], Cell]:
    """One column's cells: its baseline(s), each method setting (with the baseline it is compared to) and the
    teacher; the row labels used go into `rows` with their rank (teacher 0, baselines 1, methods 2)."""
    cells: dict[tuple[Column, str], Cell] = {}
    base_labels = _variant_labels(base_variants, BASELINE)
    base_cells = {key: Cell(group) for key, group in base_variants.items()}
    for key, cell in base_cells.items():
        cells[(column, base_labels[key])] = cell
        rows.setdefault(base_labels[key], 1)
    teachers: dict[Path, RunRecord] = {}
    for method, variants in method_variants.items():
        labels = _variant_labels(variants, method)
        for key, group in variants.items():
            cells[(column, labels[key])] = method_cell(group, key, base_cells)
            rows.setdefault(labels[key], 2)
            roots = [chain_of(r)[0] for r in group]
            teachers.update({t.run_dir.resolve(): t for t in roots if t is not None})
    if teachers:
        cells[(column, TEACHER)] = Cell(list(teachers.values()))
        rows.setdefault(TEACHER, 0)
    return cells


def method_cell(group: list[RunRecord], signature: tuple, base_cells: dict[tuple, Cell]) -> Cell:
    """A method setting's cell, compared with the baseline trained with the same settings (its signature without
    the method keys); failing that, with the column's only baseline, marked as differing; else with none."""
    own = tuple(item for item in signature if item[0].split(".")[0] not in METHOD_KEYS)
    baseline = base_cells.get(own)
    if baseline is None and len(base_cells) == 1:
        return Cell(group, next(iter(base_cells.values())), True)
    return Cell(group, baseline)


def _teacher_name(record: RunRecord) -> str | None:
    """A teacher whose run directory is gone: its model name if recorded, else its folder's name; None for
    teacher-free methods (Tf-KD's virtual teacher), which share the student's baseline column."""
    if record.config.get("teacher_model"):
        return str(record.config["teacher_model"])
    return record.teacher_dir.name if record.teacher_dir else None


# ------------------------------------------------------------------------------------------------ format
def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.3f}" if metric == "nll" else f"{value:.2f}"


def format_cell(cell: Cell | None, metric: str, epoch: str) -> str:
    """'75.01 ± 0.21 (+1.56) [n=3]'; no ± for a single run, no gain for teachers and baselines."""
    if cell is None:
        return "–"
    mean, std, n = cell.stats(metric, epoch)
    diverged = cell.diverged(epoch)
    if n == 0:
        return f"diverged [n={diverged}]"
    text = _fmt(mean, metric) + (f" ± {_fmt(std, metric)}" if n > 1 else "")
    gain = cell.gain(metric, epoch)
    if gain is not None and not math.isnan(gain):
        text += f" ({'+' if gain >= 0 else '-'}{_fmt(abs(gain), metric)}{'*' if cell.baseline_differs else ''})"
    return f"{text} [n={n}{f', {diverged} diverged' if diverged else ''}]"


def _params(value: int | None) -> str:
    return "?" if value is None else f"{value / 1e6:.2f}M"


def _data_label(data: str, fraction: float) -> str:
    return f"{data}, {'full training set' if fraction >= 1 else f'{fraction:.0%} of the training set'}"


def _legend(metric: str) -> str:
    worse = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    return (f"mean ± sample std over seeds (difference from the baseline student; {worse}) "
            f"[n = runs in the cell]")


def markdown_tables(table: Table, metrics: list[str], epochs: list[str]) -> str:
    """One table per (data, fraction) (methods x pairs), plus a fraction table per pair when fractions vary."""
    blocks = []
    by_data: dict[tuple[str, float], list[Column]] = defaultdict(list)
    for column in table.columns:
        by_data[(column.data, column.fraction)].append(column)
    for metric in metrics:
        for epoch in epochs:
            for (data, fraction), columns in by_data.items():
                heads = [f"{c.teacher} [{_params(table.params.get(c.teacher))}] → {c.student} "
                         f"[{_params(table.params.get(c.student))}]" if c.teacher else
                         f"{c.student} [{_params(table.params.get(c.student))}]" for c in columns]
                blocks.append(_markdown_block(
                    f"### {METRICS[metric]} — {EPOCHS[epoch]} — {_data_label(data, fraction)}", _legend(metric),
                    "teacher → student", heads, table, columns, metric, epoch))
            for (data, teacher, student), columns in _fraction_groups(table).items():
                heads = [f"{c.fraction:.0%} data" for c in columns]
                pair = f"{teacher} → {student}" if teacher else student
                blocks.append(_markdown_block(
                    f"### {METRICS[metric]} by training-data fraction — {EPOCHS[epoch]} — {data}, {pair}",
                    _legend(metric), "method", heads, table, columns, metric, epoch))
    return "\n\n".join(blocks) + "\n"


def _fraction_groups(table: Table) -> dict[tuple[str, str | None, str], list[Column]]:
    groups: dict[tuple[str, str | None, str], list[Column]] = defaultdict(list)
    for column in table.columns:
        groups[(column.data, column.teacher, column.student)].append(column)
    return {key: sorted(cols, key=lambda c: -c.fraction) for key, cols in groups.items() if len(cols) > 1}


def _markdown_block(title: str, legend: str, corner: str, heads: list[str], table: Table, columns: list[Column],
                    metric: str, epoch: str) -> str:
    rows = [label for label in table.rows if any((c, label) in table.cells for c in columns)]
    lines = [title, "", legend, "", f"| {corner} | " + " | ".join(heads) + " |",
             "| :--- | " + " | ".join(":---:" for _ in heads) + " |"]
    for label in rows:
        cells = [format_cell(table.cells.get((c, label)), metric, epoch) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ("data", "fraction", "teacher", "teacher_params", "student", "student_params", "method", "epoch",
              "metric", "mean", "std", "n", "diverged", "gain", "runs")


def csv_rows(table: Table, metrics: list[str], epochs: list[str]) -> list[dict[str, Any]]:
    """One row per cell, metric and epoch choice (tidy format)."""
    rows = []
    for column, label in itertools.product(table.columns, table.rows):
        cell = table.cells.get((column, label))
        if cell is None:
            continue
        for metric, epoch in itertools.product(metrics, epochs):
            mean, std, n = cell.stats(metric, epoch)
            gain = cell.gain(metric, epoch)
            rows.append({"data": column.data, "fraction": column.fraction, "teacher": column.teacher or "",
                         "teacher_params": table.params.get(column.teacher) if column.teacher else "",
                         "student": column.student, "student_params": table.params.get(column.student),
                         "method": label, "epoch": epoch, "metric": metric, "mean": mean, "std": std, "n": n,
                         "diverged": cell.diverged(epoch), "gain": "" if gain is None else gain,
                         "runs": ";".join(str(r.run_dir) for r in cell.runs)})
    return rows


def format_csv(table: Table, metrics: list[str], epochs: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(table, metrics, epochs))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ entry
def parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower().replace("-", "") for m in text.split(",") if m.strip()]
    for name in names:
        if name not in METRICS:
            raise KdlabError(f"unknown metric '{name}'{closest(name, METRICS)} in --metrics; choose from "
                             f"{', '.join(METRICS)}, e.g. --metrics top1,ece")
    if not names:
        raise KdlabError("--metrics is empty; pass e.g. --metrics top1,ece")
    return names


def make_report(paths: list[str], fmt: str = "md", epoch: str = "both", metrics: str = "top1,ece",
                out: str | None = None, plots: str | None = None) -> str:
    """The report text (also written to `out`), and PNG plots in `plots` when given."""
    if fmt not in ("md", "csv"):
        raise KdlabError(f"unknown report format '{fmt}'; use --format md or --format csv")
    if epoch not in ("best", "last", "both"):
        raise KdlabError(f"unknown --epoch '{epoch}'; use best, last or both")
    metric_names = parse_metrics(metrics)
    epochs = ["best", "last"] if epoch == "both" else [epoch]
    collection = find_runs(paths)
    table = build_table(collection.runs)
    if fmt == "csv":
        text = format_csv(table, metric_names, epochs)
    else:
        notes = [f"{len({r.run_dir for r in collection.runs})} finished runs"]
        cohorts = {r.run_dir for r in collection.runs if r.member}
        if cohorts:
            notes.append(f"{len(cohorts)} of them deep-mutual-learning cohorts; a cohort's students of one "
                         f"architecture share a cell, averaged per run, so n counts runs (seeds), not students")
        if collection.unfinished:
            notes.append(f"{len(collection.unfinished)} unfinished run(s) left out (no summary.json yet)")
        repeated = sum(len({(r.seed, r.member) for r in cell.runs}) < len(cell.runs) for cell in table.cells.values())
        if repeated:
            notes.append(f"{repeated} cell(s) hold several runs of one seed (copies of a run?); n counts them all")
        subsets = sorted({int(r.config["eval_subset"]) for r in collection.runs if r.config.get("eval_subset")})
        if subsets:
            notes.append(f"{sum(bool(r.config.get('eval_subset')) for r in collection.runs)} run(s) were evaluated "
                         f"on a {'/'.join(map(str, subsets))}-image subset of the test set (--eval-subset), not on "
                         f"all of it")
        if any(cell.baseline_differs for cell in table.cells.values()):
            notes.append("* gain against the only baseline there is, trained with other settings (epochs, "
                         "precision, ...)")
        text = markdown_tables(table, metric_names, epochs) + "\n" + "; ".join(notes) + ".\n"
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if plots:
        from kdlab.experiments.plots import report_plots

        report_plots(table, Path(plots))
    return text
