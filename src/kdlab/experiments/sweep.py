"""`kdlab sweep FILE.yaml`: a grid of ordinary runs over (data, fraction, teacher, student, method, seed).

Every grid point is a normal run directory under the sweep root, named so a person can read it:

    <root>/<data>/teachers/<teacher>/s<seed>                    teachers, trained first (on the full data)
    <root>/<data>[-f0.25]/students/<student>/s<seed>            baseline students (cross-entropy only)
    <root>/<data>[-f0.25]/<teacher>-<student>/<method>/s<seed>  distillation runs (teacher = its best.pt)
    <root>/<data>[-f0.25]/<chain>/<teacher>-<assistant>/s<seed>  chains (TAKD): one distillation run per link,
    <root>/<data>[-f0.25]/<chain>/<teacher>-<assistant>-<student>/s<seed>   each from the previous link's best.pt

Runs execute one after another in this process. Re-running the same file is safe: a finished run
(summary.json and the final epoch in metrics.jsonl) is skipped, a killed one (last.pt, no summary) resumes
as with `--resume`, and a run directory made with other settings stops the sweep before anything starts,
so results of different settings never mix. The YAML schema is checked key by key (see docs/experiments.md).
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab import config as cfg
from kdlab import data as datasets
from kdlab import models
from kdlab.engine.logging import read_metrics
from kdlab.errors import KdlabError, closest
from kdlab.experiments.parallel import done_line, execute_parallel
from kdlab.methods import get, parse
from kdlab.runner.distill import apply_method_optimizer, run_distill
from kdlab.runner.train import run_train

# ------------------------------------------------------------------------------------------------ schema
SWEEP_KEYS = ("out", "data", "data_root", "fractions", "seeds", "config", "teachers", "students", "pairs",
              "methods", "chains")
TEACHER_KEYS = ("model", "seed", "config", "checkpoint")
STUDENT_KEYS = ("model", "config")
METHOD_KEYS = ("method", "seeds", "hparams", "config", "pairs", "per_pair")
PER_PAIR_KEYS = ("hparams", "config")
PAIR_KEYS = ("teacher", "student")
CHAIN_KEYS = ("models", "method", "seeds", "hparams", "config", "per_link")  # TAKD: teacher -> assistant(s) -> student
PER_LINK_KEYS = ("hparams", "config")
BASELINE = "baseline"  # the method entry that trains the student alone
# Config keys the sweep sets itself for every run; a config layer must not set them.
MANAGED_KEYS = {"model": "students/teachers", "seed": "seeds", "out": "out", "teachers": "teachers",
                "method": "methods", "teacher_model": "teachers", "teacher_weights": "teachers"}
MANAGED_DATA_KEYS = {"name": "data", "fraction": "fractions"}
# Keys that do not change what a run computes; a saved run is not 'changed' when only these differ.
ENVIRONMENT_KEYS = {"out", "teachers", "threads", "device", "log_every", "loggers", "data.root", "data.workers"}
STATES = ("done", "resume", "new", "changed", "external")


@dataclass
class PlannedRun:
    """One grid point: its run directory, its validated Config and the layer it was built from."""

    name: str  # path relative to the sweep root, e.g. "cifar100/resnet56-resnet20/dkd/s0"
    kind: str  # teacher | baseline | distill
    run_dir: Path
    config: cfg.Config | None  # None for an external teacher checkpoint
    layer: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None  # name of the teacher run a distill run needs
    link: bool = False  # a link of a chain (TAKD) after the first: its teacher is the previous link's run
    state: str = "new"
    note: str = ""

    def command(self) -> str:
        """The equivalent `kdlab train|distill` command line (same layers, so the same Config)."""
        if self.config is None:
            return f"(existing teacher checkpoint {self.layer.get('checkpoint')})"
        return command_line(self.layer, "train" if self.kind in ("teacher", BASELINE) else "distill",
                            resume=self.state == "resume")


@dataclass
class Sweep:
    path: Path
    root: Path
    runs: list[PlannedRun]

    def counts(self, runs: list[PlannedRun] | None = None) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for run in self.runs if runs is None else runs:
            counts[run.state] += 1
        return {k: v for k, v in counts.items() if v}


# ------------------------------------------------------------------------------------------------ checks
class _Where:
    """Prefixes every error with the sweep file, so a message names where to fix it."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, message: str) -> KdlabError:
        return KdlabError(f"sweep file '{self.path}': {message}")

    def keys(self, mapping: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise self.error(f"'{where}' must be a mapping of keys to values, got {mapping!r}")
        for key in mapping:
            if key not in allowed:
                full = f"{where}.{key}" if where else str(key)
                raise self.error(f"unknown key '{full}'{closest(str(key), allowed)}; "
                                 f"valid keys there: {', '.join(allowed)}")
        return mapping

    def layer(self, value: Any, where: str) -> dict[str, Any]:
        """A config layer (ordinary kdlab config keys) that must leave the sweep's own keys alone."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"'{where}' must be a mapping of kdlab config keys, e.g. {{optim: {{epochs: 30}}}}")
        value = dict(value)
        if isinstance(value.get("method"), dict):  # `method: {kd: {...}}` means `methods:`, as in load_yaml
            value["methods"] = cfg.merge(value.get("methods", {}), value.pop("method"))
        for key, owner in MANAGED_KEYS.items():
            if key in value:
                raise self.error(f"'{where}.{key}' is set by the sweep; use the sweep's '{owner}' key instead")
        data = value.get("data")
        if isinstance(data, dict):
            for key, owner in MANAGED_DATA_KEYS.items():
                if key in data:
                    raise self.error(f"'{where}.data.{key}' is set by the sweep; use its '{owner}' key instead")
        return value

    def name_list(self, value: Any, where: str, kind: type = str) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, kind):
                raise self.error(f"'{where}' must be a {kind.__name__} or a list of them, got {item!r}")
        return items

    def dir_name(self, name: Any, where: str) -> str:
        name = str(name)
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise self.error(f"'{where}' name '{name}' cannot be a directory name; use letters, digits, _ or -")
        return name


def fraction_suffix(fraction: float | None) -> str:
    """'' for the full training split, '-f0.25' for a quarter of it."""
    return "" if fraction is None or fraction >= 1 else f"-f{fraction:g}"


def _normalise_fraction(where: _Where, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise where.error(f"'fractions' entries must be numbers in (0, 1] (1 = the full data), got {value!r}")
    return None if value >= 1 else float(value)


def _hparams_layer(where: _Where, spec: str, hparams: Any, at: str) -> dict[str, Any]:
    """`hparams` of a method entry -> a `methods:` layer. A single method takes {hp: value}; a
    combination like kd+at takes {kd: {...}, at: {...}}."""
    if hparams is None:
        return {}
    if not isinstance(hparams, dict):
        raise where.error(f"'{at}' must be a mapping of hyperparameters, e.g. {{beta: 2.0}}")
    names = [part.strip() for part in spec.split("+") if part.strip()]
    if hparams and all(key in names and isinstance(value, dict) for key, value in hparams.items()):
        return {"methods": hparams}
    if len(names) == 1:
        return {"methods": {names[0]: hparams}}
    raise where.error(f"'{at}' of the combination '{spec}' must be given per method, e.g. "
                      f"{{{names[0]}: {{weight: 1.0}}}}")


# ------------------------------------------------------------------------------------------------ plan
def load_sweep(path: str | Path, out: str | None = None, data_root: str | None = None) -> Sweep:
    """Read and validate a sweep file and plan every run (with its current state on disk)."""
    path = Path(path)
    where = _Where(path)
    if not path.is_file():
        raise KdlabError(f"sweep file '{path}' does not exist; check the path")
    try:
        spec = cfg.yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise where.error(f"not valid YAML{f' at line {mark.line + 1}' if mark else ''}; fix the syntax") from None
    spec = where.keys(spec, SWEEP_KEYS, "")
    root_text = out or spec.get("out")
    if not root_text:
        raise where.error("no sweep root; add 'out: runs/sweeps/<name>' or pass --out DIR")
    root = Path(str(root_text))
    data_root = data_root or spec.get("data_root")
    return Sweep(path, root, plan(spec, where, root, None if data_root is None else str(data_root)))


def plan(spec: dict[str, Any], where: _Where, root: Path, data_root: str | None) -> list[PlannedRun]:
    """Every run of a checked sweep spec, in execution order: per data set its teachers, then seed by seed."""
    data_names = _data_names(where, spec)
    fractions = list(dict.fromkeys(_normalise_fraction(where, f) for f in where.name_list(
        spec.get("fractions", [None]), "fractions", object)))  # 1.0 and null are one grid point
    seeds = list(dict.fromkeys(where.name_list(spec.get("seeds", [0]), "seeds", int)))
    base = where.layer(spec.get("config"), "config")
    teachers = _teacher_entries(where, spec.get("teachers"))
    chained = bool(spec.get("chains"))  # a sweep of chains alone needs no students or methods
    students = _student_entries(where, spec.get("students")) if spec.get("students") or not chained else {}
    pairs = _pairs(where, spec.get("pairs"), teachers, students)
    method_entries = (_method_entries(where, spec.get("methods"), [f"{t}-{s}" for t, s in pairs], seeds)
                      if spec.get("methods") or not chained else {})
    if not teachers and any(m["method"] for m in method_entries.values()):
        raise where.error("distillation methods need a teacher; add one under 'teachers:' (or keep only baseline)")
    chains = _chain_entries(where, spec.get("chains"), teachers, students, pairs, seeds)
    grid = _Grid(where, root, base, teachers, students, pairs, method_entries, fractions, chains)
    return [run for data_name in data_names for run in grid.runs(data_name, data_root)]


def _data_names(where: _Where, spec: dict[str, Any]) -> list[str]:
    if "data" not in spec:
        raise where.error("no data set; add e.g. 'data: cifar100' (or a list of names)")
    names = where.name_list(spec["data"], "data")
    for name in names:
        if name not in datasets.list_datasets():
            raise where.error(f"unknown data set '{name}'{closest(name, datasets.list_datasets())}; "
                              f"see 'kdlab list datasets'")
    return names


def _check_model(where: _Where, name: Any, at: str) -> str:
    try:
        models.model_info(str(name))
    except KdlabError as exc:
        raise where.error(f"'{at}': {exc}") from None
    return str(name)


def _teacher_entries(where: _Where, value: Any) -> dict[str, dict[str, Any]]:
    """`teachers:` (a list of model names or a mapping name -> entry) as name -> model, seed, config, checkpoint."""
    raw = value or {}
    if isinstance(raw, list):
        raw = {name: None for name in where.name_list(raw, "teachers")}
    if not isinstance(raw, dict):
        raise where.error("'teachers' must map names to entries (model, seed, config, checkpoint)")
    teachers: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        name = where.dir_name(name, "teachers")
        entry = where.keys(entry, TEACHER_KEYS, f"teachers.{name}")
        seed = entry.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise where.error(f"'teachers.{name}.seed' must be a whole number, got {seed!r}")
        teachers[name] = {"model": _check_model(where, entry.get("model", name), f"teachers.{name}.model"),
                          "seed": seed, "config": where.layer(entry.get("config"), f"teachers.{name}.config"),
                          "checkpoint": entry.get("checkpoint")}
    return teachers


def _student_entries(where: _Where, value: Any) -> dict[str, dict[str, Any]]:
    """`students:` (a list of model names or a mapping name -> entry) as name -> model, config."""
    if not value:
        raise where.error("no students; add e.g. 'students: [resnet20]'")
    if not isinstance(value, dict):
        value = {name: None for name in where.name_list(value, "students")}
    students: dict[str, dict[str, Any]] = {}
    for name, entry in value.items():
        name = where.dir_name(name, "students")
        entry = where.keys(entry, STUDENT_KEYS, f"students.{name}")
        students[name] = {"model": _check_model(where, entry.get("model", name), f"students.{name}.model"),
                          "config": where.layer(entry.get("config"), f"students.{name}.config")}
    return students


@dataclass
class _Grid:
    """The checked entries of a sweep file; `runs` lays them out as the run directories of one data set."""

    where: _Where
    root: Path
    base: dict[str, Any]  # the sweep's `config:` layer
    teachers: dict[str, dict[str, Any]]
    students: dict[str, dict[str, Any]]
    pairs: list[tuple[str, str]]  # (teacher, student)
    methods: dict[str, dict[str, Any]]  # row name -> method entry (_method_entries)
    fractions: list[float | None]
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)  # chain name -> entry (_chain_entries)

    def runs(self, data_name: str, data_root: str | None) -> list[PlannedRun]:
        managed_data = {"name": data_name, **({"root": data_root} if data_root else {})}
        teacher_runs = {tname: self.teacher_run(data_name, managed_data, tname, teacher)
                        for tname, teacher in self.teachers.items()}
        runs = list(teacher_runs.values())
        # Seed by seed, so the first complete table (every method, one seed) is there as early as possible.
        entries = [*self.methods.values(), *self.chains.values()]
        for seed in sorted({s for entry in entries for s in entry["seeds"]}):
            for fraction in self.fractions:
                prefix = f"{data_name}{fraction_suffix(fraction)}"
                data_layer = {**managed_data, "fraction": fraction}
                runs += self.baseline_runs(prefix, data_layer, seed)
                runs += self.distill_runs(prefix, data_layer, seed, teacher_runs)
                runs += self.chain_runs(prefix, data_layer, seed, teacher_runs)
        return runs

    def teacher_run(self, data_name: str, managed_data: dict[str, Any], tname: str,
                    teacher: dict[str, Any]) -> PlannedRun:
        """A teacher trained by the sweep (on the full data), or an existing checkpoint (state 'external')."""
        name = f"{data_name}/teachers/{tname}/s{teacher['seed']}"
        if teacher["checkpoint"]:
            path = Path(str(teacher["checkpoint"]))
            return PlannedRun(name, "teacher", path.parent, None, {"checkpoint": str(path)}, state="external",
                              note="" if path.is_file() else "checkpoint missing")
        layer = cfg.merge(cfg.merge(self.base, teacher["config"]),
                          {"model": teacher["model"], "seed": teacher["seed"], "data": managed_data,
                           "out": str(self.root / name)})
        return _build_run(self.where, name, "teacher", self.root, layer)

    def baseline_runs(self, prefix: str, data_layer: dict[str, Any], seed: int) -> list[PlannedRun]:
        """Every student trained alone, when the `baseline` row runs this seed."""
        if seed not in self.methods.get(BASELINE, {}).get("seeds", []):
            return []
        runs = []
        for sname, student in self.students.items():
            name = f"{prefix}/students/{sname}/s{seed}"
            layer = cfg.merge(cfg.merge(self.base, student["config"]),
                              {"model": student["model"], "seed": seed, "data": data_layer,
                               "out": str(self.root / name)})
            runs.append(_build_run(self.where, name, BASELINE, self.root, layer))
        return runs

    def distill_runs(self, prefix: str, data_layer: dict[str, Any], seed: int,
                     teacher_runs: dict[str, PlannedRun]) -> list[PlannedRun]:
        """Every (pair, method row) that runs this seed, distilled from the pair's teacher run."""
        runs = []
        for tname, sname in self.pairs:
            pair_name, teacher_run = f"{tname}-{sname}", teacher_runs[tname]
            for mname, entry in self.methods.items():
                if not entry["method"] or seed not in entry["seeds"] or pair_name not in entry["pairs"]:
                    continue
                name = f"{prefix}/{pair_name}/{mname}/s{seed}"
                layer = cfg.merge(distill_layer(self.base, self.students[sname]["config"], entry, pair_name),
                                  {"model": self.students[sname]["model"], "seed": seed, "data": data_layer,
                                   "method": entry["method"], "teachers": [str(teacher_checkpoint(teacher_run))],
                                   "out": str(self.root / name)})
                run = _build_run(self.where, name, "distill", self.root, layer)
                run.teacher = teacher_run.name
                runs.append(run)
        return runs


    def chain_runs(self, prefix: str, data_layer: dict[str, Any], seed: int,
                   teacher_runs: dict[str, PlannedRun]) -> list[PlannedRun]:
        """Every chain that runs this seed, link by link (TAKD): link k distils link k-1's best.pt (link 1: the
        chain's teacher run) into its model. A link's directory names the chain so far:
        <prefix>/<chain>/<teacher>-<assistant>[-...]/s<seed>."""
        runs = []
        for cname, chain in self.chains.items():
            if seed not in chain["seeds"]:
                continue
            previous = teacher_runs[chain["teacher"]]
            path = [chain["teacher"]]
            for lname, model, student_config in chain["links"]:
                path.append(lname)
                name = f"{prefix}/{cname}/{'-'.join(path)}/s{seed}"
                link = {"config": chain["config"], "hparams": chain["hparams"], "per_pair": chain["per_link"]}
                layer = cfg.merge(distill_layer(self.base, student_config, link, lname),
                                  {"model": model, "seed": seed, "data": data_layer, "method": chain["method"],
                                   "teachers": [str(teacher_checkpoint(previous))], "out": str(self.root / name)})
                run = _build_run(self.where, name, "distill", self.root, layer)
                run.teacher, run.link = previous.name, len(path) > 2
                runs.append(run)
                previous = run
        return runs


def teacher_checkpoint(teacher_run: PlannedRun) -> Path:
    """The checkpoint a distillation run reads: an external teacher's file, else the teacher run's best.pt."""
    path = Path(teacher_run.layer["checkpoint"]) if teacher_run.config is None else teacher_run.run_dir / "best.pt"
    return path.resolve()


def distill_layer(base: dict[str, Any], student_config: dict[str, Any], entry: dict[str, Any],
                  pair_name: str) -> dict[str, Any]:
    """A distillation run's config layer before the sweep's own keys, later layers winning: the sweep's
    `config`, the student's `config`, the method row's `config` and `hparams`, then the row's `per_pair`
    `config` and `hparams` for this pair."""
    per_pair = entry["per_pair"].get(pair_name, {})
    layer = cfg.merge(base, student_config)
    for extra in (entry["config"], entry["hparams"], per_pair.get("config", {}), per_pair.get("hparams", {})):
        layer = cfg.merge(layer, extra)
    return layer


def _pairs(where: _Where, value: Any, teachers: dict, students: dict) -> list[tuple[str, str]]:
    """Teacher-student pairs: every teacher with every student unless listed explicitly."""
    if value is None:
        return [(t, s) for t in teachers for s in students]
    if not isinstance(value, list):
        raise where.error("'pairs' must be a list of [teacher, student] entries")
    pairs = []
    for item in value:
        if isinstance(item, dict):
            item = where.keys(item, PAIR_KEYS, "pairs[]")
            item = [item.get("teacher"), item.get("student")]
        if not isinstance(item, list) or len(item) != 2:
            raise where.error(f"'pairs' entry {item!r} must be [teacher, student], e.g. [resnet56, resnet20]")
        teacher, student = (str(x) for x in item)
        if teacher not in teachers:
            raise where.error(f"pair [{teacher}, {student}]: no teacher '{teacher}'{closest(teacher, teachers)}; "
                              f"add it under 'teachers:'")
        if student not in students:
            raise where.error(f"pair [{teacher}, {student}]: no student '{student}'{closest(student, students)}; "
                              f"add it under 'students:'")
        pairs.append((teacher, student))
    return pairs


def _method_entries(where: _Where, value: Any, pair_names: list[str], seeds: list[int]) -> dict[str, dict]:
    if not value:
        raise where.error("no methods; add e.g. 'methods: {baseline: {}, kd: {}}'")
    if isinstance(value, list):
        value = {name: None for name in where.name_list(value, "methods")}
    if not isinstance(value, dict):
        raise where.error("'methods' must map row names to entries (method, seeds, hparams, config, per_pair)")
    entries = {}
    for name, entry in value.items():
        name = where.dir_name(name, "methods")
        at = f"methods.{name}"
        entry = where.keys(entry, METHOD_KEYS, at)
        spec = None if name == BASELINE else str(entry.get("method", name))
        if spec is not None:
            _check_method_names(where, spec, at)
        elif set(entry) - {"seeds"}:
            raise where.error(f"'{at}' trains the student alone; it takes only 'seeds' (put its config under "
                              f"'students.<name>.config' or the sweep's 'config')")
        only = entry.get("pairs", pair_names)
        for pair in where.name_list(only, f"{at}.pairs"):
            if pair not in pair_names:
                raise where.error(f"'{at}.pairs': no pair '{pair}'{closest(pair, pair_names)}; pairs are "
                                  f"{', '.join(pair_names) or 'none'} (teacher-student)")
        per_pair = {}
        for pair, override in where.keys(entry.get("per_pair"), tuple(pair_names), f"{at}.per_pair").items():
            override = where.keys(override, PER_PAIR_KEYS, f"{at}.per_pair.{pair}")
            per_pair[pair] = {"config": where.layer(override.get("config"), f"{at}.per_pair.{pair}.config"),
                              "hparams": _hparams_layer(where, spec or "", override.get("hparams"),
                                                        f"{at}.per_pair.{pair}.hparams")}
        method_seeds = list(dict.fromkeys(where.name_list(entry.get("seeds", seeds), f"{at}.seeds", int)))
        entries[name] = {"method": spec, "seeds": method_seeds,
                         "config": where.layer(entry.get("config"), f"{at}.config"),
                         "hparams": _hparams_layer(where, spec or "", entry.get("hparams"), f"{at}.hparams"),
                         "pairs": list(only) if isinstance(only, list) else [only], "per_pair": per_pair}
    return entries


def _chain_entries(where: _Where, value: Any, teachers: dict[str, dict[str, Any]], students: dict[str, dict[str, Any]],
                   pairs: list[tuple[str, str]], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """`chains:` (TAKD, Mirzadeh et al. AAAI 2020) as name -> teacher, links [(name, model, student config)],
    method, seeds, config, hparams and per_link overrides (keyed by link name)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error("'chains' must map names to entries, e.g. {takd: {models: [resnet110, resnet20, resnet8]}}")
    taken = {"teachers", "students", *(f"{t}-{s}" for t, s in pairs)}
    chains = {}
    for name, entry in value.items():
        name = where.dir_name(name, "chains")
        at = f"chains.{name}"
        if name in taken:
            raise where.error(f"'{at}': the name '{name}' is a directory of the sweep's other runs; rename the chain")
        entry = where.keys(entry, CHAIN_KEYS, at)
        names = [str(n) for n in where.name_list(entry.get("models", []), f"{at}.models")]
        if len(names) < 3:
            raise where.error(f"'{at}.models' must list a teacher, at least one assistant and the student, e.g. "
                              f"[resnet110, resnet20, resnet8], got {names}; a teacher and a student alone is a pair")
        if names[0] not in teachers:
            raise where.error(f"'{at}.models': the first entry '{names[0]}' must be a teacher of 'teachers:'"
                              f"{closest(names[0], teachers)}; add it there (trained, or an existing checkpoint)")
        if len(set(names)) != len(names):
            raise where.error(f"'{at}.models' lists a name twice ({names}); give each link its own name")
        links = []
        for index, lname in enumerate(names[1:], 1):
            lname = where.dir_name(lname, f"{at}.models")
            student = students.get(lname)
            model = student["model"] if student else _check_model(where, lname, f"{at}.models[{index}]")
            links.append((lname, model, student["config"] if student else {}))
        spec = str(entry.get("method", "kd"))
        if spec == BASELINE:
            raise where.error(f"'{at}.method' must be a distillation method (TAKD: kd)")
        _check_method_names(where, spec, f"{at}.method")
        per_link = {}
        for lname, override in where.keys(entry.get("per_link"), tuple(names[1:]), f"{at}.per_link").items():
            override = where.keys(override, PER_LINK_KEYS, f"{at}.per_link.{lname}")
            per_link[lname] = {"config": where.layer(override.get("config"), f"{at}.per_link.{lname}.config"),
                               "hparams": _hparams_layer(where, spec, override.get("hparams"),
                                                         f"{at}.per_link.{lname}.hparams")}
        chains[name] = {"teacher": names[0], "links": links, "method": spec,
                        "seeds": list(dict.fromkeys(where.name_list(entry.get("seeds", seeds), f"{at}.seeds", int))),
                        "config": where.layer(entry.get("config"), f"{at}.config"),
                        "hparams": _hparams_layer(where, spec, entry.get("hparams"), f"{at}.hparams"),
                        "per_link": per_link}
    return chains


def _check_method_names(where: _Where, spec: str, at: str) -> None:
    for part in spec.split("+"):
        try:
            get(part.strip())
        except KdlabError as exc:
            raise where.error(f"'{at}': {exc}") from None


def _build_run(where: _Where, name: str, kind: str, root: Path, layer: dict[str, Any]) -> PlannedRun:
    """Validate a run's config exactly as `kdlab train|distill` would, and look at its directory."""
    try:
        config = cfg.build([layer])
        if config.method:
            apply_method_optimizer(config, parse(config.method, config.methods))
    except KdlabError as exc:
        raise where.error(f"run {name}: {exc}") from None
    run = PlannedRun(name, kind, root / name, config, layer)
    run.state, run.note = run_state(run.run_dir, config)
    return run


# ------------------------------------------------------------------------------------------------ state
def config_difference(saved: dict[str, Any], planned: dict[str, Any]) -> str:
    """First setting (other than where/how it runs) in which a saved run differs from the plan, or ''."""
    old, new = cfg.flatten(saved), cfg.flatten(planned)
    for key in sorted(set(old) | set(new)):
        if key in ENVIRONMENT_KEYS or key.split(".")[0] in ENVIRONMENT_KEYS:
            continue
        if key in old and key in new and old[key] != new[key]:
            return f"{key} was {old[key]!r}, the sweep says {new[key]!r}"
        if (key in old) != (key in new) and key.startswith("methods."):  # an added/removed hyperparameter
            return f"{key} was {old.get(key)!r}, the sweep says {new.get(key)!r}"
    return ""


def run_state(run_dir: Path, config: cfg.Config) -> tuple[str, str]:
    """done | resume | new | changed, with a short note for the listing."""
    if not run_dir.is_dir():
        return "new", ""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:
            diff = config_difference(cfg.yaml_load(saved.read_text()) or {}, cfg.to_dict(config))
        except yaml.YAMLError:
            diff = "its config.yaml is unreadable"
        if diff:
            return "changed", diff
    metrics = read_metrics(run_dir)
    last_epoch = int(metrics[-1].get("epoch", 0)) if metrics else 0
    if (run_dir / "summary.json").is_file() and last_epoch >= config.optim.epochs:
        return "done", f"{last_epoch}/{config.optim.epochs} epochs"
    if (run_dir / "last.pt").is_file():
        return "resume", f"from epoch {last_epoch + 1}"
    if (run_dir / "init" / "last.pt").is_file():
        return "resume", "in the init stage"
    return "new", "a partial run without checkpoint will be replaced" if metrics else ""


def _clear_partial(run_dir: Path) -> None:
    """Remove what a run killed before its first checkpoint left behind (so `new` can start cleanly)."""
    for name in ("metrics.jsonl", "summary.json", "reliability.json", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("tb", "init"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


# ------------------------------------------------------------------------------------------------ commands
def _render(value: Any) -> str:
    if isinstance(value, (list, bool)) or value is None:
        return json.dumps(value, separators=(",", ":"))
    return str(value)


FLAGS = {"data.name": "--data", "data.root": "--data-root", "data.fraction": "--fraction", "seed": "--seed",
         "method": "--method", "out": "--out"}


def command_line(layer: dict[str, Any], command: str, resume: bool = False) -> str:
    """`kdlab <command>` flags for a run's config layer (the CLI builds the same Config from them)."""
    flat = cfg.flatten(layer)
    parts = ["kdlab", command, "--model" if command == "train" else "--student", str(flat.pop("model"))]
    for teacher in flat.pop("teachers", None) or []:
        parts += ["--teacher", str(teacher)]
    for key, flag in FLAGS.items():
        if key in flat and flat[key] is not None:
            parts += [flag, _render(flat.pop(key))]
        flat.pop(key, None)
    if resume:
        parts.append("--resume")
    for key, value in flat.items():
        if key.startswith("methods."):
            key = "method." + key[len("methods."):]
        parts.append(f"{key}={_render(value)}")
    return " ".join(shlex.quote(p) for p in parts)


def select(runs: list[PlannedRun], patterns: list[str] | None) -> list[PlannedRun]:
    """Runs whose name matches a pattern (glob, or substring when it has no wildcard), plus the
    teachers they need."""
    if not patterns:
        return list(runs)

    def matches(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) if any(c in p for c in "*?[") else p in name for p in patterns)

    chosen = {r.name for r in runs if matches(r.name)}
    while True:  # transitively: a chain's student needs its assistant, which needs the teacher
        needed = {r.teacher for r in runs if r.name in chosen and r.teacher} - chosen
        if not needed:
            break
        chosen |= needed
    return [r for r in runs if r.name in chosen]


def describe(sweep: Sweep, runs: list[PlannedRun], commands: bool) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sweep.counts(runs).items())
    lines = [f"sweep {sweep.path} -> {sweep.root}: {len(runs)} runs ({counts})"]
    for run in runs:
        note = f"  ({run.note})" if run.note else ""
        after = f"  <- {run.teacher}/best.pt" if run.link else ""  # a chain link waits for the previous one
        lines.append(f"  {run.state:<8} {run.name}{note}{after}")
        if commands:
            lines.append(f"           {run.command()}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ execute
Runner = Callable[..., dict[str, Any]]


def run_sweep(path: str | Path, out: str | None = None, data_root: str | None = None, only: list[str] | None = None,
              dry_run: bool = False, quiet: bool = False, echo: Callable[[str], None] = print, jobs: int = 1) -> Sweep:
    """Plan the sweep, then run what is not finished, in order (teachers first), `jobs` at a time (each in its
    own process with its share of the cores, kdlab.experiments.parallel). Returns the plan."""
    if jobs < 1:
        raise KdlabError(f"--jobs must be >= 1, got {jobs}")
    sweep = load_sweep(path, out, data_root)
    runs = select(sweep.runs, only)
    if not runs:
        names = ", ".join(r.name for r in sweep.runs[:3])
        raise KdlabError(f"--only {' '.join(only or [])} matches none of the {len(sweep.runs)} runs (e.g. {names}); "
                         f"use a glob like '*/kd/*' or a part of a run name")
    echo(describe(sweep, runs, commands=dry_run))
    if dry_run:
        return sweep
    _refuse_to_start(sweep, runs)
    todo = [r for r in runs if r.state in ("new", "resume")]
    failed = _execute(todo, quiet, echo) if jobs == 1 else execute_parallel(todo, jobs, echo, _clear_if_new)
    if failed:
        first = next(iter(failed.items()))
        raise KdlabError(f"{len(failed)} of {len(todo)} runs failed (first: {first[0]}: {first[1]}); fix the cause "
                         f"and run the sweep again (finished runs are skipped)")
    echo(f"sweep finished: {len(runs)} runs in {sweep.root}; tables with: kdlab report {sweep.root}")
    return sweep


def _refuse_to_start(sweep: Sweep, runs: list[PlannedRun]) -> None:
    """Stop before anything runs: a run directory holds other settings, or a needed teacher file is missing."""
    changed = [r for r in runs if r.state == "changed"]
    if changed:
        raise KdlabError(f"{len(changed)} run(s) already exist with other settings, e.g. {changed[0].run_dir}: "
                         f"{changed[0].note}; restore the sweep file or move those run directories away")
    needed = {r.teacher for r in runs}
    for run in runs:
        if run.state == "external" and run.note and run.name in needed:
            raise KdlabError(f"teacher checkpoint '{run.layer['checkpoint']}' does not exist; fix "
                             f"'teachers.<name>.checkpoint' in {sweep.path}")


def _execute(todo: list[PlannedRun], quiet: bool, echo: Callable[[str], None]) -> dict[str, str]:
    """Run `todo` in order, skipping the runs whose teacher failed; returns run name -> why it failed."""
    failed: dict[str, str] = {}
    for index, run in enumerate(todo, 1):
        if run.teacher in failed:
            failed[run.name] = f"its teacher {run.teacher} failed"
            echo(f"[{index}/{len(todo)}] skip {run.name}: {failed[run.name]}")
            continue
        echo(f"[{index}/{len(todo)}] {'resume' if run.state == 'resume' else 'start'} {run.name}")
        error = _execute_one(run, quiet, echo)
        if error is not None:
            failed[run.name] = error
            echo(f"    failed: {error}")
    return failed


def _clear_if_new(run: PlannedRun) -> None:
    if run.state == "new" and run.run_dir.is_dir():
        _clear_partial(run.run_dir)


def _execute_one(run: PlannedRun, quiet: bool, echo: Callable[[str], None]) -> str | None:
    """One run (a partial one without checkpoint cleared first); None when it finished, else why it failed.
    A bug in one run must not lose a night of others, so any exception is caught (its traceback printed);
    Ctrl-C stops the sweep."""
    start = time.perf_counter()
    _clear_if_new(run)
    runner: Runner = run_train if run.kind in ("teacher", BASELINE) else run_distill
    try:
        summary = runner(run.config, resume=run.state == "resume", quiet=quiet)
    except KdlabError as exc:
        return str(exc)
    except KeyboardInterrupt:
        echo(f"sweep interrupted in {run.name}; run the same sweep command again to resume it")
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return f"{type(exc).__name__}: {exc}"
    run.state = "done"
    echo(f"    {done_line(summary, start)}")
    return None
