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


# ----------------------------------------------------------------------------------- through the kdlab command
def _cli(args, capsys):
    from kdlab.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_exponent_numbers_from_key_value_and_yaml_file(tmp_path, capsys):
    # PyYAML (YAML 1.1) reads 5e-4 as a string; Python's float() and YAML 1.2 read it as a number.
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 5e-4\n  lr: '1e-2'\n  milestones: [1e0, 2]\n")
    code, _, err = _cli(["train", "--config", str(tmp_path / "c.yaml"), "--data", "digits", "--epochs", "1",
                         "--quiet", "--out", str(tmp_path / "run"), "data.fraction=0.3", "optim.gamma=1e-1",
                         "data.batch_size=1.28e2"], capsys)
    assert code == 0, err
    saved = cfg.load_yaml(tmp_path / "run" / "config.yaml")
    assert saved["optim"]["weight_decay"] == 5e-4 and saved["optim"]["lr"] == 1e-2 and saved["optim"]["gamma"] == 0.1
    assert saved["optim"]["milestones"] == [1, 2] and saved["data"]["batch_size"] == 128
    assert cfg.parse_overrides(["method.od.weight=1e-4"]) == {"methods": {"od": {"weight": 1e-4}}}


@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "threads must be at least 1, got -1"),
    (["--threads", "0"], "threads must be at least 1, got 0"),
    (["optim.momentum=1"], "optim.momentum must be in [0, 1), got 1.0"),
    (["optim.momentum=-0.1"], "optim.momentum must be in [0, 1)"),
    (["optim.milestones=[180,150]"], "optim.milestones must be increasing"),
    (["optim.milestones=[150,150]"], "without repeats"),
    (["optim.epochs=1e400"], "needs a whole number"),
    (["optim.lr=5e-4x"], "needs a number, got '5e-4x'"),
    (["data.unreadable=skp"], "did you mean 'skip'"),
])
def test_bad_numbers_are_one_line(extra, message, tmp_path, capsys):
    code, _, err = _cli(["train", "--data", "digits", "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("epochs, milestones", [(30, [19, 23, 26]), (10, [6, 8, 9]), (240, [150, 180, 210]),
                                                (480, [300, 360, 420]), (2, [1, 2])])
def test_step_milestones_follow_the_runs_length(epochs, milestones):
    """150/180/210 of 240 epochs are 62.5/75/87.5% of the run: a shorter or longer run decays at the same shares."""
    c = cfg.build([{"data": {"name": "cifar100"}}, {"optim": {"epochs": epochs}}])
    assert c.optim.milestones == milestones
    f = lr_factor(c.optim)
    assert f(epochs - 1) == pytest.approx(0.1 ** len(milestones)) if epochs > 2 else f(epochs - 1) < 1


def test_milestones_given_by_the_run_are_kept_and_the_schedule_is_printed():
    from kdlab.engine.schedule import describe

    c = cfg.build([{"data": {"name": "cifar100"}}, {"optim": {"epochs": 30, "milestones": [5]}}])
    assert c.optim.milestones == [5]
    assert describe(c.optim) == ("schedule: 30 epochs, SGD momentum 0.9, weight decay 0.0005, lr 0.05, "
                                 "x0.1 after epochs 5")
    # the saved config.yaml holds the resolved milestones, so a resumed run keeps them
    again = cfg.build([cfg.parse_overrides(["optim.epochs=30", "data.name=cifar100"])])
    assert again.optim.milestones == [19, 23, 26]
