"""Model zoo: shapes on CIFAR/MNIST/digits inputs, published parameter counts, tap points, weights, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from kdlab import models
from kdlab.errors import KdlabError

ZOO = models.list_models(include_torchvision=False)
REQUIRED = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "resnet18", "wrn_16_1", "wrn_16_2", "wrn_16_4", "wrn_40_1", "wrn_40_2", "wrn_40_4",
    "wrn_28_4", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "mobilenetv2_w1",
    "shufflenetv1", "shufflenetv2",
]  # fmt: skip
# Post-activation networks: every stageK_pre must satisfy relu(stageK_pre) == stageK.
POST_ACTIVATION = ["resnet8", "resnet20", "resnet8x4", "resnet18", "vgg8", "shufflenetv1", "shufflenetv2"]
# Class-token transformers: the embedding is a token, not the mean of a map, so they declare no final_map.
CLASS_TOKEN = {"vit_tiny_cifar", "deit_tiny_cifar"}
DISTILLED = {"deit_tiny_cifar"}  # a distillation head too: logits = mean of both heads


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _capture(model: nn.Module, taps: dict[str, str], x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run ``model(x)`` with a forward hook on every tap; returns logits and the captured outputs."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, key=key: outputs.__setitem__(key, out)
        )
        for key, path in taps.items()
    ]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def _stage_count(taps: dict[str, str]) -> int:
    return sum(1 for k in taps if k.startswith("stage") and not k.endswith("_pre"))


def test_every_required_model_is_listed() -> None:
    assert set(REQUIRED) <= set(ZOO)
    assert "tv:resnet18" in models.list_models()
    info = models.model_info("wrn_40_2")
    assert info["family"] == "wrn" and "WRN-40-2" in info["description"]
    assert models.model_info("tv:resnet18")["family"] == "torchvision"
    assert models.model_info("mobile_half")["name"] == "mobilenetv2"  # RepDistiller's name is an alias


@pytest.mark.parametrize("name", ZOO)
@torch.no_grad()
def test_forward_shapes_cifar_mnist_digits(name: str) -> None:
    torch.manual_seed(0)
    for channels, size, classes in ((3, 32, 100), (1, 28, 10), (1, 8, 10)):
        model = models.create(name, classes, in_channels=channels, image_size=size).eval()
        logits = model(torch.randn(2, channels, size, size))
        assert logits.shape == (2, classes), (channels, size)
        assert torch.isfinite(logits).all()


# Published parameter counts with 100 classes (CRD benchmark tables; for WRNs and ResNet-18 the
# github.com/chitraz/KnowledgeDistillationForModelCompression README).
PUBLISHED = {
    "resnet20": 0.28e6,
    "resnet56": 0.86e6,
    "resnet110": 1.74e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_1": 0.57e6,
    "wrn_40_2": 2.26e6,
    "wrn_16_4": 2.77e6,
    "wrn_40_4": 8.97e6,
    "resnet18": 11.22e6,
    # Regression values of the benchmark definitions (RepDistiller vgg.py, mobilenetv2.py, ShuffleNet*.py).
    "vgg8": 3.96e6,
    "vgg13": 9.46e6,
    "mobilenetv2": 0.81e6,
    "shufflenetv1": 0.95e6,
    "shufflenetv2": 1.36e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name: str) -> None:
    count = _params(models.create(name, 100))
    assert count == pytest.approx(PUBLISHED[name], rel=0.02)


def test_mobilenetv2_w1_parameter_count() -> None:
    # The github.com/chitraz/KnowledgeDistillationForModelCompression README lists MobileNet-V2 at 2.24M; the
    # full-width benchmark network has exactly that with 10 classes, and 2.35M with 100 (the classifier adds
    # 1280 * 90 + 90 weights).
    assert _params(models.create("mobilenetv2_w1", 10)) == pytest.approx(2.24e6, rel=0.02)
    assert _params(models.create("mobilenetv2_w1", 100)) == pytest.approx(2.35e6, rel=0.02)


@pytest.mark.parametrize("name", ZOO)
@torch.no_grad()
def test_tap_points_resolve_and_fire(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, 10).eval()
    taps = models.tap_points(model)
    stages = _stage_count(taps)
    assert stages >= 3
    expected = {"stem", "embedding", "classifier"} | (set() if name in CLASS_TOKEN else {"final_map"})
    expected |= {"distill_logits"} if name in DISTILLED else set()
    expected |= {f"stage{k}" for k in range(1, stages + 1)} | {f"stage{k}_pre" for k in range(1, stages + 1)}
    assert set(taps) == expected

    classifier = model.get_submodule(taps["classifier"])
    assert isinstance(classifier, nn.Linear)
    logits, out = _capture(model, taps, torch.randn(2, 3, 32, 32))
    assert set(out) == expected, "every hook must fire"
    assert out["stem"].dim() == 4
    sizes = [out["stem"].shape[-1]]
    for k in range(1, stages + 1):
        assert out[f"stage{k}"].dim() == 4 and out[f"stage{k}_pre"].shape == out[f"stage{k}"].shape
        sizes.append(out[f"stage{k}"].shape[-1])
    assert sizes == sorted(sizes, reverse=True), "stages must not grow spatially"
    assert out["embedding"].shape == (2, classifier.in_features)
    if name in DISTILLED:
        torch.testing.assert_close((out["classifier"] + out["distill_logits"]) / 2, logits)
    else:
        assert torch.equal(out["classifier"], logits)
    if name not in CLASS_TOKEN:
        # final_map: the map the global pooling averages into the embedding (CAT-KD's class activation maps)
        torch.testing.assert_close(out["final_map"].mean(dim=(2, 3)), out["embedding"])


@pytest.mark.parametrize("name", POST_ACTIVATION)
@torch.no_grad()
def test_pre_relu_tap_of_post_activation_models(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, 10).eval()
    taps = models.tap_points(model)
    _, out = _capture(model, taps, torch.randn(2, 3, 32, 32))
    for k in range(1, _stage_count(taps) + 1):
        pre, post = out[f"stage{k}_pre"], out[f"stage{k}"]
        assert (pre < 0).any(), "pre-ReLU tensor should keep negative values"
        assert torch.equal(torch.relu(pre), post)


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_10_1"])
@torch.no_grad()
def test_pre_relu_tap_of_preactivation_wrn(name: str) -> None:
    """stageK is the raw residual stream; stageK_pre is the next BN's output and feeds the next ReLU."""
    torch.manual_seed(0)
    model = models.create(name, 10).eval()
    # Non-trivial BN statistics so the BN actually changes the tensor.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    taps = models.tap_points(model)
    next_bn = {1: "stage2.0.bn1", 2: "stage3.0.bn1", 3: "norm"}
    next_relu = {1: "stage2.0.act1", 2: "stage3.0.act1", 3: "act"}
    relu_taps = {f"relu{k}": path for k, path in next_relu.items()}
    _, out = _capture(model, {**taps, **relu_taps}, torch.randn(2, 3, 32, 32))
    for k in range(1, 4):
        pre, raw = out[f"stage{k}_pre"], out[f"stage{k}"]
        assert (raw < 0).any() and (pre < 0).any()
        torch.testing.assert_close(pre, model.get_submodule(next_bn[k])(raw))
        assert torch.equal(torch.relu(pre), out[f"relu{k}"])


