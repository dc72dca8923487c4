"""Model zoo: CIFAR-style networks of the distillation literature plus torchvision models (``tv:<name>``) and
timm models (``timm:<name>``, with the optional extra ``kdlab[timm]``).

``create(name, num_classes)`` builds a model whose forward returns logits only; intermediate tensors
are read with forward hooks at the module paths given by ``tap_points(model)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from kdlab.errors import KdlabError, unknown_name
from kdlab.models.hooks import FlatAdaptiveAvgPool2d, HookPoint
from kdlab.models.mixer import MlpMixer
from kdlab.models.mobilenetv2 import MobileNetV2
from kdlab.models.resnet_cifar import resnet18_cifar, resnet_cifar, resnet_cifar_x4
from kdlab.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdlab.models.vgg import VGG
from kdlab.models.vit import VisionTransformer
from kdlab.models.weights import load_weights, read_state_dict
from kdlab.models.wrn import WideResNet

__all__ = [
    "FlatAdaptiveAvgPool2d",
    "HookPoint",
    "create",
    "list_models",
    "load_weights",
    "model_info",
    "read_state_dict",
    "tap_points",
]

Builder = Callable[[int, int, int], nn.Module]  # (num_classes, in_channels, image_size) -> model


@dataclass(frozen=True)
class _Spec:
    family: str
    description: str
    builder: Builder


def _wrn_spec(depth: int, width: int) -> _Spec:
    return _Spec(
        "wrn",
        f"WRN-{depth}-{width}: pre-activation wide ResNet, {(depth - 4) // 6} blocks per group, "
        f"widths {16 * width}/{32 * width}/{64 * width} (Zagoruyko & Komodakis 2016)",
        lambda c, i, s: WideResNet(depth, width, c, i, s),
    )


def _zoo() -> dict[str, _Spec]:
    zoo: dict[str, _Spec] = {}
    for depth in (8, 14, 20, 32, 44, 56, 110):
        zoo[f"resnet{depth}"] = _Spec(
            "resnet_cifar",
            f"ResNet-{depth} for CIFAR: 3 stages of {(depth - 2) // 6} basic blocks, widths 16/32/64 "
            "(He et al. 2016)",
            partial(resnet_cifar, depth),
        )
    for depth in (8, 32):
        zoo[f"resnet{depth}x4"] = _Spec(
            "resnet_cifar",
            f"ResNet-{depth}x4 (CRD benchmark): stem 32, 3 stages of {(depth - 2) // 6} basic blocks, "
            "widths 64/128/256",
            partial(resnet_cifar_x4, depth),
        )
    zoo["resnet18"] = _Spec(
        "resnet_cifar",
        "ResNet-18 for CIFAR: 3x3 stem, no max-pool, 4 stages of 2 basic blocks, widths 64..512",
        resnet18_cifar,
    )
    for depth, width in ((16, 1), (16, 2), (16, 4), (28, 4), (28, 10), (40, 1), (40, 2), (40, 4)):
        zoo[f"wrn_{depth}_{width}"] = _wrn_spec(depth, width)
    for depth in (8, 11, 13, 16, 19):
        zoo[f"vgg{depth}"] = _Spec(
            "vgg",
            f"VGG-{depth} with BN for CIFAR (CRD benchmark; Simonyan & Zisserman 2015), "
            "Linear(512) classifier",
            lambda c, i, s, d=depth: VGG(d, c, i, s),
        )
    zoo["mobilenetv2"] = _Spec(
        "mobilenetv2",
        "MobileNetV2 width 0.5, expansion 6 (CRD benchmark's 'mobile_half'; Sandler et al. 2018)",
        lambda c, i, s: MobileNetV2(c, i, s, width=0.5),
    )
    zoo["mobilenetv2_w1"] = _Spec(
        "mobilenetv2",
        "MobileNetV2 width 1.0, expansion 6, CIFAR strides (Sandler et al. 2018)",
        lambda c, i, s: MobileNetV2(c, i, s, width=1.0),
    )
    zoo["shufflenetv1"] = _Spec(
        "shufflenet",
        "ShuffleNet V1, groups 3, stages 240/480/960 (CRD benchmark 'ShuffleV1'; Zhang et al. 2018)",
        ShuffleNetV1,
    )
    zoo["shufflenetv2"] = _Spec(
        "shufflenet",
        "ShuffleNet V2 1x, stages 116/232/464, head 1024 (CRD benchmark 'ShuffleV2'; Ma et al. 2018)",
        ShuffleNetV2,
    )
    zoo["vit_tiny_cifar"] = _Spec(
        "vit",
        "ViT for small images: 4x4 patches, width 192, 6 blocks, 3 heads, class token (Dosovitskiy et al. 2021; "
        "DeiT-Tiny's width, Touvron et al. 2021); stages after blocks 2/4/6 as patch-grid maps, no final_map",
        lambda c, i, s: VisionTransformer(c, i, s),
    )
    zoo["deit_tiny_cifar"] = _Spec(
        "vit",
        "vit_tiny_cifar with DeiT's distillation token and head (Touvron et al. 2021): logits = mean of both "
        "heads; the student of method deit",
        lambda c, i, s: VisionTransformer(c, i, s, distill_token=True),
    )
    zoo["mixer_cifar"] = _Spec(
        "mixer",
        "MLP-Mixer for small images: 4x4 patches, width 128, 6 blocks, token/channel MLPs 64/512 "
        "(Tolstikhin et al. 2021); global average pooling, so final_map is defined",
        lambda c, i, s: MlpMixer(c, i, s),
    )
    return zoo


ZOO = _zoo()
ALIASES = {"mobile_half": "mobilenetv2", "shufflev1": "shufflenetv1", "shufflev2": "shufflenetv2"}
TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
TIMM_USAGE = ("timm:<name>          any timm model, e.g. timm:resnet18 or timm:vit_tiny_patch16_224 (untrained; "
              "pip install 'kdlab[timm]'; weights from a local file only)")  # `kdlab list models`' timm line


def _torchvision():
    """torchvision's model zoo, imported on first use: it costs seconds at start-up and zoo runs never need it."""
    from kdlab.models import torchvision_models  # noqa: PLC0415 - torchvision is slow to import

    return torchvision_models


