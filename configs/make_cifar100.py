"""Writes configs/cifar100/: training configs (teachers and baseline students) and one config per
teacher/student pair and method, with the published top-1 of that pair and method in its header.

A method config holds only what differs from kdlab's defaults: a method's defaults live in its class
(`kdlab.methods.get(name).defaults` and `.ce_weight`, described in docs/methods.md), so a config that sets
nothing for a method runs it with the published values. `published_hparams` below lists every value the
sources use; `deviations` keeps the ones that differ from the class (DKD's beta per pair, ReviewKD's weight
per pair, CC's RepDistiller variant, ...), and the header names all of them with their source.

Run from the repository root: `.venv/bin/python configs/make_cifar100.py` (it overwrites configs/cifar100/*).
Recipes: the CRD/RepDistiller CIFAR-100 protocol (github.com/HobbitLong/RepDistiller `train_student.py`,
`train_teacher.py`), which kdlab's cifar100 defaults follow. Numbers: the papers' CIFAR-100 tables as their
repositories print them (SOURCES below). tests/test_sweep_report.py loads every file through kdlab.config.build
and kdlab.methods.parse and checks the per-pair values.
DeiT needs a ViT student with a distillation token, which no benchmark pair has: `deit_recipe` writes one labelled
recipe file (resnet56 -> deit_tiny_cifar, the DeiT authors' training recipe, no published number).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdlab import config as cfg
from kdlab import methods
from kdlab.runner.distill import init_epochs

OUT = Path(__file__).resolve().parent / "cifar100"
LIGHT = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # lr 0.01 in the CRD protocol (RepDistiller train_student.py)
TEACHERS = ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet18")
# Teacher/student pairs of the CRD benchmark's CIFAR-100 tables (Tian et al., ICLR 2020): same architecture family
# and cross-architecture.
# R50→MV2 and R50→VGG8 are left out: the zoo has no CIFAR ResNet-50 (CRD's bottleneck ResNet50).
# dkd_beta: github.com/megvii-research/mdistiller configs/cifar100/dkd/*.yaml (docs/methods.md#dkd); reviewkd:
# --kd-loss-weight of github.com/dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh (docs/methods.md#reviewkd).
PAIRS = {
    "resnet56-resnet20": {"dkd_beta": 2.0, "reviewkd": 0.6, "same": True, "col": 0},
    "resnet110-resnet32": {"dkd_beta": 2.0, "reviewkd": 1.0, "same": True, "col": 1},
    "resnet32x4-resnet8x4": {"dkd_beta": 8.0, "reviewkd": 5.0, "same": True, "col": 2},
    "wrn_40_2-wrn_16_2": {"dkd_beta": 6.0, "reviewkd": 5.0, "same": True, "col": 3},
    "wrn_40_2-wrn_40_1": {"dkd_beta": 6.0, "reviewkd": 5.0, "same": True, "col": 4, "no_fsp": True},
    "vgg13-vgg8": {"dkd_beta": 6.0, "reviewkd": None, "same": True, "col": 5},
    "resnet110-resnet20": {"dkd_beta": None, "reviewkd": None, "same": True, "col": 6},
    "vgg13-mobilenetv2": {"dkd_beta": 6.0, "reviewkd": None, "same": False, "col": 0},
    "resnet32x4-shufflenetv1": {"dkd_beta": 8.0, "reviewkd": 5.0, "same": False, "col": 1},
    "resnet32x4-shufflenetv2": {"dkd_beta": 8.0, "reviewkd": 8.0, "same": False, "col": 2},
    "wrn_40_2-shufflenetv1": {"dkd_beta": 8.0, "reviewkd": 5.0, "same": False, "col": 3},
}
# CAT-KD's tuned weight (beta), CAM resolution and normalisation per pair: github.com/GzyAftermath/CAT-KD
# configs/cifar100/CAT_KD/*.yaml (docs/methods.md#catkd); resnet110-resnet20 has no config there.
CATKD = {
    "resnet56-resnet20": (0.7, 2, False), "resnet110-resnet32": (1.8, 2, False),
    "resnet32x4-resnet8x4": (15.0, 2, False), "wrn_40_2-wrn_16_2": (12.0, 2, False),
    "wrn_40_2-wrn_40_1": (1.5, 2, False), "vgg13-vgg8": (4.5, 2, False), "vgg13-mobilenetv2": (15.0, 2, True),
    "resnet32x4-shufflenetv1": (600.0, 4, True), "resnet32x4-shufflenetv2": (600.0, 4, True),
    "wrn_40_2-shufflenetv1": (80.0, 4, True),
}
# The pairs of the DOT authors' CIFAR-100 configs (github.com/megvii-research/mdistiller configs/cifar100/dot/).
DOT_PAIRS = ("resnet32x4-resnet8x4", "vgg13-vgg8", "resnet32x4-shufflenetv2")
# Methods whose CIFAR-100 numbers are only in their paper's tables, which were not read here (so none is copied).
PAPER_ONLY = {"catkd": "in the CAT-KD paper's tables (arXiv:2304.12777) only, not in its repository; not copied here"}
# Assumptions where no per-pair value is published (said in the file's header).
ASSUMED = {
    ("resnet110-resnet20", "dkd_beta"): (2.0, "not in mdistiller's configs; 2.0 as for the other CIFAR-ResNet pairs"),
    ("resnet110-resnet20", "reviewkd"): (1.0, "not in reviewKD.sh; 1.0 as for res110→res32"),
    ("vgg13-vgg8", "reviewkd"): (5.0, "not in reviewKD.sh; the mdistiller default 5.0"),
    ("vgg13-mobilenetv2", "reviewkd"): (5.0, "not in reviewKD.sh; the mdistiller default 5.0"),
}
# Published top-1 (sources: SOURCES). Same-architecture columns: R56→R20, R110→R32, R32x4→R8x4, W40-2→W16-2,
# W40-2→W40-1, VGG13→VGG8, R110→R20. Cross-architecture columns: VGG13→MV2, R32x4→SV1, R32x4→SV2, W40-2→SV1.
SAME = {
    "teacher": ("R", "72.34 74.31 79.42 75.61 75.61 74.64 74.31"),
    "student": ("R", "69.06 71.14 72.50 73.26 71.98 70.36 69.06"),
    "kd": ("R", "70.66 73.08 73.33 74.92 73.54 72.98 70.67"),
    "fitnet": ("R", "69.21 71.06 73.50 73.58 72.24 71.02 68.99"),
    "at": ("R", "70.55 72.31 73.44 74.08 72.77 71.43 70.22"),
    "sp": ("R", "69.67 72.69 72.94 73.83 72.43 72.68 70.04"),
    "cc": ("R", "69.63 71.48 72.97 73.56 72.21 70.71 69.48"),
    "vid": ("R", "70.38 72.61 73.09 74.11 73.30 71.23 70.16"),
    "rkd": ("R", "69.61 71.82 71.90 73.35 72.22 71.48 69.25"),
    "pkt": ("R", "70.34 72.61 73.64 74.54 73.45 72.88 70.25"),
    "ab": ("R", "69.47 70.98 73.17 72.50 72.38 70.94 69.53"),
    "ft": ("R", "69.84 72.37 72.86 73.25 71.59 70.58 70.22"),
    "fsp": ("R", "69.95 71.89 72.62 72.91 - 70.23 70.11"),
    "nst": ("R", "69.60 71.96 73.30 73.68 72.24 71.53 69.53"),
    "crd": ("R", "71.16 73.48 75.51 75.48 74.14 73.94 71.46"),
    "od": ("ND, secondary", "70.98 - 74.95 - 74.33 - -"),
    "reviewkd": ("ND, secondary", "71.89 - 75.63 - 75.09 - -"),
    "dkd": ("M", "71.97 74.11 76.32 76.23 74.81 74.68 71.06"),
    "dist": ("D, mean ± std", "71.75±0.30 - 76.31±0.19 - 74.43±0.24 - -"),
    "lskd": ("L", "71.43 74.17 76.62 76.11 74.37 74.36 71.48"),
    "dkd_ls": ("L", "72.32 74.29 77.01 76.39 74.89 74.81 71.85"),
    "ickd": ("I", "71.76 73.89 75.25 75.64 74.33 73.42 71.68"),
    "ctkd": ("C", "71.19 73.52 73.39 75.45 73.93 73.52 70.99"),
    "dot": ("Z", "- - 75.12 - - 73.77 -"),
    "mlkd": ("J", "72.19 74.11 77.08 76.63 75.35 75.18 71.89"),
    "sskd": ("X", "71.49 - 76.20 76.04 76.13 75.33 -"),
    "sskd_teacher": ("X, the SSKD authors' own teacher", "73.44 - 79.63 76.46 76.46 75.38 -"),
    "sskd_student": ("X, the SSKD authors' own student", "69.63 - 72.51 73.64 72.24 70.68 -"),
}
CROSS = {
    "teacher": ("R", "74.64 79.42 79.42 75.61"),
    "student": ("R", "64.60 70.50 71.82 70.50"),
    "kd": ("R", "67.37 74.07 74.45 74.83"),
    "fitnet": ("R", "64.14 73.59 73.54 73.73"),
    "at": ("R", "59.40 71.73 72.73 73.32"),
    "sp": ("R", "66.30 73.48 74.56 74.52"),
    "cc": ("R", "64.86 71.14 71.29 71.38"),
    "vid": ("R", "65.56 73.38 73.40 73.61"),
    "rkd": ("R", "64.52 72.28 73.21 72.21"),
    "pkt": ("R", "67.13 74.10 74.69 73.89"),
    "ab": ("R", "66.06 73.55 74.31 73.34"),
    "ft": ("R", "61.78 71.75 72.50 72.03"),
    "nst": ("R", "58.16 74.12 74.68 74.89"),
    "crd": ("R", "69.73 75.11 75.65 76.05"),
    "od": ("ND, secondary", "- 75.98 76.82 -"),
    "reviewkd": ("ND, secondary", "- 77.45 77.78 -"),
    "dkd": ("M", "69.71 76.45 77.07 76.70"),
    "dist": ("D, mean ± std", "- 76.34±0.18 77.35±0.25 -"),
    "lskd": ("L", "68.61 - 75.56 -"),
    "dkd_ls": ("L", "69.98 - 77.37 -"),
    "ctkd": ("C", "68.50 - 75.37 -"),
    "dot": ("Z", "- - 75.55 -"),
    "sdd": ("W", "68.79 76.30 76.67 76.65"),
    "sdd_dkd": ("W", "70.25 77.30 78.05 77.21"),
    "sdd_nkd": ("W", "69.50 76.34 77.07 76.81"),
    "mlkd": ("J", "70.57 - 78.44 -"),
    "sskd": ("X", "71.53 78.44 78.61 77.40"),
    "sskd_teacher": ("X, the SSKD authors' own teacher", "75.38 79.63 79.63 76.46"),
    "sskd_student": ("X, the SSKD authors' own student", "65.79 70.77 73.12 70.77"),
    "nkd": ("N", "68.72 75.31 76.26 75.96"),
}
SOURCES = {
    "R": "Tian, Krishnan, Isola, ICLR 2020 (arXiv:1910.10699), as in the github.com/HobbitLong/RepDistiller README; "
         "last epoch",
    "M": "Zhao et al., CVPR 2022 (arXiv:2203.08679), as in the github.com/megvii-research/mdistiller README; best "
         "epoch, mean of 5 runs",
    "D": "Huang et al., NeurIPS 2022 (arXiv:2205.10536), as in the github.com/hunto/DIST_KD README",
    "L": "Sun et al., CVPR 2024 (arXiv:2403.01427), as in the github.com/sunshangquan/logit-standardization-KD README",
    "I": "Liu et al., ICCV 2021 (arXiv:2202.03680), 'ICKD-C (w/o KL)' as in the github.com/ADLab-AutoDrive/ICKD "
         "Cifar100/README.md",
    "C": "Li et al., AAAI 2023 (arXiv:2211.16231), KD+CTKD with a global temperature, as in the "
         "github.com/zhengli97/CTKD README; resnet32x4→resnet8x4 and the cross-architecture values from the CTKD row "
         "of the github.com/sunshangquan/logit-standardization-KD README (whose other values equal the CTKD README's)",
    "W": "Wei et al., CVPR 2024 (arXiv:2403.13512), the CIFAR-100 table cifar100.png of "
         "github.com/shicaiwei123/SDD-CVPR2024 (cells [1,2,4])",
    "Z": "Zhao, Cui, Song, Liang, ICCV 2023 (arXiv:2307.08436), KD+DOT as in the github.com/megvii-research/mdistiller "
         "README",
    "J": "Jin, Wang, Lin, CVPR 2023 (Multi-Level Logit Distillation), the MLKD rows of the "
         "github.com/sunshangquan/logit-standardization-KD README (the baselines that README compares with; not "
         "checked against the MLKD paper, whose repository's README has no table)",
    "ND": "the ReviewKD paper's comparison (Chen et al., CVPR 2021, arXiv:2104.09044) as quoted by the "
          "github.com/WangYZ1608/Knowledge-Distillation-via-ND README",
    "X": "Xu, Liu, Li, Loy, ECCV 2020 (arXiv:2006.07114), as in the github.com/xuguodong03/SSKD README, whose "
         "teachers and baseline students are the authors' own (not RepDistiller's); the README does not say which "
         "epoch, the authors' student.py keeps the best",
    "N": "the NKD column of the CIFAR-100 table of Wei et al., CVPR 2024 (arXiv:2403.13512), cifar100.png of "
         "github.com/shicaiwei123/SDD-CVPR2024: the SDD authors' re-run with their repository's own copy of the NKD "
         "loss (mdistiller/distillers/SDD_nkd.py; issue #3 there: the NKD authors' CIFAR-100 numbers could not be "
         "reproduced), not a number of the NKD authors",
}
# Teacher and student rows of a method whose source trained its own (else the RepDistiller rows).
BASELINES = {"sskd": ("sskd_teacher", "sskd_student")}
# Methods without a published CIFAR-100 top-1 for the zoo pairs: what the header says instead.
NOT_PUBLISHED = {
    "wsld": "not published for CIFAR-100 in the authors' repository (github.com/bellymonster/"
            "Weighted-Soft-Label-Distillation: ImageNet code and numbers only); the paper's own tables were not "
            "read here, so none is copied",
    "pad": "not published for CIFAR-100: no author code is public, and github.com/yoshitomo-matsubara/torchdistill, "
           "whose settings this file follows, reports ImageNet only; the paper's own tables were not read here, so "
           "none is copied",
    "ofa": "not published for this pair: the OFA-KD CIFAR-100 experiments (github.com/Hao840/OFAKD configs/cifar/) "
           "train ImageNet-architecture timm models on images upsampled to 224 px, not the 32-px zoo pairs",
}


def published_hparams(pair: str, info: dict) -> dict[str, tuple[str, dict, str]]:
    """method file name -> (method spec, every published setting, where it comes from)."""
    beta = info["dkd_beta"] or ASSUMED[(pair, "dkd_beta")][0]
    review = info["reviewkd"] or ASSUMED[(pair, "reviewkd")][0]
    rep = "github.com/HobbitLong/RepDistiller scripts/run_cifar_distill.sh"
    configs = {
        "kd": ("kd", {"ce_weight": 0.1, "methods": {"kd": {"weight": 0.9, "temperature": 4.0}}},
               f"{rep}: -r 0.1 -a 0.9 -b 0, --kd_T 4"),
        "fitnet": ("fitnet", {"methods": {"fitnet": {"weight": 100.0, "hint_stage": -2}}},
                   f"{rep}: -b 100, --hint_layer 2, one stage"),
        "at": ("at", {"methods": {"at": {"weight": 1000.0, "p": 2.0}}}, f"{rep}: -b 1000, p 2"),
        "sp": ("sp", {"methods": {"sp": {"weight": 3000.0}}}, f"{rep}: -b 3000"),
        "cc": ("cc", {"methods": {"cc": {"variant": "repdistiller", "weight": 0.02}}},
               f"{rep}: -b 0.02 with RepDistiller's own CC loss (distiller_zoo/CC.py), which its numbers use"),
        "vid": ("vid", {"methods": {"vid": {"weight": 1.0, "init_variance": 5.0}}}, f"{rep}: -b 1"),
        "rkd": ("rkd", {"methods": {"rkd": {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}}},
                f"{rep}: -b 1 (RKDLoss distance 25, angle 50)"),
        "pkt": ("pkt", {"methods": {"pkt": {"weight": 30000.0}}}, f"{rep}: -b 30000"),
        "ab": ("ab", {"init_epochs": 30, "methods": {"ab": {"main": "ce", "init_weight": 0.003}}},
               f"{rep}: --init_epochs 30, then CE only"),
        "ft": ("ft", {"init_epochs": 30, "methods": {"ft": {"weight": 500.0, "rate": 0.5}}},
               "the authors' loss and --beta 500 --rate 0.5 (github.com/Jangho-Kim/Factor-Transfer-pytorch; "
               "RepDistiller's variant uses 200); --init_epochs 30 as RepDistiller"),
        "fsp": ("fsp", {"init_epochs": 30}, f"{rep}: --init_epochs 30, then CE only"),
        "nst": ("nst", {"methods": {"nst": {"weight": 50.0}}}, f"{rep}: -b 50"),
        "crd": ("crd", {"methods": {"crd": {"weight": 0.8, "feat_dim": 128, "num_negatives": 16384,
                                            "temperature": 0.07, "momentum": 0.5}}},
                f"{rep}: -a 0 -b 0.8, --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim 128"),
        "od": ("od", {"methods": {"od": {"weight": 0.001}}},
               "github.com/megvii-research/mdistiller OFD FEAT_WEIGHT 1e-3 (the authors' CIFAR loss / 1000)"),
        "reviewkd": ("reviewkd", {"methods": {"reviewkd": {"weight": review, "warmup": 20}}},
                     "github.com/dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh: --kd-loss-weight for this "
                     "pair, --kd-warm-up 20"),
        "dkd": ("dkd", {"methods": {"dkd": {"alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup": 20}}},
                "github.com/megvii-research/mdistiller configs/cifar100/dkd/: CE 1, alpha 1, beta for this pair, "
                "T 4, warm-up 20"),
        "dist": ("dist", {"methods": {"dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}}},
                 "github.com/hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml: "
                 "kd_loss_weight 2, dist_t4 (tau 4), beta = gamma = 1"),
        "lskd": ("lskd", {"ce_weight": 0.1, "methods": {"lskd": {"weight": 9.0, "temperature": 2.0}}},
                 "github.com/sunshangquan/logit-standardization-KD: --base-temp 2 --kd-weight 9, CE 0.1"),
        "dkd_ls": ("dkd", {"methods": {"dkd": {"alpha": 9.0, "beta": 9.0 * beta, "temperature": 2.0, "warmup": 20,
                                               "standardize": True}}},
                   "DKD+LS of github.com/sunshangquan/logit-standardization-KD: standardised logits, alpha and "
                   "this pair's beta times kd-weight 9, T 2"),
    }
    configs["ickd"] = ("ickd", {"methods": {"ickd": {"weight": 2.5}}},
                       "github.com/ADLab-AutoDrive/ICKD Cifar100/README.md: -a 0 -b 2.5 (CE 1, no KD term)")
    if pair in CATKD:
        weight, resolution, normalize = CATKD[pair]
        configs["catkd"] = ("catkd", {"methods": {"catkd": {"weight": weight, "resolution": resolution,
                                                            "normalize": normalize}}},
                            "github.com/GzyAftermath/CAT-KD configs/cifar100/CAT_KD/ for this pair: CAT_loss_weight, "
                            "CAM_RESOLUTION, IF_NORMALIZE, CE 1")
    sdd_scales = [1, 2] if info["same"] else [1, 2, 4]  # the --M of the SDD authors' scripts and README
    sdd_repo = "github.com/shicaiwei123/SDD-CVPR2024"
    configs["ctkd"] = ("ctkd", {"ce_weight": 0.1, "methods": {"ctkd": {
        "weight": 0.9, "mode": "global", "t_min": 1.0, "t_max": 21.0, "init": 1.0, "curriculum_epochs": 10,
        "max_strength": 1.0}}},
        "github.com/zhengli97/CTKD scripts/run_cifar_distill.sh: -r 0.1 -a 0.9 --have_mlp 1 --mlp_name global "
        "--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10, train_student.py --t_start 1 --t_end 20")
    configs["sdd"] = ("sdd", {"ce_weight": 0.1, "methods": {"sdd": {
        "weight": 0.9, "temperature": 4.0, "base": "kd", "scales": sdd_scales, "warmup": 0}}},
        f"{sdd_repo} SDD_KD with mdistiller's KD.* (CE 0.1, KD 0.9, T 4, no warm-up), --M {sdd_scales}")
    configs["sdd_dkd"] = ("sdd", {"ce_weight": 1.0, "methods": {"sdd": {
        "weight": 1.0, "base": "dkd", "alpha": 1.0, "beta": beta, "temperature": 4.0, "scales": sdd_scales,
        "warmup": 20}}},
        f"{sdd_repo} configs/cifar100/sdd_dkd/ (DKD.* CE 1, alpha 1, this pair's beta, T 4), --warmup 20, "
        f"--M {sdd_scales}")
    configs["sdd_nkd"] = ("sdd", {"ce_weight": 1.0, "methods": {"sdd": {
        "weight": 1.0, "base": "nkd", "gamma": beta, "temperature": 4.0, "scales": sdd_scales, "warmup": 20}}},
        f"{sdd_repo} SDD_NKD, which reads DKD.T 4 as T and this pair's DKD.BETA as gamma, DKD.WARMUP 20, "
        f"CE 1, --M {sdd_scales}")
    mlkd_lr = 0.01 if pair.split("-")[1] in LIGHT else 0.025
    configs["mlkd"] = ("mlkd", {"ce_weight": 0.1, "optim": {"lr": mlkd_lr}, "methods": {"mlkd": {
        "weight": 1.0, "kd_weight": 0.9, "strong_ce_weight": 0.1, "temperature": 4.0}}},
        "github.com/Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/ (SOLVER.LR 0.025, 0.01 for "
        "MobileNetV2/ShuffleNet students; batch 64, 240 epochs, x0.1 at 150/180/210, wd 5e-4) with mdistiller's "
        "KD.* (CE 0.1 on each view, KD 0.9, T 4)")
    if pair in DOT_PAIRS:
        configs["dot"] = ("dot", {"ce_weight": 0.1, "methods": {"dot": {"weight": 0.9, "temperature": 4.0}}},
                          "github.com/megvii-research/mdistiller configs/cifar100/dot/: KD with mdistiller's KD.* "
                          "(CE 0.1, KD 0.9, T 4) under the DOT trainer, SOLVER.DOT.DELTA 0.075 (optim.dot_delta's "
                          "default)")
    configs["sskd"] = ("sskd", {"ce_weight": 0.1, "init_epochs": 60, "methods": {"sskd": {
        "kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0, "temperature": 4.0, "tf_temperature": 4.0,
        "ss_temperature": 0.5, "tf_ratio": 1.0, "ss_ratio": 0.75}}},
        "github.com/xuguodong03/SSKD student.py, whose argparse defaults command.sh uses for every pair: "
        "--ce-weight 0.1 --kd-weight 0.9 --tf-weight 2.7 --ss-weight 10 --kd-T 4 --tf-T 4 --ss-T 0.5 --ratio-tf 1.0 "
        "--ratio-ss 0.75, --t-epoch 60 for the teacher's projection head; 240 epochs, batch 64 (x4 rotations), "
        "lr 0.05 (0.01 for MobileNetV2/ShuffleNet students), x0.1 at 150/180/210, wd 5e-4")
    configs["nkd"] = ("nkd", {"methods": {"nkd": {"weight": 1.0, "temperature": 3.0, "gamma": 3.5}}},
                      "github.com/yzd-v/cls_KD (branch 1.0) configs/distillers/cifar100/res34_distill_res18_cifar.py, "
                      "the NKD authors' CIFAR-100 config (an mmcls ResNet-34 -> ResNet-18 pair): NKDLoss temp 3, "
                      "gamma 3.5, CE 1")
    configs["wsld"] = ("wsld", {"methods": {"wsld": {"weight": 2.25, "temperature": 4.0}}},
                       "the re-implementation in github.com/yzd-v/cls_KD, configs/distillers/cifar100/"
                       "res34_distill_res18_cifar.py (WSLDLoss temp 4, alpha 2.25, CE 1), the only public CIFAR-100 "
                       "setting; the authors' github.com/bellymonster/Weighted-Soft-Label-Distillation is "
                       "ImageNet-only (T 2, alpha 2.5)")
    configs["pad"] = ("pad", {"methods": {"pad": {"weight": 1.0, "l2_weight": 15.0, "l2_fraction": 0.75,
                                                  "eps": 1e-6}}},
                      "github.com/yoshitomo-matsubara/torchdistill configs/official/ilsvrc2012/yoshitomo-matsubara/"
                      "rrpr2020/ (ImageNet; no CIFAR-100 setting is published): 90 epochs of CE + 15 MSE "
                      "(ce_l2-resnet18_from_resnet34.yaml), then 30 of CE + PAD-L2 with eps 1e-6 "
                      "(pad_l2-resnet18_from_resnet34.yaml), so l2_fraction 90/120")
    configs["ofa"] = ("ofa", {"methods": {"ofa": {"branch_weight": 1.0, "kd_weight": 1.0, "eps": 1.0,
                                                  "temperature": 1.0}}},
                      "github.com/Hao840/OFAKD train.py defaults (--ofa-stage 1 2 3 4, every student stage; "
                      "--gt-loss-weight 1, --kd-loss-weight 1, --ofa-loss-weight 1, --ofa-temperature 1) and the "
                      "--ofa-eps 1 of its README's CIFAR-100 command")
    if not info["same"] or info.get("no_fsp"):
        del configs["fsp"]  # RepDistiller's FSP needs equal widths; the CRD benchmark lists it as N/A here
    return configs


def notes(name: str, pair: str) -> list[str]:
    """Header lines a method needs beyond its hyperparameters: its stages, what its number is, what differs."""
    if name == "sskd":
        return ["Init stage: the teacher's projection head for 60 epochs, the authors' --t-epoch 60 (they train it "
                "at --t-lr 0.05, x0.1 at 30 and 45; kdlab's init stage runs at the run's base LR, constant).",
                "Each batch of 64 is also seen rotated by 90/180/270 degrees: both networks run on 256 images a "
                "step, as the authors'."]
    if name == "nkd" and not PAIRS[pair]["same"]:
        return ["The [N] number is the SDD authors' re-run of NKD with their own copy of the loss, whose settings "
                "may differ from this file's (the NKD authors' loss and values; docs/methods.md#nkd)."]
    if name == "pad":
        fraction = methods.get("pad").defaults["l2_fraction"]
        l2 = round(fraction * 240)
        return [f"Schedule: epochs 1-{l2} train CE + 15 MSE of the pooled embeddings (the L2 stage, {fraction} of the "
                f"run as torchdistill's 90 of 120), epochs {l2 + 1}-240 CE + PAD-L2.",
                f"PAD-L2 thus runs at x0.01 then x0.001 of the base LR (epochs {l2 + 1}-210, 211-240), where the L2 "
                f"stage ends at x0.1; torchdistill's second stage is a new 30-epoch run at its first stage's final "
                f"LR.",
                "A student embedding of another width goes through a Linear to the teacher's (kdlab's extension; "
                "the original needs equal widths)."]
    if name == "ofa":
        return ["No init stage. The authors' CIFAR-100 recipe (configs/cifar/cnn.yaml: 300 epochs, SGD lr 0.05, "
                "cosine, batch 128 on 8 GPUs, label smoothing 0.1) is for 224-px timm models and is not used here.",
                "The maintainer's reproduced CIFAR-100 run used an OFA branch weight of 0.1 (github.com/Hao840/OFAKD "
                "issue #14)."]
    return []


def deviations(spec: str, settings: dict[str, Any], student: str = "") -> dict[str, Any]:
    """The published `settings` less whatever equals kdlab's defaults (the method class, the cifar100 recipe)."""
    cls = methods.get(spec)
    published = dict(settings.get("methods", {}).get(spec, {}))
    target = methods.create(spec, **published).hp
    kept = dict(published)
    for key in list(kept):
        trial = {k: v for k, v in kept.items() if k != key}
        if methods.create(spec, **trial).hp == target:  # the default (or the variant's default) gives it
            del kept[key]
    out: dict[str, Any] = {}
    if "ce_weight" in settings and settings["ce_weight"] != cls.ce_weight:
        out["ce_weight"] = settings["ce_weight"]
    cifar_init_epochs = init_epochs(cfg.build([{"data": {"name": "cifar100"}}]))  # kdlab's default: 30
    if "init_epochs" in settings and settings["init_epochs"] != cifar_init_epochs:
        out["init_epochs"] = settings["init_epochs"]
    recipe = {"lr": 0.01 if student in LIGHT else 0.05}  # kdlab's cifar100 LR for this student
    optim = {k: v for k, v in settings.get("optim", {}).items() if recipe.get(k) != v}
    if optim:
        out["optim"] = optim
    out["methods"] = {spec: kept} if kept else {}
    return out