def test_mobilenetv2_pre_taps_are_the_linear_bottleneck_outputs() -> None:
    taps = models.tap_points(models.create("mobilenetv2", 10))
    assert all(taps[f"stage{k}_pre"] == taps[f"stage{k}"] for k in range(1, 5))


def test_small_inputs_do_not_collapse() -> None:
    # VGG's last pool is skipped below 8x8 and MobileNet/ShuffleNet strides clamp at 1x1.
    for name in ("vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2"):
        model = models.create(name, 10, in_channels=1, image_size=8).eval()
        taps = models.tap_points(model)
        with torch.no_grad():
            _, out = _capture(model, taps, torch.randn(2, 1, 8, 8))
        assert min(out[f"stage{k}"].shape[-1] for k in range(1, _stage_count(taps) + 1)) >= 1


def test_weight_init_is_kaiming_and_bn_identity() -> None:
    model = models.create("resnet56", 100)
    conv = model.get_submodule("stage3.0.conv2")
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # Kaiming normal, fan_out
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@torch.no_grad()
def test_torchvision_resnet18_one_channel_taps_and_preact() -> None:
    torch.manual_seed(0)
    model = models.create("tv:resnet18", 10, in_channels=1, image_size=28).eval()
    assert model.conv1.in_channels == 1
    taps = models.tap_points(model)
    assert set(taps) == {"stem", "final_map", "embedding", "classifier"} | {
        f"stage{k}{suffix}" for k in range(1, 5) for suffix in ("", "_pre")
    }
    logits, out = _capture(model, taps, torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert out["embedding"].shape == (2, model.fc.in_features)
    assert torch.equal(out["classifier"], logits)
    torch.testing.assert_close(out["final_map"].mean(dim=(2, 3)), out["embedding"])
    for k in range(1, 5):
        assert (out[f"stage{k}_pre"] < 0).any()
        assert torch.equal(torch.relu(out[f"stage{k}_pre"]), out[f"stage{k}"])


@torch.no_grad()
def test_torchvision_adaptation_keeps_function_and_keys() -> None:
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10).eval()
    model = models.create("tv:resnet18", 10).eval()
    assert set(model.state_dict()) == set(plain.state_dict())
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