def _timm():
    """The timm adapter, imported on first use (timm is an optional dependency: kdlab[timm])."""
    from kdlab.models import timm_models  # noqa: PLC0415 - timm is optional and slow to import

    return timm_models


_WRN_NAME = re.compile(r"wrn_(\d+)_(\d+)")


def _normalise(name: str) -> str:
    name = str(name).strip()
    if name.startswith((TV_PREFIX, TIMM_PREFIX)):
        return name
    name = name.lower().replace("-", "_")
    return ALIASES.get(name, name)


def _zoo_spec(name: str) -> _Spec:
    if name in ZOO:
        return ZOO[name]
    match = _WRN_NAME.fullmatch(name)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        if (depth - 4) % 6 != 0 or depth < 10 or width < 1:
            raise KdlabError(
                f"invalid wide ResNet '{name}': depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...) "
                "and width >= 1, e.g. wrn_40_2"
            )
        return _wrn_spec(depth, width)
    raise unknown_name("model", name, list_models())


def list_models(include_torchvision: bool = True) -> list[str]:
    """All model names: the zoo (common WRN sizes listed; any ``wrn_D_K`` works), then ``tv:<name>``. timm models
    (``timm:<name>``, over a thousand) are not listed: `kdlab list models` names them in one line."""
    names = list(ZOO)
    if include_torchvision:
        names += [TV_PREFIX + n for n in _torchvision().torchvision_names()]
    return names


def model_info(name: str) -> dict[str, str]:
    """``{'name', 'family', 'source', 'description'}`` for a model name (raises KdlabError if unknown)."""
    name = _normalise(name)
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not _timm().is_timm_name(arch):
            raise unknown_name("model", name, [TIMM_PREFIX + n for n in _timm().import_timm().list_models()])
        return {"name": name, "family": "timm", "source": "timm", "description": _timm().describe(arch)}
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX) :]
        if arch not in _torchvision().torchvision_names():
            raise unknown_name("model", name, list_models())
        return {
            "name": name,
            "family": "torchvision",
            "source": "torchvision",
            "description": f"torchvision.models '{arch}', untrained unless weights= names a local file",
        }
    spec = _zoo_spec(name)
    return {"name": name, "family": spec.family, "source": "zoo", "description": spec.description}


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdlabError(f"{what} must be a positive integer, got {value!r}; fix the {what} setting")
    return value


def create(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    weights: str | Path | None = None,
    new_head: bool = False,
) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes on ``in_channels`` x ``image_size``² inputs.

    ``image_size`` plans downsampling so small inputs (8x8 digits, 28x28 MNIST) never collapse below 1x1.
    ``weights`` is a local file (a state_dict, or a dict holding one under 'state_dict'/'model');
    nothing is downloaded. With ``new_head``, weights whose classifier has another class count load into
    everything but the classifier, which stays freshly initialised (fine-tuning on new classes); the model
    then carries the note in ``model.kdlab_weights_note``. The returned model's forward gives logits only.
    """
    _positive_int(num_classes, "num_classes")
    _positive_int(in_channels, "in_channels")
    _positive_int(image_size, "image_size")
    name = _normalise(name)
    input_conv = None
    if name.startswith(TV_PREFIX):
        model, input_conv = _torchvision().build(name, num_classes, in_channels, image_size)
    elif name.startswith(TIMM_PREFIX):
        model, input_conv = _timm().build(name, num_classes, in_channels, image_size)
    else:
        model = _zoo_spec(name).builder(num_classes, in_channels, image_size)
    if weights is not None:
        head = _classifier_path(model) if new_head else None
        note = load_weights(model, weights, name, input_conv, new_head=head)
        if note:
            model.kdlab_weights_note = note
    return model


def _classifier_path(model: nn.Module) -> str | None:
    """Module path of the model's final classifier (its `classifier` tap), or None when it declares none."""
    try:
        return tap_points(model).get("classifier")
    except KdlabError:
        return None


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """Inner model and the module-path prefix added by DDP/DataParallel (``module.``) or compile."""
    prefix = ""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        else:
            return model, prefix


def tap_points(model: nn.Module) -> dict[str, str]:
    """Symbolic tap name -> module path (``stem``, ``stageK``, ``stageK_pre``, ``embedding``, ``classifier``).

    Paths resolve with ``model.get_submodule(path)``; a forward hook there sees the named tensor. Zoo models
    declare them in ``model.tap_points``; torchvision models get them from a table by family.
    """
    inner, prefix = _unwrap(model)
    taps = getattr(inner, "tap_points", None)
    if not isinstance(taps, dict):
        taps = _torchvision().torchvision_tap_points(inner)
    if taps is None:
        raise KdlabError(
            f"model {type(inner).__name__} declares no tap points; give taps as module paths "
            "(see model.named_modules()) instead of symbolic names"
        )
    return {tap: prefix + path for tap, path in taps.items()}
