"""timm models (``timm:<name>``, PyPI ``timm``, the optional extra ``pip install 'kdlab[timm]'``) and their taps.

Models are built with ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`` and, where
the architecture takes it (ViTs, Mixers, Swin, ...), ``img_size=image_size``; nothing is downloaded, weights
come from a local file through ``weights=`` (kdlab.models.weights). The tap table is derived once, when the
model is built, from timm's ``feature_info`` and one probing forward pass on a random batch:

* ``stem`` is the first ``feature_info`` level and ``stage1..N`` the others (ResNet: act1, layer1..4). Token
  models, whose levels all have one reduction (ViT, DeiT, Mixer: every block), get ``stem`` = the patch
  embedding's conv and 4 stages at evenly spaced blocks. A level that outputs tokens (N, L, D) or a
  channels-last map (N, H, W, C) gets a parameter-free :class:`~kdlab.models.vit.TokenMap` child whose
  output is the (N, C, H, W) map, so every feature method reads it; the state_dict is unchanged.
* ``stageK_pre``: where a stage ends in a ReLU module (timm's ResNets), that ReLU is replaced by one (not in
  place) that routes its input through a ``kdlab_preact`` :class:`HookPoint` of its block; where the stage
  ends without an activation (EfficientNet, ConvNeXt, token stages) the stage output itself; absent otherwise.
* ``classifier`` is ``get_classifier()`` (for DeiT's distilled models its first head; the second is the
  ``distill_logits`` tap), ``embedding`` the module whose output is the classifier's input (the global pool,
  ``head_drop``) or, where no module outputs it (DeiT's class token is a slice), a ``kdlab_input`` hook point
  on the classifier's input; ``final_map`` is the last 4-D map whose spatial mean equals that embedding, checked
  numerically, so it is named only where CAT-KD's and SDD's class activation maps are defined.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from kdlab.errors import KdlabError, unknown_name
from kdlab.models.hooks import HookPoint
from kdlab.models.vit import DISTILL_TAP, TokenMap, stage_ends

PREFIX = "timm:"
INSTALL = "pip install 'kdlab[timm]'"
TOKEN_STAGES = 4  # stages of a token model (ViT/DeiT/Mixer), at evenly spaced blocks
_ACTIVATION_WORDS = ("relu", "silu", "swish", "gelu", "mish", "sigmoid", "tanh", "elu", "hard", "prelu", "act")


def import_timm():
    """The timm package, or a one-line error naming the install command."""
    try:
        import timm  # noqa: PLC0415 - optional dependency, imported when a timm: model is asked for
    except ImportError:
        raise KdlabError(f"timm: models need the package timm, which is not installed; run {INSTALL}") from None
    return timm


@cache
def _names() -> tuple[str, ...]:
    return tuple(import_timm().list_models())


def is_timm_name(arch: str) -> bool:
    return arch in _names()


def describe(arch: str) -> str:
    return f"timm model '{arch}' (pretrained=False; weights from a local file only)"


def build(name: str, num_classes: int, in_channels: int = 3, image_size: int = 224) -> tuple[nn.Module, str | None]:
    """Build ``timm:<name>`` untrained with its tap table; returns it and the path of its input conv (or None)."""
    arch = name[len(PREFIX):] if name.startswith(PREFIX) else name
    timm = import_timm()
    if not is_timm_name(arch):
        raise unknown_name("model", PREFIX + arch, [PREFIX + n for n in _names()])
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:
        try:
            model = timm.create_model(arch, img_size=image_size, **kwargs)
        except TypeError:  # a CNN: no img_size argument
            model = timm.create_model(arch, **kwargs)
    except Exception as error:  # noqa: BLE001 - any construction failure is one line for the user
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KdlabError(f"cannot build timm model '{arch}' for {in_channels}x{image_size}x{image_size} inputs: "
                         f"{text}; check image_size (a ViT's patch size must divide it) and in_channels") from None
    try:
        model.tap_points = derive_taps(model, in_channels, image_size)
    except KdlabError:
        raise
    except Exception as error:  # noqa: BLE001 - the probing forward failed: the input size does not fit
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KdlabError(f"cannot build timm model '{arch}' for {in_channels}x{image_size}x{image_size} inputs: "
                         f"{text}; use a larger image_size (or a model for small images)") from None
    return model, _input_conv(model, in_channels)


def _input_conv(model: nn.Module, in_channels: int) -> str | None:
    if in_channels == 3:
        return None
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_channels:
            return path
    return None


# ------------------------------------------------------------------------------------------------- probing


class _Probe:
    """One eval-mode forward with hooks on every module: completion order, call counts and outputs."""

    def __init__(self, model: nn.Module, classifier: nn.Module, example: torch.Tensor):
        self.order: list[str] = []
        self.calls: dict[str, int] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.classifier_input: torch.Tensor | None = None
        self.classifier_start = -1
        handles = []
        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_hook(self._hook(path)))
        handles.append(classifier.register_forward_pre_hook(self._pre_hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            self.calls[path] = self.calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor):
                self.order.append(path)
                self.outputs[path] = output
        return hook

    def _pre_hook(self, _module, inputs):
        if self.classifier_input is None and inputs and isinstance(inputs[0], torch.Tensor):
            self.classifier_input = inputs[0]
            self.classifier_start = len(self.order)

    def once(self, path: str) -> bool:
        return self.calls.get(path, 0) == 1


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    for path, module in model.named_modules():
        if module is target and path:
            return path
    return None


def _classifiers(model: nn.Module) -> tuple[str | None, str | None]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    dist = None
    if isinstance(head, (tuple, list)):  # DeiT distilled: (head, head_dist)
        head, dist = head[0], head[1] if len(head) > 1 else None
    head_path = _path_of(model, head) if isinstance(head, nn.Module) else None
    dist_path = _path_of(model, dist) if isinstance(dist, nn.Module) else None
    return head_path, dist_path


def _embedding(probe: _Probe, head_path: str) -> str | None:
    """The latest module, run once, that completed before the classifier and output exactly its input."""
    if probe.classifier_input is None:
        return None
    for path in reversed(probe.order[: probe.classifier_start]):
        if probe.outputs[path] is probe.classifier_input and probe.once(path) and not head_path.startswith(path + "."):
            return path
    return None


def _final_map(model: nn.Module, probe: _Probe, embedding_path: str, head_path: str) -> str | None:
    """The last 4-D (N, C, H, W) output before the embedding whose spatial mean is the embedding.

    Only maps that a pooling layer follows on the way to the embedding are candidates: a head that maps the
    pooled vector on (MobileNetV3's conv_head) has 1x1 maps of the right mean but no class activation maps. Pooled
    maps are not candidates either: pooling layers, layers inside the embedding's module (the pool of timm's
    `global_pool`) or inside the classifier's own head module (ConvNeXt's `head.norm`, after its pooling)."""
    embedding = probe.outputs[embedding_path]
    limit = probe.order.index(embedding_path)
    head_parent = head_path.rpartition(".")[0]

    def pooling(path: str) -> bool:
        return "pool" in type(model.get_submodule(path)).__name__.lower()

    pools = [i for i, path in enumerate(probe.order[: limit + 1]) if pooling(path)]
    for index in range(limit - 1, -1, -1):
        path = probe.order[index]
        out = probe.outputs[path]
        if not any(j > index for j in pools):
            continue
        if ((head_parent and path.startswith(head_parent + ".")) or path.startswith(embedding_path + ".")
                or pooling(path)):
            continue
        if (out.dim() == 4 and embedding.dim() == 2 and out.shape[:2] == embedding.shape and probe.once(path)
                and torch.allclose(out.mean(dim=(2, 3)), embedding, rtol=1e-4, atol=1e-5)):
            return path
    return None


_MAPPED: dict[type, type] = {}


def _with_map(module: nn.Module, token_map: TokenMap) -> None:
    """Give `module` a `kdlab_map` child called on its output (re-classed in place; keys and results unchanged)."""
    cls = type(module)
    if cls not in _MAPPED:
        def forward(self, *args, **kwargs):
            out = cls.forward(self, *args, **kwargs)
            self.kdlab_map(out)  # seen by the stage tap's hook only
            return out

        _MAPPED[cls] = type(f"Mapped{cls.__name__}", (cls,), {"forward": forward})
    module.__class__ = _MAPPED[cls]
    module.kdlab_map = token_map


class _PreactReLU(nn.ReLU):
    """ReLU (never in place) whose input first passes a hook point registered on the block that holds it.

    The hook point is the block's child ``kdlab_preact`` (after the block's layers, as the zoo's ``preact``), so
    OD finds the BN before it among its earlier siblings; the ReLU only calls it."""

    def __init__(self, point: HookPoint) -> None:
        super().__init__(inplace=False)
        object.__setattr__(self, "_point", point)  # not a child: registered once, on the block

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.relu(self._point(input))


class _InputTappedLinear(nn.Linear):
    """A Linear classifier whose input passes a ``kdlab_input`` hook point (re-classed in place; same keys)."""

    kdlab_input: HookPoint

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self.kdlab_input(input))


def _is_activation(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return any(word in name for word in _ACTIVATION_WORDS)


def _last_leaf(model: nn.Module, probe: _Probe, stage: str) -> str | None:
    """The last leaf module inside `stage` to complete in the probe."""
    for path in reversed(probe.order):
        if path.startswith(stage + ".") and not any(True for _ in model.get_submodule(path).children()):
            return path
    return None


def _pre_tap(model: nn.Module, probe: _Probe, stage: str, mapped: bool) -> str | None:
    if mapped:
        return None  # token stages: filled in as the stage itself
    leaf = _last_leaf(model, probe, stage)
    if leaf is None:
        return None
    module = model.get_submodule(leaf)
    if type(module) is nn.ReLU:
        block_path = leaf.rpartition(".")[0]
        block = model.get_submodule(block_path)
        block.kdlab_preact = HookPoint()
        model.set_submodule(leaf, _PreactReLU(block.kdlab_preact))
        return f"{block_path}.kdlab_preact"
    if _is_activation(module):
        return None  # another activation ends the stage: no pre-activation tensor is exposed
    return stage  # no activation after the stage's last layer: its output is the pre-activation tensor


def _levels(model: nn.Module) -> tuple[str | None, list[str]]:
    """(stem, stages) module paths from timm's feature_info."""
    info = getattr(model, "feature_info", None)
    if not info:
        return None, []
    entries = [(d["module"], d.get("reduction")) for d in info]
    reductions = {r for _, r in entries}
    if len(entries) > 1 and len(reductions) == 1:  # token model: every block at one reduction
        ends = stage_ends(len(entries), min(TOKEN_STAGES, len(entries)))
        stem = None
        for candidate in ("patch_embed.proj", "stem"):
            try:
                model.get_submodule(candidate)
                stem = candidate
                break
            except AttributeError:
                continue
        return stem, [entries[i][0] for i in ends]
    if len(entries) == 1:
        return None, [entries[0][0]]
    return entries[0][0], [path for path, _ in entries[1:]]


