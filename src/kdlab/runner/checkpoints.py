"""Models from kdlab checkpoints: read (weights only), rebuild the recorded architecture, check it against
the data; the teachers of a distillation run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdlab import models
from kdlab.config import Config
from kdlab.engine import checkpoint as ckpt
from kdlab.errors import KdlabError
from kdlab.runner.common import DownscaledInput, InputView


def load_trained_model(path: str | Path, info=None, role: str = "teacher") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdlab checkpoint (architecture read from it), checked against the data."""
    state, arch = read_checkpoint(path, role)
    if info is not None:
        check_against_data(arch, info, path, role)
    model = model_from_checkpoint(state, arch, path)
    return (fit_to_data(model, arch) if info is not None else model), arch


def read_checkpoint(path: str | Path, role: str = "teacher") -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint, its recorded architecture), with a clear error for files that are not kdlab checkpoints."""
    state = ckpt.load(path, role)
    arch = state.get("arch")
    if not isinstance(arch, dict) or "model" not in state:
        raise KdlabError(f"'{path}' is not a kdlab checkpoint (no architecture recorded); for outside weights use "
                         f"--teacher-model NAME --teacher-weights {path}")
    return state, arch


def model_from_checkpoint(state: dict[str, Any], arch: dict[str, Any], path: str | Path) -> nn.Module:
    model = models.create(arch["model"], arch["num_classes"], in_channels=arch["in_channels"],
                          image_size=arch["image_size"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise KdlabError(f"the weights in '{path}' do not fit a {arch['model']}; the checkpoint is damaged or "
                         f"was edited") from None
    return model


def fit_to_data(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """A model trained on a downscaled view gets full-size batches downscaled the same way (teacher, eval)."""
    if arch.get("downscaled_from") is None:
        return model
    return DownscaledInput(model, InputView(arch["image_size"], arch.get("resize_mode", "area")))


def check_against_data(arch: dict[str, Any], info, path, role: str) -> None:
    if arch["num_classes"] != info.num_classes:
        raise KdlabError(f"the {role} '{path}' predicts {arch['num_classes']} classes but {info.name} has "
                         f"{info.num_classes}; use a {role} trained on {info.name}")
    source = arch.get("downscaled_from")
    if source is not None:  # trained on a downscaled view (cross-quality): it needs the same full-size data
        if arch["in_channels"] != info.in_channels or source != info.image_size:
            raise KdlabError(f"the {role} '{path}' takes {arch['image_size']}px views of {arch['in_channels']}x"
                             f"{source}px images but {info.name} has {info.in_channels}x{info.image_size}px; "
                             f"use it on the data it was trained on")
        return
    if arch["in_channels"] != info.in_channels or arch["image_size"] != info.image_size:
        raise KdlabError(f"the {role} '{path}' takes {arch['in_channels']}x{arch['image_size']}px inputs but "
                         f"{info.name} has {info.in_channels}x{info.image_size}px; use a {role} trained on it")


def load_teachers(config: Config, info) -> list[nn.Module]:
    """Teachers from kdlab checkpoints (--teacher) or an outside model (--teacher-model/--teacher-weights).

    Several checkpoints must agree on classes and input size (checked before the data, for a clear message);
    one trained on a downscaled view gets the full-size batch downscaled as in its training.
    """
    loaded = [read_checkpoint(path) for path in config.teachers]
    inputs = [(a["num_classes"], a["in_channels"], a["image_size"], a.get("downscaled_from")) for _, a in loaded]
    if len(set(inputs)) > 1:
        described = ", ".join(f"{p}: {c} classes, {ch}x{s}px"
                              for p, (c, ch, s, _) in zip(config.teachers, inputs, strict=True))
        raise KdlabError(f"the teachers differ in classes or input size ({described}); use teachers trained "
                         f"on the same data at the same resolution")
    for path, (_, arch) in zip(config.teachers, loaded, strict=True):
        check_against_data(arch, info, path, "teacher")
    teachers = [fit_to_data(model_from_checkpoint(state, arch, path), arch)
                for path, (state, arch) in zip(config.teachers, loaded, strict=True)]
    if config.teacher_model:
        if not config.teacher_weights:
            raise KdlabError("--teacher-model needs --teacher-weights FILE (a local state_dict; nothing is "
                             "downloaded)")
        teachers.append(models.create(config.teacher_model, info.num_classes, in_channels=info.in_channels,
                                      image_size=info.image_size, weights=config.teacher_weights))
    elif config.teacher_weights:
        raise KdlabError("--teacher-weights needs --teacher-model NAME (its architecture)")
    return teachers
