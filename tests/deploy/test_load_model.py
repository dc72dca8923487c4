"""kdlab.load_model: the plain model of train, distill, mutual and cross-quality runs, and its bad inputs."""

import pytest
import torch

import kdlab
from kdlab import models
from kdlab.cli import main
from kdlab.data import build_loaders
from kdlab.deploy.load import load_model
from kdlab.errors import KdlabError
from kdlab.runner.checkpoints import load_trained_model


def _same_weights(model, state):
    own = model.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_train_and_distill_runs_give_the_architectures_plain_class(runs):
    for kind in ("train", "distill"):
        model = kdlab.load_model(runs[kind])  # the lazy top-level name
        state = torch.load(runs[kind] / "last.pt", weights_only=True)
        assert type(model) is type(models.create("resnet8", 10, in_channels=1, image_size=8))
        assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
        _same_weights(model, state["model"])
        spec = model.kdlab_input
        assert (spec["image_size"], spec["in_channels"], spec["num_classes"], spec["downscaled_from"]) == (8, 1, 10,
                                                                                                            None)
        assert spec["mean"] == [0.3053] and spec["std"] == [0.3758]  # kdlab.data.digits' normalisation
        assert model.kdlab_source.endswith("last.pt")
    assert load_model(runs["train"] / "best.pt").kdlab_source.endswith("best.pt")


def test_mutual_member_by_index_or_name(runs):
    state = torch.load(runs["mutual"] / "last.pt", weights_only=True)
    first, second = load_model(runs["mutual"], member=0), load_model(runs["mutual"], member="s1_wrn_16_1")
    _same_weights(first, state["models"]["s0_resnet8"])
    _same_weights(second, state["models"]["s1_wrn_16_1"])
    _same_weights(load_model(runs["mutual"], member="wrn_16_1"), state["models"]["s1_wrn_16_1"])
    with pytest.raises(KdlabError, match="mutual cohort of 2 students .*0=s0_resnet8, 1=s1_wrn_16_1"):
        load_model(runs["mutual"])
    with pytest.raises(KdlabError, match="no cohort student '5'"):
        load_model(runs["mutual"], member=5)
    with pytest.raises(KdlabError, match="not a mutual cohort"):
        load_model(runs["train"], member=0)


def test_cross_quality_student_takes_its_low_resolution(runs):
    model = load_model(runs["cross"])
    spec = model.kdlab_input
    assert (spec["image_size"], spec["downscaled_from"], spec["resize_mode"]) == (4, 8, "area")
    _, test_loader, info = build_loaders("digits", test_batch_size=64, augment=False)
    wrapped, _ = load_trained_model(runs["cross"] / "last.pt", info, role="model")  # as kdlab eval feeds it
    images = next(iter(test_loader))[0]
    low = torch.nn.functional.interpolate(images, size=(4, 4), mode="area")
    with torch.inference_mode():
        assert torch.equal(model(low), wrapped.eval()(images))


def test_bad_inputs_are_one_line(runs, tmp_path, capsys):
    cache = tmp_path / "cache.pt"
    torch.save({"format": 1, "key": "abc", "indices": torch.arange(3), "outputs": []}, cache)
    plain = tmp_path / "plain.pt"
    torch.save(models.create("resnet8", 10).state_dict(), plain)
    empty = tmp_path / "stopped"
    empty.mkdir()
    (empty / "config.yaml").write_text("model: resnet8\n")
    for path, message in ((cache, "teacher-output cache"), (plain, "not a kdlab checkpoint"),
                          (empty, "holds no model weights"), (tmp_path / "nope", "does not exist")):
        with pytest.raises(KdlabError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value)
    assert main(["export", str(cache), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "teacher-output cache" in err and not (tmp_path / "x.onnx").exists()
