"""Early warnings: a run whose model sits at chance, or whose loss explodes, gets one line naming the key to
change (the run itself goes on as asked)."""

import math

from kdlab.cli import main
from kdlab.engine.health import RunHealth


def record(loss, train, test, diverged=False):
    return {"train_loss": loss, "train_top1": train, "test_top1": test, "diverged": diverged}


def test_a_model_at_chance_after_enough_steps_is_named_once_with_the_methods_weight():
    health = RunHealth(num_classes=10, method="at+kd", lr=0.05, steps_per_epoch=60)
    assert health.observe(1, record(2.3, 10.0, 10.0)) is None  # one epoch at chance is normal
    warning = health.observe(2, record(2.2, 12.0, 9.0))
    assert "at chance (train 12.0%, test 9.0%, chance 10.0%)" in warning and "method.at.weight" in warning
    assert health.observe(3, record(2.2, 12.0, 9.0)) is None  # said once
    tiny = RunHealth(num_classes=10, method="dkd", lr=0.05, steps_per_epoch=3)  # 10% of digits: 3 steps per epoch
    assert all(tiny.observe(e, record(2.3, 10.0, 10.0)) is None for e in range(1, 33))  # < 100 steps so far
    assert "method.dkd.weight" in tiny.observe(34, record(2.3, 10.0, 10.0))


def test_learning_models_and_plain_training_get_no_or_the_lr_warning():
    learning = RunHealth(num_classes=100, method="kd", lr=0.05)
    assert all(learning.observe(e, record(4.0 - e * 0.1, 3.0 + e, 2.0 + e)) is None for e in range(1, 6))
    plain = RunHealth(num_classes=100, method=None, lr=0.05)  # steps per epoch unknown: five epochs
    assert all(plain.observe(e, record(4.6, 1.0, 1.0)) is None for e in range(1, 5))
    assert "change optim.lr" in plain.observe(5, record(4.6, 1.2, 1.1))


def test_non_finite_or_growing_losses_name_the_learning_rate():
    nan = RunHealth(num_classes=10, method="kd", lr=5.0)
    assert "not finite" in nan.observe(1, record(math.nan, 9.0, math.nan, diverged=True))
    growing = RunHealth(num_classes=10, method=None, lr=0.5)
    assert growing.observe(1, record(2.0, 20.0, 20.0)) is None
    warning = growing.observe(2, record(25.0, 20.0, 20.0))
    assert "grew from 2 to 25" in warning and "optim.lr (now 0.5)" in warning


def test_a_diverging_run_says_so_in_one_line(tmp_path, capsys):
    code = main(["train", "--model", "mobilenetv2", "--epochs", "1", "--lr", "50", "--out", str(tmp_path / "r"),
                 "--threads", "1", "--quiet", "data.fraction=0.2"])
    err = capsys.readouterr().err
    assert code == 0  # the run finishes as asked; the warning says what to change
    assert err.count("kdlab: warning: epoch 1:") == 1 and "lower optim.lr (now 50)" in err
