"""configs/cifar100 files of ICKD, CAT-KD, SSKD, NKD, WSLD, PAD, OFA and DeiT (written by configs/make_cifar100.py):
the published settings per pair, and the published top-1 (or that none is published) in their headers."""

import re
from pathlib import Path

from kdlab import DistillationLoss, methods, models
from kdlab import config as cfg
from kdlab.runner.distill import init_epochs

REPO = Path(__file__).resolve().parents[2]


def run(pair: str, name: str) -> tuple[dict, float, dict, str]:
    path = REPO / "configs" / "cifar100" / pair / f"{name}.yaml"
    config = cfg.build([cfg.load_yaml(path)])
    (method,) = methods.parse(config.method, config.methods)
    ce = method.ce_weight if config.ce_weight is None else config.ce_weight
    return method.hp, ce, config.methods, path.read_text()


def load(pair: str, name: str) -> cfg.Config:
    return cfg.build([cfg.load_yaml(REPO / "configs" / "cifar100" / pair / f"{name}.yaml")])


def zoo_pairs() -> list[str]:
    """The benchmark pairs of the tree (not train/, not the DeiT recipe's ViT student)."""
    return sorted(p.name for p in (REPO / "configs" / "cifar100").iterdir()
                  if p.is_dir() and p.name != "train" and "deit" not in p.name)


def published_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("# Published top-1:")]
    return line


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


def test_sskd_configs_run_the_authors_head_stage_with_their_readme_numbers():
    own = "[X, the SSKD authors' own teacher]", "[X, the SSKD authors' own student]"
    for pair, top1, teacher, student in (("resnet32x4-resnet8x4", "76.20", "79.63", "72.51"),
                                         ("wrn_40_2-wrn_40_1", "76.13", "76.46", "72.24"),
                                         ("resnet56-resnet20", "71.49", "73.44", "69.63"),
                                         ("vgg13-mobilenetv2", "71.53", "75.38", "65.79"),
                                         ("resnet32x4-shufflenetv2", "78.61", "79.63", "73.12")):
        hp, ce, deviations, text = run(pair, "sskd")
        assert (hp, ce, deviations) == (methods.get("sskd").defaults, 0.1, {}), pair
        config = load(pair, "sskd")
        assert config.init_epochs == init_epochs(config) == 60 and methods.get("sskd").has_init_stage
        assert (f"Published top-1: {top1} [X]; teacher {teacher} {own[0]}, student {student} {own[1]}."
                in text), pair
        assert "github.com/xuguodong03/SSKD" in text
    # a pair the SSKD README has no number for: none is quoted, and the baselines are RepDistiller's
    assert published_line(run("resnet110-resnet32", "sskd")[3]) == (
        "# Published top-1: not published for this pair; teacher 74.31 [R], student 71.14 [R].")


def test_nkd_configs_quote_only_the_sdd_re_runs_and_say_whose_they_are():
    for pair, top1 in (("vgg13-mobilenetv2", "68.72"), ("resnet32x4-shufflenetv1", "75.31"),
                       ("resnet32x4-shufflenetv2", "76.26"), ("wrn_40_2-shufflenetv1", "75.96")):
        hp, ce, deviations, text = run(pair, "nkd")
        assert (hp, ce, deviations) == ({"weight": 1.0, "temperature": 3.0, "gamma": 3.5}, 1.0, {}), pair
        assert f"Published top-1: {top1} [N]" in text and "not a number of the NKD authors" in text
        assert "shicaiwei123/SDD-CVPR2024" in text and "yzd-v/cls_KD" in text
    for pair in ("resnet56-resnet20", "resnet32x4-resnet8x4"):
        line = published_line(run(pair, "nkd")[3])
        assert "not published for this pair" in line and re.search(r"top-1: [^;]*\b\d\d\.\d\d\b", line) is None


def test_wsld_and_pad_configs_say_not_published_for_cifar100_on_every_pair():
    assert len(zoo_pairs()) == 11  # the CRD benchmark pairs of configs/make_cifar100.py PAIRS
    for pair in zoo_pairs():
        hp, ce, deviations, text = run(pair, "wsld")
        assert (hp, ce, deviations) == ({"weight": 2.25, "temperature": 4.0}, 1.0, {}), pair
        line = published_line(text)
        assert line.startswith("# Published top-1: not published for CIFAR-100") and "[" not in line.split(";")[0]
        hp, ce, deviations, text = run(pair, "pad")
        assert (hp, ce, deviations) == ({"weight": 1.0, "l2_weight": 15.0, "l2_fraction": 0.75, "eps": 1e-6}, 1.0,
                                        {}), pair
        line = published_line(text)
        assert line.startswith("# Published top-1: not published for CIFAR-100") and "[" not in line.split(";")[0]
        # the L2 stage the header describes is the one the run gets: round(0.75 * 240) epochs
        l2 = round(hp["l2_fraction"] * load(pair, "pad").optim.epochs)
        assert l2 == 180 and f"epochs 1-{l2} train CE + 15 MSE" in text and "torchdistill" in text
    assert "bellymonster/Weighted-Soft-Label-Distillation" in run("resnet56-resnet20", "wsld")[3]


def test_ofa_configs_run_the_train_py_defaults_and_publish_no_zoo_number():
    assert not methods.get("ofa").has_init_stage
    for pair in zoo_pairs():
        hp, ce, deviations, text = run(pair, "ofa")
        assert (hp, ce, deviations) == (methods.get("ofa").defaults, 1.0, {}), pair
        assert hp["stages"] == [] and hp["eps"] == 1.0 and load(pair, "ofa").init_epochs is None
        line = published_line(text)
        assert line.startswith("# Published top-1: not published for this pair") and "224 px" in line
        assert "github.com/Hao840/OFAKD" in text


def test_deit_recipe_config_trains_a_distilled_vit_with_the_authors_recipe():
    pair = "resnet56-deit_tiny_cifar"
    hp, ce, deviations, text = run(pair, "deit")
    assert (hp, ce, deviations) == (methods.get("deit").defaults, 0.0, {})
    assert (hp["mode"], hp["alpha"]) == ("hard", 0.5)
    config = load(pair, "deit")
    o, d = config.optim, config.data
    assert (o.optimizer, o.epochs, o.lr, o.weight_decay, o.schedule, o.warmup_epochs) == ("adamw", 300, 5e-4, 0.05,
                                                                                           "cosine", 5)
    assert (d.batch_size, d.mixup, d.cutmix, d.randaugment, config.label_smoothing) == (512, 0.8, 1.0, "2,27", 0.1)
    assert o.lr == 5e-4 * d.batch_size / 512  # DeiT's linear scaling rule
    assert config.model == "deit_tiny_cifar" and config.teachers == ["runs/cifar100/teachers/resnet56/best.pt"]
    assert (REPO / "configs" / "cifar100" / "train" / "resnet56.yaml").is_file()
    assert "no published CIFAR-100 number" in published_line(text) and "a kdlab recipe, not a published pair" in text
    # the student has the distillation head the method reads (a student without one is refused)
    DistillationLoss(models.create("resnet56", 100).eval(), models.create(config.model, 100), method="deit",
                     input_shape=(3, 32, 32))
