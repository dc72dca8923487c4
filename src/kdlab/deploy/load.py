"""The plain model of a kdlab checkpoint or run directory, and the input it takes.

    model = kdlab.load_model("runs/kd-r56-r20-s1")            # the run's last.pt: eval mode, on the CPU
    model = kdlab.load_model("runs/dml/best.pt", member=1)    # a student of a mutual cohort (index or name)
    model.kdlab_input  # {"image_size": 16, "in_channels": 3, "mean": [...], "std": [...], "downscaled_from": 32, ...}

A run directory means its `last.pt` (the finished model; `best.pt` is the epoch chosen on the test split, pass
it by name to get it). The returned module is the architecture's own class (`kdlab.models.create`) with the
checkpoint's weights: no kdlab wrapper, so any code that takes an `nn.Module` takes it. A cross-quality student
(trained on downscaled views, `--student-resolution`/`--downscale`) is returned as the network it is: it takes
`kdlab_input["image_size"]`-pixel inputs; `downscaled_from` and `resize_mode` say how the training data was
brought to that size (area = average pooling of the full-size image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kdlab import __version__
from kdlab.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from kdlab.data.digits import DIGITS_MEAN, DIGITS_STD
from kdlab.data.folder import IMAGENET_MEAN, IMAGENET_STD
from kdlab.data.mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD
from kdlab.distillation.mutual import cohort_names
from kdlab.engine import checkpoint as ckpt
from kdlab.errors import KdlabError
from kdlab.runner.checkpoints import model_from_checkpoint

# The per-channel normalisation each dataset's loader applies (kdlab.data), by dataset name.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": (DIGITS_MEAN, DIGITS_STD), "mnist": (MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass
class Loaded:
    """A model with where it came from: its checkpoint, recorded architecture and run config."""

    model: nn.Module
    path: Path  # the checkpoint file read
    arch: dict[str, Any]  # the member's architecture for a cohort student
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings (the checkpoint's copy)
    member: str | None = None  # a cohort student's name (s0_resnet8, ...)

    @property
    def input(self) -> dict[str, Any]:
        return self.model.kdlab_input  # type: ignore[return-value]


def load_model(path: str | Path, member: int | str | None = None) -> nn.Module:
    """The plain model (eval mode, on the CPU) of a kdlab checkpoint (`best.pt`/`last.pt`) or run directory.

    `member` picks a student of a deep-mutual-learning cohort: its index (0, 1, ...) or name (`s0_resnet8`, or
    the architecture when only one student has it). The input the model takes is recorded on it as
    `model.kdlab_input` (see the module's docstring) and the checkpoint file as `model.kdlab_source`.
    """
    return load(path, member).model


def load(path: str | Path, member: int | str | None = None) -> Loaded:
    """`load_model` with the checkpoint, architecture and config it was built from."""
    file = checkpoint_file(path)
    state = ckpt.load(file, "checkpoint")
    arch = _arch(state, file)
    weights, arch, name = _member(state, arch, member, file)
    if arch.get("data") == "user":  # kdlab.distill on the user's own objects: kdlab has no builder for it
        raise KdlabError(f"'{file}' holds a {arch['model']}, a model of your own (trained with kdlab.distill on "
                         f"your objects) that kdlab cannot rebuild; create it, load_state_dict(torch.load(path, "
                         f"weights_only=True)['model']) and pass it to kdlab.deploy.export.export_model")
    model = model_from_checkpoint({"model": weights}, arch, file)
    model.eval()
    model.kdlab_input = input_spec(arch, state.get("config") or {})
    model.kdlab_source = str(file)
    return Loaded(model, file, arch, state.get("config") or {}, name)


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a path names: the file itself, or a run directory's last.pt (else its best.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.pt", "best.pt"):
            if (path / name).is_file():
                return path / name
        init = " (only its init stage has a checkpoint: the run stopped in it)" if (path / "init/last.pt").is_file() \
            else ""
        raise KdlabError(f"'{path}' holds no model weights (no last.pt or best.pt){init}; pass a finished run "
                         f"directory or its checkpoint file")
    if not path.exists():
        raise KdlabError(f"'{path}' does not exist; pass a kdlab run directory or its best.pt/last.pt")
    return path


def _arch(state: dict[str, Any], file: Path) -> dict[str, Any]:
    if "outputs" in state and "key" in state and "format" in state:
        raise KdlabError(f"'{file}' is a teacher-output cache (--cache-teacher), not model weights; pass a run "
                         f"directory or its best.pt/last.pt")
    arch = state.get("arch")
    if not isinstance(arch, dict) or not isinstance(state.get("model"), dict):
        raise KdlabError(f"'{file}' is not a kdlab checkpoint (no architecture recorded, a plain state_dict?); "
                         f"build the model yourself and load_state_dict(torch.load('{file}', weights_only=True)), "
                         f"or pass a kdlab run")
    return arch


def _member(state: dict[str, Any], arch: dict[str, Any], member: int | str | None,
            file: Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(weights, architecture, member name) of the model to build: the run's model or a cohort student."""
    cohort = arch.get("cohort")
    if not cohort:
        if member is not None:
            raise KdlabError(f"'{file}' holds one model, not a mutual cohort; drop --member/member=")
        return state["model"], arch, None
    names = cohort_names(list(cohort))
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    if member is None:
        raise KdlabError(f"'{file}' is a mutual cohort of {len(names)} students ({listed}); pick one with "
                         f"--member/member= (an index or a name)")
    index = _member_index(member, names, list(cohort))
    if index is None:
        raise KdlabError(f"'{file}' has no cohort student '{member}'; choose one of {listed}")
    saved = state.get("models") or {}
    if names[index] not in saved:
        raise KdlabError(f"'{file}' lacks the weights of cohort student {names[index]}; the checkpoint is damaged")
    return saved[names[index]], {**arch, "model": cohort[index]}, names[index]


def _member_index(member: int | str, names: list[str], archs: list[str]) -> int | None:
    text = str(member).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        return index if 0 <= index < len(names) else None
    if text in names:
        return names.index(text)
    matches = [i for i, a in enumerate(archs) if a == text]
    return matches[0] if len(matches) == 1 else None


def input_spec(arch: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the model takes: pixels scaled to 0..1, normalised per channel with `mean`/`std`, as N x C x H x W
    with H = W = `image_size`; a cross-quality student's `downscaled_from`/`resize_mode` name the data size it
    was trained on and how the batches were brought to its size. `mean`/`std` are None for data kdlab does not
    know (a model trained on your own loaders)."""
    data = str(arch.get("data") or (config or {}).get("data", {}).get("name") or "")
    mean, std = NORMALISATION.get(data, (None, None))
    return {
        "image_size": int(arch["image_size"]), "in_channels": int(arch["in_channels"]),
        "num_classes": int(arch["num_classes"]) if arch.get("num_classes") is not None else None,
        "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None,
        "layout": "NCHW", "pixels": "0..1 (uint8 / 255), then (x - mean) / std per channel",
        "data": data or None, "downscaled_from": arch.get("downscaled_from"),
        "resize_mode": arch.get("resize_mode") if arch.get("downscaled_from") is not None else None,
        "class_names": None, "model": arch.get("model"), "kdlab_version": __version__,
    }