@torch.no_grad()
def test_torchvision_features_family_taps() -> None:
    model = models.create("tv:mobilenet_v3_small", 10, image_size=64).eval()
    taps = models.tap_points(model)
    logits, out = _capture(model, taps, torch.randn(2, 3, 64, 64))
    stages = _stage_count(taps)
    assert stages >= 3 and all(out[f"stage{k}"].dim() == 4 for k in range(1, stages + 1))
    assert out["embedding"].shape == (2, model.get_submodule(taps["classifier"]).in_features)
    assert torch.equal(out["classifier"], logits)


def test_any_torchvision_classifier_builds_with_logits_only() -> None:
    model = models.create("tv:googlenet", 7, image_size=64).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


@torch.no_grad()
def test_weights_round_trip_from_local_file(tmp_path) -> None:
    torch.manual_seed(0)
    source = models.create("resnet8", 10).eval()
    for module in source.modules():  # make running stats part of what must round-trip
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
    x = torch.randn(2, 3, 32, 32)
    state = source.state_dict()
    for i, payload in enumerate(
        [
            state,
            {"state_dict": state},
            {"model": state, "epoch": 3},
            {f"module.{k}": v for k, v in state.items()},
        ]
    ):
        path = tmp_path / f"w{i}.pt"
        torch.save(payload, path)
        loaded = models.create("resnet8", 10, weights=str(path)).eval()
        assert torch.equal(loaded(x), source(x))


@torch.no_grad()
def test_torchvision_weights_adapt_rgb_stem_to_grayscale(tmp_path) -> None:
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "tv.pth"
    torch.save(plain.state_dict(), path)
    same = models.create("tv:resnet18", 10, weights=path)
    assert torch.equal(same.conv1.weight, plain.conv1.weight)
    gray = models.create("tv:resnet18", 10, in_channels=1, weights=path)
    torch.testing.assert_close(gray.conv1.weight, plain.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.fc.weight, plain.fc.weight)


def test_weights_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(KdlabError, match="not found"):
        models.create("resnet8", 10, weights=tmp_path / "missing.pt")

    torch.save(models.create("resnet8", 10).state_dict(), tmp_path / "r8.pt")
    with pytest.raises(KdlabError, match="does not fit model 'resnet20'") as info:
        models.create("resnet20", 10, weights=tmp_path / "r8.pt")
    assert "\n" not in str(info.value) and "72 missing keys" in str(info.value)
    with pytest.raises(KdlabError, match="shape mismatch"):
        models.create("resnet8", 100, weights=tmp_path / "r8.pt")
    with pytest.raises(KdlabError, match="does not fit model 'tv:resnet18'"):
        models.create("tv:resnet18", 10, weights=tmp_path / "r8.pt")

    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(KdlabError, match="cannot read weights file"):
        models.create("resnet8", 10, weights=tmp_path / "junk.pt")


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(KdlabError, match="did you mean 'resnet20'"):
        models.create("resnt20", 10)
    with pytest.raises(KdlabError, match="did you mean 'tv:resnet18'"):
        models.create("tv:resnet19", 10)
    with pytest.raises(KdlabError, match="did you mean"):
        models.model_info("shufflenetv3")
    with pytest.raises(KdlabError, match="6n\\+4"):
        models.create("wrn_41_2", 10)


def test_any_wrn_depth_and_width_parses() -> None:
    model = models.create("WRN-10-3", 5)  # case and dashes are normalised
    assert model.get_submodule("stage3.0.conv2").out_channels == 64 * 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_bad_arguments_and_untappable_models() -> None:
    with pytest.raises(KdlabError, match="num_classes"):
        models.create("resnet8", 0)
    with pytest.raises(KdlabError, match="in_channels"):
        models.create("resnet8", 10, in_channels=0)
    with pytest.raises(KdlabError, match="module paths"):
        models.tap_points(nn.Sequential(nn.Linear(2, 2)))


def test_tap_points_see_through_wrappers() -> None:
    wrapped = nn.DataParallel(models.create("resnet8", 10))
    taps = models.tap_points(wrapped)
    assert taps["stage3_pre"] == "module.stage3.0.preact"
    assert isinstance(wrapped.get_submodule(taps["stage3_pre"]), models.HookPoint)