def _grid(model: nn.Module, tokens: int, prefix: int) -> tuple[int, int] | None:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and int(grid[0]) * int(grid[1]) == tokens - prefix:
        return int(grid[0]), int(grid[1])
    side = int(round((tokens - prefix) ** 0.5))
    return (side, side) if side * side == tokens - prefix else None


def _as_map(model: nn.Module, path: str, out: torch.Tensor, channels: int | None) -> str | None:
    """Tap path giving a (N, C, H, W) map of the output at `path`, adding a TokenMap where needed."""
    module = model.get_submodule(path)
    if out.dim() == 4 and (channels is None or out.shape[1] == channels):
        return path
    if out.dim() == 4 and out.shape[-1] == (channels or out.shape[-1]):
        _with_map(module, TokenMap(channels_last=True))
        return f"{path}.kdlab_map"
    if out.dim() == 3:
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        grid = _grid(model, out.shape[1], prefix)
        if grid is not None:
            _with_map(module, TokenMap(prefix, grid))
            return f"{path}.kdlab_map"
    return None


def derive_taps(model: nn.Module, in_channels: int, image_size: int) -> dict[str, str]:
    """The tap table of a timm model (see the module docstring)."""
    head_path, dist_path = _classifiers(model)
    if head_path is None:
        raise KdlabError(f"timm model {type(model).__name__} has no classifier module; use another model")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, in_channels, image_size, image_size, generator=generator)
    try:
        param = next(model.parameters())
        example = example.to(param.device)
    except StopIteration:
        pass
    probe = _Probe(model, model.get_submodule(head_path), example)
    info = {d["module"]: d.get("num_chs") for d in (getattr(model, "feature_info", None) or [])}
    taps: dict[str, str] = {}
    stem, stages = _levels(model)
    if stem is not None and stem in probe.outputs:
        mapped = _as_map(model, stem, probe.outputs[stem], info.get(stem))
        if mapped:
            taps["stem"] = mapped
    pre: dict[str, str] = {}
    for k, path in enumerate(stages, start=1):
        if path not in probe.outputs:
            break
        mapped = _as_map(model, path, probe.outputs[path], info.get(path))
        if mapped is None:
            break
        taps[f"stage{k}"] = mapped
        pre_path = _pre_tap(model, probe, path, mapped != path)
        if pre_path is not None or mapped != path:
            pre[f"stage{k}_pre"] = pre_path or mapped
    if len(pre) == sum(1 for t in taps if t.startswith("stage")):
        taps.update(pre)  # all stages or none: methods pair stageK_pre across the whole network
    embedding = _embedding(probe, head_path)
    head = model.get_submodule(head_path)
    if embedding is None and type(head) is nn.Linear and probe.classifier_input is not None:
        head.__class__ = _InputTappedLinear  # no module outputs the classifier's input: hook the input itself
        head.kdlab_input = HookPoint()
        embedding = f"{head_path}.kdlab_input"
        probe.outputs[embedding] = probe.classifier_input
        probe.order.insert(probe.classifier_start, embedding)
        probe.calls[embedding] = 1
    if embedding is not None:
        final = _final_map(model, probe, embedding, head_path)
        if final is not None:
            taps["final_map"] = final
        taps["embedding"] = embedding
    taps["classifier"] = head_path
    if dist_path is not None:
        taps[DISTILL_TAP] = dist_path
    return taps


__all__ = ["INSTALL", "PREFIX", "build", "derive_taps", "describe", "import_timm", "is_timm_name"]
