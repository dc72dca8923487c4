"""torchvision classification models (``tv:<name>``) and their tap-point table.

Models are built with ``torchvision.models.get_model(name, weights=None, num_classes=...)``; nothing is
downloaded. Three changes make them tappable without altering what they compute or their state_dict keys:
the first conv is replaced when ``in_channels != 3``; a ResNet's ``avgpool`` becomes a pool that also
flattens (so the embedding is one module's output); the last block of each ResNet layer gets a
:class:`HookPoint` named ``preact`` before its final ReLU, and VGG's ReLUs at stage ends stop working in
place, so hooks on the pre-ReLU tensors see pre-ReLU values.

Tap points come from ``TAP_TABLE``, keyed by architecture family (the torchvision class). ``final_map`` (the
map whose global average is the input of a single Linear classifier, for class activation maps) is named for
ResNet, RegNet, MobileNetV2, EfficientNet and ShuffleNetV2, not where a non-linear head follows the pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from kdlab.errors import KdlabError, unknown_name
from kdlab.models.hooks import FlatAdaptiveAvgPool2d, HookPoint

PREFIX = "tv:"

# Builders whose defaults would make forward return more than logits, or warn about init defaults.
_EXTRA_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@cache
def _names() -> tuple[str, ...]:
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models, without the ``tv:`` prefix."""
    return list(_names())


def build(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 224
) -> tuple[nn.Module, str | None]:
    """Build ``tv:<name>`` untrained; returns the model and the path of a replaced stem conv (or None)."""
    arch = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    names = torchvision_names()
    if arch not in names:
        raise unknown_name("model", PREFIX + arch, [PREFIX + n for n in names])
    kwargs: dict[str, object] = dict(_EXTRA_KWARGS.get(arch, {}))
    if arch.startswith("vit_"):
        kwargs["image_size"] = image_size  # ViT's position embeddings are sized for one input size
    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError, AssertionError) as error:
        raise KdlabError(
            f"cannot build torchvision model '{arch}': {error}; check num_classes/image_size"
        ) from None
    stem_path = replace_input_conv(model, in_channels) if in_channels != 3 else None
    if isinstance(model, torchvision.models.ResNet):
        _expose_resnet_preact(model)
    if isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d) and isinstance(
        getattr(model, "fc", None), nn.Linear
    ):
        model.avgpool = FlatAdaptiveAvgPool2d()
    if isinstance(model, torchvision.models.VGG):
        for index in _vgg_pool_indices(model):
            relu = model.features[index - 1]
            if isinstance(relu, nn.ReLU):
                relu.inplace = False  # keep the BN output seen by a stageK_pre hook unmodified
    return model, stem_path


