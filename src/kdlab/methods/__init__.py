"""Distillation methods: a registry of small nn.Modules (taps + connectors + a pure loss).

`create("kd", temperature=4)` builds one method; `parse("kd+at", {"at": {"weight": 500}})` builds a
combination. Each method lives in its own module of this package, named after its registry name
(`kd.py`, `dkd.py`, `fitnet.py`, ...); the registry imports every module of the package the first time it
is asked for a method, so nothing lists them. Modules that hold shared building blocks (`base`, `stages`,
`connectors`, `taps`, `crd_memory`, `catalog`) simply register nothing.

Adding a method:
1. its pure loss in `kdlab.losses` (tensors in, an unweighted scalar out, `ValueError` for misuse);
2. one module `kdlab/methods/<name>.py` whose `Method` subclass is decorated with `@register`, sets `name`,
   `paper` and `defaults`, and checks its hyperparameters in the constructor or `build` (one-line
   `KdlabError`s for what a user can set);
3. its test;
4. the README's method table regenerated (`python -m kdlab.methods.catalog README.md`), and its section
   `## <name>` in docs/methods.md.
A method defined outside the package is used by name once its module is imported (`@register` runs then).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from kdlab.errors import KdlabError, unknown_name
from kdlab.methods.base import BuildContext, DistillBatch, Method

_REGISTRY: dict[str, type[Method]] = {}
_loaded = False
# Other spellings of registered names; names are also matched case-insensitively (`KD`, `AT`, `RKD`, `OD` are
# the spellings of a widely used train.py/distill.py command line, where `FN` is FitNet).
ALIASES = {"fn": "fitnet"}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a Method subclass to the registry under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_modules() -> list[str]:
    """Names of the modules of this package (those on its `__path__`), in import order."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__))


def _load() -> None:
    """Import every module of the package once, so that each `@register` has run."""
    global _loaded
    if not _loaded:
        for module in method_modules():
            importlib.import_module(f"{__name__}.{module}")
        _loaded = True


def list_methods() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def canonical(name: str) -> str:
    """The registry name of `name`: lower-cased, aliases resolved ('FN' -> 'fitnet'); unknown names pass."""
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def canonical_spec(spec: str) -> str:
    """'KD+AT' -> 'kd+at', so run names, saved configs and reports use one spelling."""
    return "+".join(canonical(part) for part in spec.split("+") if part.strip())


def canonical_hparams(hparams: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """`{"KD": {...}, "fn": {...}}` -> `{"kd": {...}, "fitnet": {...}}` (spellings of one method merge)."""
    merged: dict[str, dict[str, Any]] = {}
    for key, values in (hparams or {}).items():
        if not isinstance(values, dict):
            raise KdlabError(f"method.{key} needs named hyperparameters, e.g. method.{key}.weight=1.0")
        merged.setdefault(canonical(key), {}).update(values)
    return merged


def aliases(name: str) -> list[str]:
    """Other accepted spellings of registered method `name` (besides any upper/lower case)."""
    return sorted(alias.upper() for alias, target in ALIASES.items() if target == name)


def get(name: str) -> type[Method]:
    _load()
    key = canonical(name)
    if key not in _REGISTRY:
        raise unknown_name("method", key, _REGISTRY)
    return _REGISTRY[key]


def check_init_epochs(spec: str, init_epochs: int | None) -> None:
    """Refuse init_epochs > 0 for methods without an init stage (it would silently do nothing)."""
    names = [canonical(part) for part in spec.split("+") if part.strip()]
    if not init_epochs or not names or any(get(name).has_init_stage for name in names):
        return
    staged = ", ".join(n for n in list_methods() if _REGISTRY[n].has_init_stage)
    raise KdlabError(f"--init-epochs {init_epochs} does nothing for method '{spec}': it has no init stage (these "
                     f"have one: {staged}); drop --init-epochs")


def create(name: str, **hparams: Any) -> Method:
    """One method with its defaults overridden by `hparams`."""
    return get(name)(**hparams)


def parse(spec: str, hparams: dict[str, dict[str, Any]] | None = None) -> list[Method]:
    """'kd+at' -> [KD(...), AT(...)], each with its own hyperparameters from `hparams[name]`."""
    hparams = canonical_hparams(hparams)
    names = [canonical(part) for part in spec.split("+") if part.strip()]
    if not names:
        raise KdlabError("no method given; pass --method NAME (e.g. kd, dkd, dist, or kd+at)")
    if len(set(names)) != len(names):
        raise KdlabError(f"method '{spec}' names a method twice; list each once")
    for key in hparams:
        if key not in names:
            get(key)  # an unknown name gets the closest-name hint
            raise KdlabError(f"hyperparameters given for method '{key}', which is not in --method {spec}; "
                             f"add it to --method or drop method.{key}.*")
    expanding = [name for name in names if get(name).views > 1]
    if len(expanding) > 1:
        raise KdlabError(f"method '{spec}' combines {' and '.join(expanding)}, which each train on their own views "
                         f"of every image; combine at most one of them with other methods")
    return [create(name, **hparams.get(name, {})) for name in names]


__all__ = ["Method", "BuildContext", "DistillBatch", "register", "create", "get", "list_methods", "parse", "canonical",
           "canonical_spec", "canonical_hparams", "aliases", "check_init_epochs"]
