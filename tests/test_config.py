import pytest

from kdlab import config as cfg
from kdlab.engine.schedule import lr_factor
from kdlab.errors import KdlabError


def test_cifar_recipe_and_overrides():
    c = cfg.build([{"model": "resnet20", "data": {"name": "cifar100"}}])
    assert (c.optim.epochs, c.optim.lr, c.optim.milestones, c.data.batch_size, c.optim.weight_decay) == (
        240, 0.05, [150, 180, 210], 64, 5e-4)
    mobile = cfg.build([{"model": "mobilenetv2", "data": {"name": "cifar100"}}])
    assert mobile.optim.lr == 0.01
    over = cfg.build([{"data": {"name": "cifar100"}},
                      cfg.parse_overrides(["optim.lr=0.1", "method.kd.temperature=2", "data.fraction=0.25"])])
    assert over.optim.lr == 0.1 and over.methods == {"kd": {"temperature": 2}} and over.data.fraction == 0.25


def test_step_schedule_follows_crd_recipe():
    c = cfg.build([{"data": {"name": "cifar100"}}])
    f = lr_factor(c.optim)
    # 0-indexed epoch e is 1-indexed epoch e+1: ×0.1 from epoch 151, 181, 211.
    assert [f(149), f(150), f(179), f(180), f(210)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.001])


def test_warmup_then_cosine():
    c = cfg.build([{"optim": {"schedule": "cosine", "epochs": 10, "warmup_epochs": 2}}])
    f = lr_factor(c.optim)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0) and f(2) == pytest.approx(1.0)
    assert f(9) < 0.05


@pytest.mark.parametrize("layer, message", [
    ({"optim": {"lrr": 0.1}}, "did you mean 'lr'"),
    ({"optim": {"lr": "fast"}}, "needs a number"),
    ({"optim": {"epochs": 2.5}}, "whole number"),
    ({"precision": "fp8"}, "precision"),
    ({"data": {"fraction": 1.5}}, "fraction"),
    ({"data": 3}, "is a section"),
    ({"channels_last": "yes"}, "true or false"),
])
def test_bad_config_values(layer, message):
    with pytest.raises(KdlabError, match=message):
        cfg.build([layer])


def test_override_syntax_errors():
    with pytest.raises(KdlabError, match="key=value"):
        cfg.parse_overrides(["optim.lr"])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(KdlabError, match="does not exist"):
        cfg.load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1,\n")
    with pytest.raises(KdlabError, match="not valid YAML"):
        cfg.load_yaml(bad)
    good = tmp_path / "good.yaml"
    good.write_text("model: resnet20\nmethod:\n  kd: {temperature: 3}\n")
    c = cfg.build([cfg.load_yaml(good)])
    assert c.model == "resnet20" and c.methods["kd"]["temperature"] == 3


def test_dump_round_trip(tmp_path):
    c = cfg.build([{"model": "resnet8", "methods": {"dkd": {"beta": 2.0}}}])
    cfg.dump(c, tmp_path / "c.yaml")
    again = cfg.build([cfg.load_yaml(tmp_path / "c.yaml")])
    assert cfg.to_dict(again) == cfg.to_dict(c)
