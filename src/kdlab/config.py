"""Typed run configuration: dataclasses, YAML load/dump, dotted `key=value` overrides, recipes.

A run's config is built in layers, each overriding the one before:
defaults → the dataset's recipe (`kdlab.data.recipe`: CIFAR, MNIST, ...) → YAML file (`--config`) →
command-line flags → `key=value`.
Every key is validated: an unknown one is an error naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab.data import recipe as data_recipe
from kdlab.errors import KdlabError, closest

TRACKERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers a run can report to (engine.trackers)

@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    fraction: float | None = None
    coarse: bool = False
    augment: bool = True
    fixed_augmentation: bool = False  # the same crop/flip per sample in every epoch (for cache_teacher)
    batch_size: int = 64  # per process: under torchrun the global batch is batch_size x WORLD_SIZE
    test_batch_size: int = 256
    workers: int = 2
    image_size: int | None = None
    student_resolution: int | None = None  # cross-quality: the student sees this resolution
    downscale: int | None = None  # cross-quality: student resolution = image size // downscale
    student_resize_mode: str = "area"  # area | bilinear: how the student's view is downscaled
    # imagefolder/imagenet: error = stop at the first unreadable image, naming it; check = decode every
    # image before training and stop listing the bad ones; skip = the same pass, leaving them out
    unreadable: str = "error"
    # Batch mixing (kdlab.data.augment.BatchMixer), drawn from (seed, epoch) like crop/flip: the alpha of
    # mixup's Beta(alpha, alpha) and of CutMix's (0 = off); with both on, each mixed batch picks one at random.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    # RandAugment-style strong augmentation of the training batches (kdlab.data.augment.rand_augment): "N,M" =
    # N ops per image at magnitude M (0..30), e.g. "2,9"; None = off
    randaugment: str | None = None
    # in-memory datasets: hold the splits on the device and augment batches there (no copy per step); auto = on
    # for CUDA, or true/false (kdlab.data.memory.TensorLoader)
    on_device: str = "auto"
    # image folders: cpu = PIL decoding in the workers; gpu = the workers read bytes, batches are decoded and
    # augmented on the run's device (torchvision.io; kdlab.data.decode); auto = gpu on CUDA
    decode: str = "cpu"


@dataclass
class OptimConfig:
    epochs: int = 240
    # sgd (momentum, nesterov) | adamw (betas; decoupled weight decay) | dot (kdlab distill: SGD with momentum
    # - dot_delta for the task gradient and + dot_delta for the distillation gradient; kdlab.engine.dot)
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    dot_delta: float = 0.075  # dot only: Δ of DOT (Zhao et al. ICCV 2023; 0.075 CIFAR, 0.09 ImageNet)
    weight_decay: float = 5e-4
    clip_grad_norm: float | None = None  # clip the global gradient norm of each step to this value
    schedule: str = "step"  # step | cosine | constant
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    scale_lr: bool = False  # under torchrun: lr x WORLD_SIZE (linear scaling rule, docs/distributed.md)
    # --extend-to N: train to epoch N although the schedule ends at `epochs`; epochs past it keep the LR of
    # the schedule's last epoch (a constant tail), so a finished run can be extended with --resume.
    extend_to: int | None = None


@dataclass
class Config:
    """Everything a `kdlab train` / `kdlab distill` run needs; saved as config.yaml in the run directory.

    Under torchrun (docs/distributed.md) `data.batch_size` is the per-process batch, `sync_bn` syncs the
    students' BatchNorm statistics across GPUs and `optim.scale_lr` multiplies the LR by the world size.
    """

    model: str = "resnet8"  # the trained model (the student, when distilling)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    out: str | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    log_every: int = 50  # progress line (and bar update) every N steps; also written to progress.log
    label_smoothing: float = 0.0  # of the cross-entropy term only (never of a method's targets)
    ema_decay: float | None = None  # EMA of the trained model's weights: evaluated, saved and reported when set
    eval_every: int = 1  # evaluate every K epochs and always at the last one
    eval_subset: int | None = None  # evaluate on a fixed class-stratified subset of N test images
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # and/or mlflow, wandb (engine.trackers)
    sync_bn: bool = False  # torchrun on GPUs: SyncBatchNorm in the trained models (refused on CPU)
    # initial weights of the trained model (the student): a state_dict file or a kdlab checkpoint; a classifier
    # for another class count is replaced by a freshly initialised one (fine-tuning)
    weights: str | None = None
    # distillation
    teachers: list[str] = field(default_factory=list)  # kdlab checkpoints
    teacher_model: str | None = None  # outside teacher: architecture name ...
    teacher_weights: str | None = None  # ... and its local weights file
    teacher_mix: list[float] | None = None  # weights of several teachers (equal when None)
    method: str | None = None  # "kd", "kd+at", ...
    ce_weight: float | None = None  # None: the method's default
    init_epochs: int | None = None  # init stages of two-stage methods (FitNet, FT, AB, FSP)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # method.<name>.<hp> = value
    # teacher-output caching (kdlab.distillation.teacher_cache): deterministic inputs only
    cache_teacher: bool = False
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/kdlab/teacher-outputs (~/.cache/kdlab/...)
    cache_max_gb: float = 4.0  # refuse caches larger than this (memory and disk)
    # quantization-aware training (kdlab.engine.qat): the trained model computes with fake-quantized int8
    # weights and uint8 activations, as `kdlab quantize` deploys it; checkpoints keep the fp32 weights
    qat: bool = False


PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw", "dot")
UNREADABLE = ("error", "check", "skip")
ON_DEVICE = ("auto", "true", "false")
DECODE = ("cpu", "gpu", "auto")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-4` and `1e3` as floats.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent (`5.0e-4`), so `5e-4` stays a
    string; YAML 1.2 and Python's float() read it as a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """`yaml.safe_load` with YAML 1.2 exponent floats (`5e-4`); use it for every config-like text."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: builds plain values only