def replace_input_conv(model: nn.Module, in_channels: int) -> str:
    """Replace the first 3-channel conv with one taking ``in_channels``; returns its module path."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            conv = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            model.set_submodule(path, conv)
            return path
    raise KdlabError(
        f"cannot adapt {type(model).__name__} to {in_channels} input channels: "
        "no 3-channel input conv found; "
        "use 3-channel images or a zoo model"
    )


class _PreactBasicBlock(BasicBlock):
    """torchvision BasicBlock with a ``preact`` hook point on the residual sum before the final ReLU."""

    preact: HookPoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(self.preact(out + identity))  # not in place: the hooked tensor stays pre-ReLU


class _PreactBottleneck(Bottleneck):
    """torchvision Bottleneck with a ``preact`` hook point on the residual sum before the final ReLU."""

    preact: HookPoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(self.preact(out + identity))


def _expose_resnet_preact(model: nn.Module) -> None:
    """Give the last block of each layer a pre-ReLU hook point; parameters and keys are untouched."""
    for index in range(1, 5):
        layer = getattr(model, f"layer{index}", None)
        if not isinstance(layer, nn.Sequential) or len(layer) == 0:
            continue
        block = layer[-1]
        # Re-class in place: same parameters and state_dict keys, only forward() changes.
        if type(block) is BasicBlock:
            block.__class__ = _PreactBasicBlock
        elif type(block) is Bottleneck:
            block.__class__ = _PreactBottleneck
        else:
            continue
        block.preact = HookPoint()


# ---------------------------------------------------------------------------------------------- tap table


def _resnet_taps(model: nn.Module) -> dict[str, str]:
    taps = {"stem": "maxpool"}
    pre = {}
    for index in range(1, 5):
        layer = getattr(model, f"layer{index}")
        taps[f"stage{index}"] = f"layer{index}"
        if isinstance(getattr(layer[-1], "preact", None), HookPoint):
            pre[f"stage{index}_pre"] = f"layer{index}.{len(layer) - 1}.preact"
    taps.update(pre)
    taps["final_map"] = "layer4"
    if isinstance(model.avgpool, FlatAdaptiveAvgPool2d):
        taps["embedding"] = "avgpool"
    taps["classifier"] = "fc"
    return taps


def _regnet_taps(model: nn.Module) -> dict[str, str]:
    taps = {"stem": "stem"}
    for index, (name, _) in enumerate(model.trunk_output.named_children(), start=1):
        taps[f"stage{index}"] = f"trunk_output.{name}"
    taps["final_map"] = taps[f"stage{len(model.trunk_output)}"]
    if isinstance(model.avgpool, FlatAdaptiveAvgPool2d):
        taps["embedding"] = "avgpool"
    taps["classifier"] = "fc"
    return taps


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def _head_taps(model: nn.Module) -> dict[str, str]:
    """``embedding``/``classifier`` for a ``classifier`` Sequential ending in a Linear whose input is 2-D."""
    head = model.classifier
    last = len(head) - 1
    return {"embedding": f"classifier.{last - 1}", "classifier": f"classifier.{last}"}


def _features_taps(model: nn.Module) -> dict[str, str]:
    """MobileNetV2/V3, EfficientNet, ConvNeXt: stage k ends before each downsampling child of ``features``."""
    children = list(model.features.named_children())
    taps = {"stem": f"features.{children[0][0]}"}
    stage = 0
    for i in range(1, len(children)):
        if i == len(children) - 1 or _downsamples(children[i + 1][1]):
            stage += 1
            taps[f"stage{stage}"] = f"features.{children[i][0]}"
    head = [m for m in model.classifier if not isinstance(m, nn.Dropout)]
    if len(head) == 1 and isinstance(head[0], nn.Linear):  # pooling then one Linear: MobileNetV2, EfficientNet
        taps["final_map"] = f"features.{children[-1][0]}"
    return {**taps, **_head_taps(model)}


def _vgg_pool_indices(model: nn.Module) -> list[int]:
    return [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]


def _vgg_taps(model: nn.Module) -> dict[str, str]:
    """Stem and stages are the ReLU before each max-pool; pre-ReLU is the layer before that ReLU."""
    taps: dict[str, str] = {}
    pre: dict[str, str] = {}
    for k, index in enumerate(_vgg_pool_indices(model)):
        name = "stem" if k == 0 else f"stage{k}"
        taps[name] = f"features.{index - 1}"
        relu = model.features[index - 1]
        if k > 0 and isinstance(relu, nn.ReLU) and not relu.inplace:
            pre[f"{name}_pre"] = f"features.{index - 2}"
    return {**taps, **pre, **_head_taps(model)}


def _shufflenet_taps(model: nn.Module) -> dict[str, str]:
    # Pooling is a functional mean in torchvision's forward, so no module outputs the embedding.
    return {"stem": "maxpool", "stage1": "stage2", "stage2": "stage3", "stage3": "stage4", "final_map": "conv5",
            "classifier": "fc"}


def _pooled_fc_taps(model: nn.Module) -> dict[str, str]:
    """GoogLeNet / Inception-v3: only the pooled embedding and the classifier are named."""
    taps = {"embedding": "avgpool"} if isinstance(model.avgpool, FlatAdaptiveAvgPool2d) else {}
    return {**taps, "classifier": "fc"}


def _densenet_taps(model: nn.Module) -> dict[str, str]:
    # Dense-block outputs (before each transition); the final ReLU and pooling are functional.
    blocks = [name for name, _ in model.features.named_children() if name.startswith("denseblock")]
    taps = {"stem": "features.pool0"}
    taps.update({f"stage{k}": f"features.{name}" for k, name in enumerate(blocks, start=1)})
    return {**taps, "classifier": "classifier"}


TAP_TABLE: dict[type[nn.Module], Callable[[nn.Module], dict[str, str]]] = {
    torchvision.models.ResNet: _resnet_taps,
    torchvision.models.RegNet: _regnet_taps,
    torchvision.models.VGG: _vgg_taps,
    torchvision.models.MobileNetV2: _features_taps,
    torchvision.models.MobileNetV3: _features_taps,
    torchvision.models.EfficientNet: _features_taps,
    torchvision.models.ConvNeXt: _features_taps,
    torchvision.models.ShuffleNetV2: _shufflenet_taps,
    torchvision.models.GoogLeNet: _pooled_fc_taps,
    torchvision.models.Inception3: _pooled_fc_taps,
    torchvision.models.DenseNet: _densenet_taps,
}


def torchvision_tap_points(model: nn.Module) -> dict[str, str] | None:
    """Tap points of a torchvision model from ``TAP_TABLE``, or None if its family is not in the table."""
    for cls in type(model).__mro__:
        if cls in TAP_TABLE:
            return TAP_TABLE[cls](model)
    return None
