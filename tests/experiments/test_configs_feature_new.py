"""configs/cifar100 files of ICKD and CAT-KD (written by configs/make_cifar100.py): the published settings per pair."""

from pathlib import Path

from kdlab import config as cfg
from kdlab import methods

REPO = Path(__file__).resolve().parents[2]


def run(pair: str, name: str) -> tuple[dict, float, dict, str]:
    path = REPO / "configs" / "cifar100" / pair / f"{name}.yaml"
    config = cfg.build([cfg.load_yaml(path)])
    (method,) = methods.parse(config.method, config.methods)
    ce = method.ce_weight if config.ce_weight is None else config.ce_weight
    return method.hp, ce, config.methods, path.read_text()


def test_ickd_configs_run_the_readme_setting_with_its_numbers():
    hp, ce, deviations, text = run("resnet32x4-resnet8x4", "ickd")
    assert (hp, ce, deviations) == ({"weight": 2.5}, 1.0, {})
    assert "Published top-1: 75.25 [I]" in text and "ADLab-AutoDrive/ICKD" in text
    assert "Published top-1: not published for this pair" in run("vgg13-mobilenetv2", "ickd")[3]


def test_catkd_configs_carry_the_tuned_weights():
    expected = {"resnet56-resnet20": (0.7, 2, False), "resnet32x4-resnet8x4": (15.0, 2, False),
                "wrn_40_2-wrn_16_2": (12.0, 2, False), "resnet32x4-shufflenetv2": (600.0, 4, True),
                "vgg13-mobilenetv2": (15.0, 2, True)}
    for pair, (weight, resolution, normalize) in expected.items():
        hp, ce, _, text = run(pair, "catkd")
        assert (hp["weight"], hp["resolution"], hp["normalize"], ce) == (weight, resolution, normalize, 1.0), pair
        assert "GzyAftermath/CAT-KD" in text and "not copied here" in text
    assert run("resnet32x4-resnet8x4", "catkd")[2] == {}  # the class default is this pair's config
    assert not (REPO / "configs" / "cifar100" / "resnet110-resnet20" / "catkd.yaml").exists()  # no authors' config
