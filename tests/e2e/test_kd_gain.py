"""KD measurably transfers the teacher: on 10% of the digits training split, a resnet8 distilled from a resnet20
teacher (trained on the whole split) matches the teacher's soft predictions far more closely than the same
student trained alone, and does not lose accuracy; paired over two training seeds on the 450 test images."""

import pytest
import torch
import torch.nn.functional as F

from kdlab import config as cfg
from kdlab.data import build_loaders
from kdlab.runner.checkpoints import load_trained_model
from kdlab.runner.distill import run_distill
from kdlab.runner.train import run_train

TEMPERATURE = 4.0  # the KD method's default temperature


def _config(model, out, seed, epochs, fraction, **extra):
    return cfg.build([{"model": model, "out": str(out), "seed": seed, "deterministic": True,
                       "data": {"name": "digits", "fraction": fraction}, "optim": {"epochs": epochs}}, extra])


def _test_logits(checkpoint, images, info) -> torch.Tensor:
    model, _ = load_trained_model(checkpoint, info)
    with torch.inference_mode():
        return model.eval()(images).double()


def _kl_from(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per image KL(σ_T(teacher) ‖ σ_T(student)): what KD minimises on the training images."""
    return F.kl_div(F.log_softmax(student / TEMPERATURE, 1), F.log_softmax(teacher / TEMPERATURE, 1),
                    log_target=True, reduction="none").sum(1)


@pytest.mark.slow
def test_kd_on_digits_follows_the_teacher_without_losing_accuracy(tmp_path):
    teacher = run_train(_config("resnet20", tmp_path / "teacher", 0, 20, None), quiet=True)
    # Measured 96.7-98.0% on AVX2/AVX512; its binomial std error on 450 images is 0.8 points: 93 is > 4 below.
    assert teacher["last"]["test_top1"] > 93.0
    _, test_loader, info = build_loaders("digits", test_batch_size=450)
    (images, targets, *_), = list(test_loader)
    teacher_logits = _test_logits(tmp_path / "teacher" / "best.pt", images, info)
    gains, kl_alone, kl_distilled = [], [], []
    for seed in (0, 1):  # the same seed: the same initial student and data order, alone and distilled
        run_train(_config("resnet8", tmp_path / f"alone{seed}", seed, 30, 0.1), quiet=True)
        run_distill(_config("resnet8", tmp_path / f"kd{seed}", seed, 30, 0.1, method="kd",
                            teachers=[str(tmp_path / "teacher" / "best.pt")]), quiet=True)
        alone = _test_logits(tmp_path / f"alone{seed}" / "last.pt", images, info)
        distilled = _test_logits(tmp_path / f"kd{seed}" / "last.pt", images, info)
        gains.append((distilled.argmax(1) == targets).double() - (alone.argmax(1) == targets).double())
        kl_alone.append(_kl_from(teacher_logits, alone))
        kl_distilled.append(_kl_from(teacher_logits, distilled))
    gain = torch.cat(gains)  # per (image, seed): +1 only KD right, -1 only the student alone right
    # Accuracy, paired: the std error of the mean gain over the 900 pairs is the binomial (McNemar) one, ~0.9
    # points. Measured +2.8; KD must not be worse beyond 2 std errors. Not a superiority test: on 450 images
    # the CPU's float kernels alone move gains of this size by a point or two.
    mean, se = 100 * float(gain.mean()), 100 * float(gain.std()) / len(gain) ** 0.5
    assert mean > -2 * se, (mean, se)
    # Teacher transfer, well conditioned (a mean of 900 smooth values, std error ~0.007): measured 0.077
    # distilled vs 0.344 alone (ratio 0.22). A student that ignores the teacher sits at the baseline's ratio
    # 1 (KD against its own logits or a uniform teacher: 2.7, 3.3); 0.5 is 2x from both.
    ratio = float(torch.cat(kl_distilled).mean() / torch.cat(kl_alone).mean())
    assert ratio < 0.5, ratio