def parse_value(text: str) -> Any:
    """A `key=value` value: YAML scalars/lists ("0.1", "true", "[1,2]", "null"), else the raw string."""
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.1", "method.kd.temperature=4"]` -> nested dict; 'method.' is an alias of 'methods.'."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise KdlabError(f"'{item}' is not a key=value override; write it as e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] == "method" and len(parts) > 1:
            parts[0] = "methods"
        if not all(parts):
            raise KdlabError(f"'{item}' has an empty key part; write it as e.g. optim.lr=0.1")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KdlabError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = parse_value(value)
    return nested


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of `top` win; nested dicts merge."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML file into a dict, with a one-line error for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"config file '{path}' does not exist; check the --config path")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdlabError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise KdlabError(f"config file '{path}' must hold a mapping of keys to values")
    if isinstance(data.get("method"), dict):  # `method: {kd: {...}}` is accepted for `methods:`
        data["methods"] = merge(data.get("methods", {}), data.pop("method"))
    return data


def build(layers: list[dict[str, Any]]) -> Config:
    """Merge config layers (later wins) onto the recipe of the chosen data/model and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    data = merged.get("data")
    data_name = str(data.get("name", DataConfig.name)) if isinstance(data, dict) else DataConfig.name
    model_name = str(merged.get("model", Config.model))
    root = data.get("root") if isinstance(data, dict) else None
    merged = merge(_recipe_for_length(data_recipe(data_name, model_name, root), merged), merged)
    if isinstance(data, dict) and isinstance(data.get("randaugment"), (list, tuple)):  # [2, 9] as "2,9"
        merged["data"]["randaugment"] = ",".join(str(v) for v in data["randaugment"])
    if isinstance(data, dict) and isinstance(data.get("on_device"), bool):  # YAML true/false as "true"/"false"
        merged["data"]["on_device"] = str(data["on_device"]).lower()
    config = from_dict(Config, merged, "")
    validate(config)
    return config


def _recipe_for_length(recipe: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The recipe with its LR milestones scaled to the run's epochs, unless the run gives milestones:
    `--epochs 30` on CIFAR decays at 19/23/26 as the 240-epoch recipe does at 150/180/210, instead of never.
    A recipe without milestones (cosine ones) scales the default 150/180/210 of 240, for `optim.schedule=step`."""
    optim, run_optim = recipe.get("optim", {}), run.get("optim")
    run_optim = run_optim if isinstance(run_optim, dict) else {}
    if "milestones" in optim:
        milestones, reference = optim["milestones"], optim["epochs"]
    else:
        milestones, reference = OptimConfig().milestones, OptimConfig().epochs
    epochs = run_optim.get("epochs", optim.get("epochs"))
    if ("milestones" in run_optim or not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1
            or epochs == reference):
        return recipe
    scaled = sorted({min(max(1, int(m * epochs / reference + 0.5)), epochs) for m in milestones})
    return merge(recipe, {"optim": {"milestones": scaled}})


def from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a dict, checking keys and coercing value types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise KdlabError(f"unknown config key '{prefix}{key}'{closest(key, fields)}; "
                             f"valid keys here: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise KdlabError(f"config key '{prefix}{key}' is a section; set its fields as {prefix}{key}.<name>")
            kwargs[key] = from_dict(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a value against a type hint (int, float, bool, str, Optional, list, dict)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise KdlabError(f"config key '{key}' needs a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise KdlabError(f"config key '{key}' needs true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, str):  # a quoted number, or a literal YAML does not read as one ('1e-3')
            try:
                value = float(value) if hint is float or not value.strip().lstrip("+-").isdigit() else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KdlabError(f"config key '{key}' needs a number, got {value!r}")
        if hint is int and not float(value).is_integer():  # also refuses inf and nan
            raise KdlabError(f"config key '{key}' needs a whole number, got {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise KdlabError(f"config key '{key}' needs a single value, got {value!r}")
        return str(value)
    return value


def validate(config: Config) -> None:
    """Range checks that dataclass types cannot express."""
    for name in config.loggers:
        if name not in TRACKERS:
            raise KdlabError(f"unknown logger '{name}'{closest(name, TRACKERS)}; --logger takes a comma list of "
                             f"{', '.join(TRACKERS)}, or none")
    if config.precision not in PRECISIONS:
        raise KdlabError(f"precision '{config.precision}' is not one of {', '.join(PRECISIONS)}"
                         f"{closest(config.precision, PRECISIONS)}")
    if config.optim.schedule not in SCHEDULES:
        raise KdlabError(f"optim.schedule '{config.optim.schedule}' is not one of {', '.join(SCHEDULES)}"
                         f"{closest(config.optim.schedule, SCHEDULES)}")
    if config.optim.optimizer not in OPTIMIZERS:
        raise KdlabError(f"optim.optimizer '{config.optim.optimizer}' is not one of {', '.join(OPTIMIZERS)}"
                         f"{closest(config.optim.optimizer, OPTIMIZERS)}")
    n_teachers = len(config.teachers) + bool(config.teacher_model)
    d = config.data
    mixes = d.mixup > 0 or d.cutmix > 0
    checks = [
        (config.optim.epochs >= 1, "optim.epochs must be at least 1"),
        (config.optim.extend_to is None or config.optim.extend_to > config.optim.epochs,
         f"--extend-to {config.optim.extend_to} must be above optim.epochs={config.optim.epochs} (the schedule's "
         f"length): it trains a run longer"),
        (config.optim.lr > 0, "optim.lr must be positive"),
        (config.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (config.data.batch_size >= 1, "data.batch_size must be at least 1"),
        (config.data.fraction is None or 0 < config.data.fraction <= 1,
         "data.fraction must be in (0, 1], e.g. 0.5, 0.25 or 0.1"),
        (config.ce_weight is None or config.ce_weight >= 0, "ce_weight must be >= 0"),
        (config.init_epochs is None or config.init_epochs >= 0, "init_epochs must be >= 0"),
        (config.cache_max_gb > 0, f"cache_max_gb must be positive, got {config.cache_max_gb}; e.g. cache_max_gb=4"),
        (config.data.student_resolution is None or config.data.student_resolution >= 1,
         f"data.student_resolution must be at least 1 pixel, got {config.data.student_resolution}; "
         "pass e.g. --student-resolution 16"),
        (config.data.downscale is None or config.data.downscale >= 1,
         f"data.downscale must be a whole factor >= 1, got {config.data.downscale}; e.g. --downscale 2"),
        (config.data.student_resolution is None or config.data.downscale is None,
         "give either --student-resolution or --downscale, not both"),
        (config.data.student_resize_mode in ("area", "bilinear"),
         f"data.student_resize_mode '{config.data.student_resize_mode}' is not one of area, bilinear; "
         "use data.student_resize_mode=area"),
        (not config.teacher_mix or all(w >= 0 for w in config.teacher_mix) and sum(config.teacher_mix) > 0,
         f"teacher_mix weights must be >= 0 with a positive sum, got {config.teacher_mix}; "
         "write e.g. teacher_mix=[0.7,0.3]"),
        # Teachers named here (checkpoints, an outside model): one weight each. Teachers passed as objects to
        # kdlab.distill or DistillationLoss are counted by DistillationLoss, where they enter.
        (config.teacher_mix is None or not n_teachers or len(config.teacher_mix) == n_teachers,
         f"teacher_mix has {len(config.teacher_mix or [])} weights for {n_teachers} teachers; give one weight "
         f"per teacher, e.g. teacher_mix=[{', '.join(['0.5'] * n_teachers)}]"),
        (config.threads is None or config.threads >= 1,
         f"threads must be at least 1, got {config.threads}; pass e.g. --threads 4, or leave it out for torch's "
         "default"),
        (0 <= config.optim.momentum < 1,
         f"optim.momentum must be in [0, 1), got {config.optim.momentum}; e.g. optim.momentum=0.9"),
        (config.optim.milestones == sorted(set(config.optim.milestones)),
         f"optim.milestones must be increasing epochs without repeats, got {config.optim.milestones}; "
         f"write e.g. 'optim.milestones=[{','.join(map(str, sorted(set(config.optim.milestones))))}]'"),
        (config.data.unreadable in UNREADABLE,
         f"data.unreadable '{config.data.unreadable}' is not one of {', '.join(UNREADABLE)}"
         f"{closest(config.data.unreadable, UNREADABLE)}; e.g. data.unreadable=skip"),
        (str(d.on_device).lower() in ON_DEVICE,
         f"data.on_device '{d.on_device}' is not one of {', '.join(ON_DEVICE)}; e.g. data.on_device=auto"),
        (d.decode in DECODE,
         f"data.decode '{d.decode}' is not one of {', '.join(DECODE)}{closest(d.decode, DECODE)}; e.g. "
         "data.decode=auto"),
        *recipe_checks(config),
        (not config.cache_teacher or not (mixes or d.randaugment),
         "--cache-teacher needs the same teacher input every epoch; data.mixup, data.cutmix and data.randaugment "
         "change it: drop them or the cache"),
        (not d.fixed_augmentation or not d.randaugment,
         "data.fixed_augmentation keeps one crop/flip per sample; data.randaugment draws new ops every epoch: "
         "drop one of them"),
    ]
    for ok, message in checks:
        if not ok:
            raise KdlabError(message)


def recipe_checks(config: Config) -> list[tuple[bool, str]]:
    """Range checks of the training-recipe keys (optimizer, label smoothing, mixing, EMA, evaluation)."""
    o, d = config.optim, config.data
    return [
        (o.optimizer == "sgd" or not o.nesterov,
         f"optim.nesterov is for optim.optimizer=sgd; {o.optimizer} has no Nesterov variant here: drop "
         "optim.nesterov"),
        (o.optimizer != "dot" or (o.dot_delta >= 0 and 0 <= o.momentum - o.dot_delta and o.momentum + o.dot_delta < 1),
         f"optim.dot_delta {o.dot_delta} with optim.momentum {o.momentum} gives DOT momenta "
         f"{o.momentum - o.dot_delta:g} and {o.momentum + o.dot_delta:g}; delta must be >= 0 and both "
         "momenta in [0, 1): e.g. optim.dot_delta=0.075 with momentum 0.9"),
        (o.optimizer != "dot" or config.precision != "fp16",
         "optim.optimizer=dot keeps two gradients per step, which fp16 loss scaling does not cover; use "
         "--precision bf16 or fp32"),
        (o.optimizer != "dot" or o.clip_grad_norm is None,
         "optim.clip_grad_norm clips one gradient; DOT steps with two (task and distillation): drop "
         "--clip-grad-norm or use optim.optimizer=sgd"),
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
         f"optim.betas must be two numbers in [0, 1), got {o.betas}; e.g. 'optim.betas=[0.9,0.999]'"),
        (o.clip_grad_norm is None or o.clip_grad_norm > 0,
         f"optim.clip_grad_norm must be positive, got {o.clip_grad_norm}; e.g. --clip-grad-norm 5"),
        (o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}"),
        (0 <= config.label_smoothing < 1,
         f"label_smoothing must be in [0, 1), got {config.label_smoothing}; e.g. --label-smoothing 0.1"),
        (d.mixup >= 0 and d.cutmix >= 0,
         f"data.mixup and data.cutmix are Beta alphas >= 0 (0 = off), got {d.mixup} and {d.cutmix}; e.g. "
         "--mixup 0.2 or --cutmix 1.0"),
        (0 <= d.mix_prob <= 1, f"data.mix_prob must be in [0, 1], got {d.mix_prob}; e.g. data.mix_prob=0.5"),
        (d.randaugment is None or _valid_randaugment(d.randaugment),
         f"data.randaugment '{d.randaugment}' is not 'N,M' with N >= 1 ops and a magnitude M in 0..30; "
         "e.g. --randaugment 2,9"),
        (config.ema_decay is None or 0 < config.ema_decay < 1,
         f"ema_decay must be in (0, 1), got {config.ema_decay}; e.g. --ema-decay 0.999"),
        (config.eval_every >= 1, f"eval_every must be at least 1, got {config.eval_every}; e.g. --eval-every 5"),
        (config.eval_subset is None or config.eval_subset >= 1,
         f"eval_subset must be at least 1 image, got {config.eval_subset}; e.g. --eval-subset 1000"),
        (config.log_every >= 1, f"log_every must be at least 1, got {config.log_every}; e.g. --log-every 50"),
        (not config.qat or config.precision == "fp32",
         f"--qat trains in fp32 (fake quantization rounds fp32 values to the int8 grid; {config.precision} autocast "
         "would round them again): drop --precision or use --precision fp32"),
        (not config.qat or not config.compile,
         "--qat runs eager (fake quantization is attached with forward hooks): drop --compile"),
        (not config.qat or config.ema_decay is None,
         "ema_decay averages the weights, and the average is not what trained under fake quantization: drop "
         "--ema-decay with --qat"),
    ]


def parse_randaugment(text: str) -> tuple[int, int]:
    """'N,M' (also 'N, M' or 'N/M') -> (N, M), e.g. '2,9' -> (2, 9); KdlabError when it is not that."""
    parts = [p.strip() for p in re.split(r"[,/]", str(text))]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise KdlabError(f"data.randaugment '{text}' is not 'N,M' (ops per image, magnitude 0..30); e.g. "
                         f"--randaugment 2,9")
    return int(parts[0]), int(parts[1])


def _valid_randaugment(text: str) -> bool:
    try:
        n, m = parse_randaugment(text)
    except KdlabError:
        return False
    return n >= 1 and 0 <= m <= 30


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"optim.lr": 0.05, ...}; lists and method hyperparameter dicts stay leaves
    below `methods.<name>.`."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
