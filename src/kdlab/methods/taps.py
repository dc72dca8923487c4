"""Taps: named intermediate outputs captured by forward hooks, addressed by module path.

Models stay plain (forward returns logits); a method declares symbolic tap names ("stage2",
"stage3_pre", "embedding", ...), `resolve_taps` turns them into module paths through the model's tap
table (or the user's own paths), and `TapRecorder` captures exactly those outputs. When only
intermediate taps are needed, the recorder stops the forward pass after the last one fires, so the
teacher does no work beyond what the method reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from kdlab import models
from kdlab.errors import KdlabError, closest

LOGITS = "logits"  # the model's own output; not a hook


class _StopForward(Exception):
    """Raised from a hook once every requested tap has fired, to skip the rest of the network."""


def available_taps(model: nn.Module, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Symbolic tap name -> module path for `model`: its own table, then the user's overrides on top."""
    try:
        points = dict(models.tap_points(model))
    except KdlabError:
        if not overrides:
            raise
        points = {}
    points.update(overrides or {})
    return points


def resolve_taps(model: nn.Module, names: Iterable[str], overrides: Mapping[str, str] | None = None,
                 role: str = "model") -> dict[str, str]:
    """Map each requested symbolic name to a module path of `model`, with a clear error when one is missing."""
    names = [n for n in names if n != LOGITS]
    points = available_taps(model, overrides) if names else {}
    resolved = {}
    for name in names:
        if name not in points:
            # A raw module path is accepted as a tap name too (outside models without a tap table).
            if _has_submodule(model, name):
                resolved[name] = name
                continue
            raise KdlabError(
                f"the {role} has no tap '{name}'{closest(name, points)}; name its module path with "
                f"taps={{'{name}': 'path.to.module'}} (available: {', '.join(sorted(points)) or 'none'})"
            )
        if not _has_submodule(model, points[name]):
            raise KdlabError(f"the {role}'s tap '{name}' points at '{points[name]}', which is not a module "
                             f"of the model; fix the module path")
        resolved[name] = points[name]
    return resolved


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def stage_names(points: Mapping[str, str], pre: bool = False) -> list[str]:
    """The model's stage tap names in order: stage1..stageN, or their pre-ReLU versions."""
    stages = []
    i = 1
    while f"stage{i}" in points:
        stages.append(f"stage{i}_pre" if pre else f"stage{i}")
        i += 1
    return stages


class TapRecorder:
    """Captures the outputs of the named modules of `model` on each forward pass.

    Usage: `with TapRecorder(model, {"stage3": "layer3"}) as rec: logits = rec.run(x)`; then
    `rec.outputs["stage3"]`. With `stop_early=True` the forward is cut short once all taps fired and
    `run` returns None (use only when the logits are not needed).

    Attributes (read-only for callers):
        model: the model the hooks sit on.
        taps: {tap name: module path} recorded.
        stop_early: whether `run` cuts the forward after the last tap (False when there are no taps).
        outputs: {tap name: tensor} of the latest `run`.
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, str], stop_early: bool = False):
        self.model = model
        self.taps = dict(taps)
        self.stop_early = stop_early and bool(self.taps)
        self.outputs: dict[str, torch.Tensor] = {}
        self._active = False  # hooks act only during this recorder's own run(), not other callers' forwards
        self._forward = model  # what `run` calls: the model, or its compiled form (`compile`)
        self._handles: list = []
        by_path: dict[str, list[str]] = {}
        for name, path in self.taps.items():
            by_path.setdefault(path, []).append(name)
        for path, names in by_path.items():
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._hook(names)))

    @property
    def signature(self) -> dict[str, Any]:
        """{'taps': {name: module path}, 'stop_early': bool}: what `run` records besides the model and its input.

        Two recorders on the same model with equal signatures produce the same outputs for the same input,
        so caches of recorded outputs (kdlab.distillation.teacher_cache) key on it. A fresh dict each call.
        """
        return {"taps": dict(self.taps), "stop_early": self.stop_early}

    def _hook(self, names: list[str]):
        def hook(_module, _inputs, output):
            if not self._active:
                return
            for name in names:
                self.outputs[name] = output
            if self.stop_early and len(self.outputs) == len(self.taps):
                raise _StopForward

        return hook

    def run(self, *inputs, **kwargs):
        """Forward `inputs` through the model, recording taps; returns the model's output (or None if cut)."""
        self.outputs = {}
        self._active = True
        try:
            return self._forward(*inputs, **kwargs)
        except _StopForward:
            return None
        finally:
            self._active = False

    def compile(self, compile_fn) -> None:
        """Run the model through `compile_fn(model)` (torch.compile) from now on. The hooks stay on the plain
        modules; dynamo traces them with the forward (a tapped resnet20 compiles to one graph, no breaks). A
        compiled forward runs to its end: cutting it short (`stop_early`) raises inside the compiled graph."""
        self.stop_early = False
        self._forward = compile_fn(self.model)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> TapRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, taps: Mapping[str, str], example: torch.Tensor) -> dict[str, torch.Size]:
    """Shapes (without the batch dimension) of each tap for one example batch; the model's mode is kept."""
    was_training = model.training
    model.eval()
    try:
        with TapRecorder(model, taps) as rec:
            logits = rec.run(example)
        shapes = {name: out.shape[1:] for name, out in rec.outputs.items()}
        shapes[LOGITS] = logits.shape[1:]
        return shapes
    finally:
        model.train(was_training)