def published(pair: str, info: dict, row: str, used: dict[str, str]) -> str:
    """The published top-1 of `row` for this pair with its source's tag, recording the tag in `used`."""
    if row in PAPER_ONLY:
        return PAPER_ONLY[row]
    if row in NOT_PUBLISHED:
        return NOT_PUBLISHED[row]
    source, values = (SAME if info["same"] else CROSS).get(row, ("", ""))
    cells = values.split()
    value = cells[info["col"]] if cells else "-"
    if value == "-":
        if row == "nkd":
            return ("not published for this pair: the NKD authors' repository (github.com/yzd-v/cls_KD) has no "
                    "CIFAR-100 number for the CRD benchmark's pairs (the paper's tables were not read here), and the "
                    "SDD paper's re-runs (arXiv:2403.13512) cover its cross-architecture pairs only")
        return "not published for this pair"
    tag = source.split(",")[0]
    detail = f", {source.split(', ', 1)[1]}" if ", " in source else ""
    used[tag] = SOURCES[tag]
    return f"{value} [{tag}{detail}]"


def dump(path: Path, header: list[str], body: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(body, sort_keys=False)
    path.write_text(text)


def describe(settings: dict[str, Any]) -> str:
    """'ce_weight 0.1, init_epochs 30, optim.lr 0.025, beta 2.0' for the header."""
    items = [(k, v) for k, v in settings.items() if k != "methods" and not isinstance(v, dict)]
    items += [(f"{k}.{key}", v) for k, section in settings.items() if k != "methods" and isinstance(section, dict)
              for key, v in section.items()]
    items += [(k, v) for hp in settings.get("methods", {}).values() for k, v in hp.items()]
    return ", ".join(f"{k} {v}" for k, v in items)


DEIT_TEACHER = "resnet56"  # a CNN teacher, as DeiT's (RegNetY-16GF); any configs/cifar100/train/ teacher works


def deit_recipe() -> None:
    """configs/cifar100/resnet56-deit_tiny_cifar/deit.yaml: DeiT needs a ViT student with a distillation token, which
    no CRD benchmark pair has, so this one file is a kdlab recipe (the DeiT authors' training recipe at CIFAR size)
    with no published number."""
    teacher, student = DEIT_TEACHER, "deit_tiny_cifar"
    pair = f"{teacher}-{student}"
    used: dict[str, str] = {}
    teacher_top1 = published("resnet56-resnet20", PAIRS["resnet56-resnet20"], "teacher", used)
    header = [f"{teacher} -> {student} on CIFAR-100, deit: a kdlab recipe, not a published pair (no CIFAR-100 "
              "benchmark pair has a ViT student with a distillation token).",
              "Recipe: the DeiT authors' ImageNet training recipe (github.com/facebookresearch/deit main.py, "
              "README_deit.md) at CIFAR size: 300 epochs, AdamW lr 5e-4 (their 5e-4 x batch/512, at batch 512),",
              "weight decay 0.05, 5 warm-up epochs then cosine (to 0; theirs to 1e-5), mixup 0.8, CutMix 1.0, label "
              "smoothing 0.1, RandAugment 2 ops at 27 of 30 (their rand-m9-mstd0.5-inc1: 9 of 10),",
              "on kdlab's cifar100 crop+flip. Not in kdlab, so left out: random erasing 0.25, repeated augmentation, "
              "drop-path 0.1, the magnitude noise of their RandAugment.",
              "Published hyperparameters: mode hard, alpha 0.5, temperature 1.0, reduction mean; from "
              "github.com/facebookresearch/deit main.py (--distillation-alpha 0.5, --distillation-tau 1.0) and its "
              "README's training command (--distillation-type hard).",
              "This file sets only what differs from kdlab's defaults (docs/methods.md#deit): the recipe above; the "
              "method runs its defaults.",
              f"Published top-1: no published CIFAR-100 number for this or any zoo pair (the DeiT README's numbers "
              f"are ImageNet ones); teacher {teacher_top1}, student: no published baseline.",
              *(f"[{tag}] {text}." for tag, text in used.items()),
              f"Teacher first: kdlab train --config configs/cifar100/train/{teacher}.yaml --data-root DIR "
              f"--out runs/cifar100/teachers/{teacher}",
              f"Then: kdlab distill --config configs/cifar100/{pair}/deit.yaml --data-root DIR --seed 0"]
    body = {"model": student, "teachers": [f"runs/cifar100/teachers/{teacher}/best.pt"], "method": "deit",
            "label_smoothing": 0.1,
            "data": {"name": "cifar100", "batch_size": 512, "mixup": 0.8, "cutmix": 1.0, "randaugment": "2,27"},
            "optim": {"optimizer": "adamw", "epochs": 300, "lr": 5e-4, "weight_decay": 0.05, "schedule": "cosine",
                      "warmup_epochs": 5}}
    dump(OUT / pair / "deit.yaml", header, body)


def main() -> None:
    models = sorted(set(TEACHERS) | {pair.split("-")[1] for pair in PAIRS})
    for model in models:
        lr = 0.01 if model in LIGHT else 0.05
        role = "teacher" if model in TEACHERS else "student"
        out = f"runs/cifar100/{'teachers' if role == 'teacher' else 'students'}/{model}"
        dump(OUT / "train" / f"{model}.yaml",
             [f"{model} on CIFAR-100 with the CRD/RepDistiller recipe (github.com/HobbitLong/RepDistiller",
              f"train_teacher.py, train_student.py): 240 epochs, SGD 0.9, lr {lr}, x0.1 at 150/180/210, batch 64,",
              "weight decay 5e-4, crop+flip.",
              f"kdlab train --config configs/cifar100/train/{model}.yaml --data-root DIR --seed 0 --out {out}"],
             {"model": model, "data": {"name": "cifar100", "batch_size": 64},
              "optim": {"epochs": 240, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
                        "milestones": [150, 180, 210], "gamma": 0.1}})
    for pair, info in PAIRS.items():
        teacher, student = pair.split("-")
        for name, (spec, settings, why) in published_hparams(pair, info).items():
            changed = deviations(spec, settings, student)
            sets = describe(changed)
            header = [f"{teacher} -> {student} on CIFAR-100, {name}; the CRD/RepDistiller recipe from kdlab's cifar100",
                      "defaults (240 epochs, SGD 0.9, lr 0.05 or 0.01 for MobileNet/ShuffleNet students, x0.1 at",
                      "150/180/210, batch 64, weight decay 5e-4).",
                      f"Published hyperparameters: {describe(settings)}; from {why}.",
                      f"This file sets only what differs from kdlab's defaults (docs/methods.md#{spec}): "
                      f"{sets or 'nothing'}."]
            header += notes(name, pair)
            for key in ("dkd_beta", "reviewkd"):
                if (pair, key) in ASSUMED and name in ({"dkd_beta": ("dkd", "dkd_ls"), "reviewkd": ("reviewkd",)}[key]):
                    header.append(f"ASSUMED {key.replace('_', ' ')}: {ASSUMED[(pair, key)][1]}.")
            used: dict[str, str] = {}
            top1 = published(pair, info, name, used)
            teacher_row, student_row = BASELINES.get(name, ("teacher", "student"))
            if published(pair, info, teacher_row, {}).startswith("not published"):
                teacher_row, student_row = "teacher", "student"
            header += [f"Published top-1: {top1}; teacher {published(pair, info, teacher_row, used)}, student "
                       f"{published(pair, info, student_row, used)}.",
                       *(f"[{tag}] {text}." for tag, text in used.items()),
                       f"Teacher first: kdlab train --config configs/cifar100/train/{teacher}.yaml --data-root DIR "
                       f"--out runs/cifar100/teachers/{teacher}",
                       f"Then: kdlab distill --config configs/cifar100/{pair}/{name}.yaml --data-root DIR --seed 0"]
            body = {"model": student, "teachers": [f"runs/cifar100/teachers/{teacher}/best.pt"], "method": spec,
                    **{k: v for k, v in changed.items() if k != "methods"},
                    **({"methods": changed["methods"]} if changed["methods"] else {}), "data": {"name": "cifar100"}}
            dump(OUT / pair / f"{name}.yaml", header, body)
    deit_recipe()


if __name__ == "__main__":
    main()
