"""timm models as `timm:NAME`: built untrained, taps derived from feature_info and a probe, local weights,
one-line errors; every method trains (or refuses in one line) on a timm CNN -> timm ViT pair."""

from __future__ import annotations

import builtins

import pytest
import torch

from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods import list_methods
from kdlab.models import timm_models

timm = pytest.importorskip("timm")


def _capture(model, taps, x):
    out = {}
    handles = [model.get_submodule(p).register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o))
               for k, p in taps.items()]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, out


@torch.no_grad()
def test_timm_resnet_taps_keep_function_and_keys():
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    for module in plain.modules():  # timm zero-initialises each block's last BN: make the residual branch count
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    model = models.create("timm:resnet18", 10, image_size=32).eval()
    assert set(model.state_dict()) == set(plain.state_dict())
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    taps = models.tap_points(model)
    assert taps["stem"] == "act1" and [taps[f"stage{k}"] for k in range(1, 5)] == [f"layer{k}" for k in range(1, 5)]
    logits, out = _capture(model, taps, x)
    torch.testing.assert_close(logits, plain(x), rtol=0, atol=0)
    assert torch.equal(out["classifier"], logits)
    torch.testing.assert_close(out["final_map"].mean(dim=(2, 3)), out["embedding"])
    for k in range(1, 5):
        assert (out[f"stage{k}_pre"] < 0).any() and torch.equal(torch.relu(out[f"stage{k}_pre"]), out[f"stage{k}"])
    assert models.model_info("timm:resnet18")["family"] == "timm"


@torch.no_grad()
def test_timm_vit_stages_are_patch_grid_maps_without_final_map():
    model = models.create("timm:vit_tiny_patch16_224", 10, image_size=32).eval()
    taps = models.tap_points(model)
    assert "final_map" not in taps and taps["stage4"] == "blocks.11.kdlab_map"
    logits, out = _capture(model, taps, torch.randn(2, 3, 32, 32))
    assert out["stem"].shape == (2, 192, 2, 2)
    assert all(out[f"stage{k}"].shape == (2, 192, 2, 2) for k in range(1, 5))
    assert out["embedding"].shape == (2, 192) and torch.equal(out["classifier"], logits)
    tokens = {}
    handle = model.blocks[11].register_forward_hook(lambda _m, _i, o: tokens.setdefault("x", o))
    model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert tokens["x"].shape == (1, 5, 192)  # the block still returns its tokens: the map is a side view


@torch.no_grad()
def test_timm_deit_distilled_has_both_heads_and_a_class_token_embedding():
    model = models.create("timm:deit_tiny_distilled_patch16_224", 10, image_size=32).eval()
    taps = models.tap_points(model)
    assert taps["classifier"] == "head" and taps["distill_logits"] == "head_dist"
    logits, out = _capture(model, taps, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(logits, (out["classifier"] + out["distill_logits"]) / 2)
    torch.testing.assert_close(model.head(out["embedding"]), out["classifier"])


@torch.no_grad()
def test_timm_weights_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    model = models.create("timm:resnet18", 10, image_size=32, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    gray = models.create("timm:resnet18", 10, in_channels=1, image_size=32, weights=path)
    torch.testing.assert_close(gray.conv1.weight, plain.conv1.weight.sum(1, keepdim=True))
    other = models.create("timm:resnet18", 7, image_size=32, weights=path, new_head=True)
    assert torch.equal(other.layer1[0].conv1.weight, plain.layer1[0].conv1.weight) and other.fc.out_features == 7


def test_timm_errors_are_one_line(monkeypatch):
    with pytest.raises(KdlabError, match="did you mean 'timm:resnet18'"):
        models.create("timm:resnet19", 10)
    with pytest.raises(KdlabError, match="cannot build timm model 'vit_tiny_patch16_224'") as info:
        models.create("timm:vit_tiny_patch16_224", 10, image_size=8)  # smaller than one 16x16 patch
    assert "\n" not in str(info.value)
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(KdlabError, match=r"pip install 'kdlab\[timm\]'"):
        timm_models.import_timm()


def test_kdlab_list_models_shows_one_timm_line_and_lists_only_real_names(capsys):
    from kdlab.cli import main

    assert not any(n.startswith("timm:") for n in models.list_models())  # every listed name can be created
    assert main(["list", "models"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("timm:")]
    assert len(lines) == 1 and lines[0].startswith("timm:<name>") and "pip install 'kdlab[timm]'" in lines[0]


REFUSED = {"catkd": "final_map", "sdd": "final_map", "deit": "distillation token"}  # the ViT student has no final_map


@pytest.mark.slow
def test_every_method_on_a_timm_cnn_teacher_and_timm_vit_student():
    torch.manual_seed(0)
    teacher = models.create("timm:resnet18", 10, image_size=32).eval()
    student = models.create("timm:vit_tiny_patch16_224", 10, image_size=32)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    failures = []
    for name in list_methods():
        try:
            loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, 32, 32),
                                       train_targets=torch.arange(8) % 10, train_indices=torch.arange(8),
                                       normalization=((0.5,) * 3, (0.25,) * 3))  # MLKD's strong view
        except KdlabError as exc:
            if name not in REFUSED or REFUSED[name] not in str(exc):
                failures.append(f"{name}: refused: {exc}")
            continue
        if name in REFUSED:
            failures.append(f"{name}: should refuse")
        loss_fn.train()
        for phase in (["init", "main"] if loss_fn.init_methods() else ["main"]):
            loss_fn.set_phase(phase)
            params = list(loss_fn.trainable_parameters())
            out = loss_fn(x, y, torch.arange(4), epoch=1)
            (out.backward() if out.backward is not None else out.loss.backward())
            if not torch.isfinite(out.loss) or not any(p.grad is not None and p.grad.abs().sum() > 0 for p in params):
                failures.append(f"{name} {phase}: loss {out.loss}, or no gradient")
            for p in params:
                p.grad = None
        loss_fn.remove_hooks()
    assert not failures, "\n".join(failures)
