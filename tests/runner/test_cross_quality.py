"""Cross-quality distillation (teacher and student at different resolutions), several teachers, and the Tf-KD
virtual-teacher calibration study.

End-to-end runs go through the `kdlab` command on the embedded digits data (8x8 grey), one epoch each.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import kdlab.runner.checkpoints
import kdlab.runner.common
import kdlab.runner.distill
import kdlab.runner.train
from kdlab import losses, models
from kdlab.cli import main
from kdlab.distillation.loss import DistillationLoss, mix_teacher_logits
from kdlab.errors import KdlabError
from kdlab.experiments.calibration import calibration_study
from kdlab.losses.calibration import calibrated_temperature, virtual_teacher_confidence
from kdlab.methods import create as create_method

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--quiet", "data.fraction=0.3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two resnet8 teachers on digits (different seeds) and a cross-quality student distilled at 4px."""
    root = tmp_path_factory.mktemp("cross_quality")
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(["train", "--model", "resnet8", "--seed", seed, "--out", str(root / name), *FAST]) == 0
    assert main(["distill", "--teacher", str(root / "a" / "best.pt"), "--student", "resnet8", "--method", "kd",
                 "--student-resolution", "4", "--out", str(root / "xq"), *FAST]) == 0
    return root


def spy_shapes(monkeypatch) -> dict[str, set]:
    """Forward pre-hooks on the objective's models, attached when the run builds its Trainer."""
    seen: dict[str, set] = {"teacher": set(), "teacher_inner": set(), "student": set()}
    original = kdlab.runner.distill.Trainer

    def record(role):
        return lambda _module, inputs: seen[role].add(tuple(inputs[0].shape[1:]))

    def spy(config, objective, *args, **kwargs):
        student = getattr(objective, "student", None) or objective.model
        student.register_forward_pre_hook(record("student"))
        for teacher in getattr(objective, "teachers", []):
            teacher.register_forward_pre_hook(record("teacher"))
            if isinstance(teacher, kdlab.runner.common.DownscaledInput):
                teacher.model.register_forward_pre_hook(record("teacher_inner"))
        return original(config, objective, *args, **kwargs)

    for runner in (kdlab.runner.distill, kdlab.runner.train):
        monkeypatch.setattr(runner, "Trainer", spy)
    return seen


def eval_top1(checkpoint, capsys) -> str:
    """The top-1 that `kdlab eval` prints, as printed (2 decimals)."""
    code, out, err = run(["eval", "--checkpoint", str(checkpoint), "--data", "digits"], capsys)
    assert code == 0, err
    return out.split("top-1 ")[1].split("%")[0]


# ----------------------------------------------------------------------------------------- cross-quality
@pytest.mark.parametrize("method, mode", [("kd", "area"), ("at", "bilinear")])
def test_cross_quality_teacher_full_student_low_resolution(teachers, tmp_path, monkeypatch, capsys, method, mode):
    seen = spy_shapes(monkeypatch)
    out = tmp_path / "run"
    code, _, err = run(["distill", "--teacher", str(teachers / "a" / "best.pt"), "--student", "resnet8",
                        "--method", method, "--student-resolution", "4", f"data.student_resize_mode={mode}",
                        "--out", str(out), *FAST], capsys)
    assert code == 0, err
    assert seen["teacher"] == {(1, 8, 8)}  # the teacher gets the full-resolution batch ...
    assert seen["student"] == {(1, 4, 4)}  # ... the student (training and evaluation) only the 4x4 view
    arch = torch.load(out / "last.pt", weights_only=True)["arch"]
    assert (arch["image_size"], arch["downscaled_from"], arch["resize_mode"]) == (4, 8, mode)
    summary = json.loads((out / "summary.json").read_text())
    # The same model on the same 450 images: the same count of correct ones, so the printed text matches exactly.
    assert eval_top1(out / "last.pt", capsys) == f"{summary['last']['test_top1']:.2f}"


def test_low_resolution_baseline_is_one_command(tmp_path, monkeypatch, capsys):
    seen = spy_shapes(monkeypatch)
    out = tmp_path / "base"
    code, _, err = run(["train", "--model", "resnet8", "--downscale", "2", "--out", str(out), *FAST], capsys)
    assert code == 0, err
    assert seen["student"] == {(1, 4, 4)}
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["arch"]["image_size"], state["arch"]["downscaled_from"]) == (4, 8)
    summary = json.loads((out / "summary.json").read_text())
    assert eval_top1(out / "last.pt", capsys) == f"{summary['last']['test_top1']:.2f}"
    # The same model, fed the downscaled test images by hand, gives the same accuracy as `kdlab eval`.
    model = models.create("resnet8", 10, in_channels=1, image_size=4)
    model.load_state_dict(state["model"])
    model.eval()
    from kdlab import data

    _, test_loader, _ = data.build_loaders("digits")
    correct = total = 0
    with torch.inference_mode():
        for images, targets, _ in test_loader:
            logits = model(F.interpolate(images, size=(4, 4), mode="area"))
            correct += int((logits.argmax(1) == targets).sum())
            total += len(targets)
    assert 100.0 * correct / total == pytest.approx(summary["last"]["test_top1"])


@pytest.mark.parametrize("flags, needles", [
    (["--student-resolution", "16"], ["16px", "digits images are 8px", "choose 1..8"]),
    (["--student-resolution", "0"], ["at least 1 pixel"]),
    (["--downscale", "16"], ["less than 1px"]),
    (["--downscale", "2", "--student-resolution", "4"], ["not both"]),
    (["data.student_resize_mode=nearest"], ["area, bilinear"]),
])
@pytest.mark.parametrize("command", ["train", "distill"])
def test_bad_resolution_is_one_line_and_writes_nothing(teachers, tmp_path, capsys, flags, needles, command):
    args = (["train", "--model", "resnet8"] if command == "train" else
            ["distill", "--teacher", str(teachers / "a" / "best.pt"), "--student", "resnet8", "--method", "kd"])
    code, _, err = run([*args, *flags, "--out", str(tmp_path / "x"), *FAST], capsys)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "x").exists()


def test_low_resolution_checkpoint_as_teacher_gets_downscaled_batches(teachers, tmp_path, monkeypatch, capsys):
    seen = spy_shapes(monkeypatch)
    code, _, err = run(["distill", "--teacher", str(teachers / "xq" / "best.pt"), "--student", "resnet8",
                        "--method", "kd", "--out", str(tmp_path / "from_lowres"), *FAST], capsys)
    assert code == 0, err
    assert seen["teacher"] == {(1, 8, 8)} and seen["teacher_inner"] == {(1, 4, 4)}
    assert seen["student"] == {(1, 8, 8)}


def test_low_resolution_checkpoint_is_checked_against_the_data(teachers):
    arch = torch.load(teachers / "xq" / "best.pt", weights_only=True)["arch"]
    info = kdlab.data.DataInfo("digits16", 10, 1, 16, (0.5,), (0.5,), 100)
    with pytest.raises(KdlabError, match="takes 4px views of 1x8px images but digits16 has 1x16px"):
        kdlab.runner.checkpoints.check_against_data(arch, info, "xq.pt", "teacher")


def test_cross_quality_on_imagefolder(tmp_path, monkeypatch, capsys):
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / "folder" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    common = ["--data", "imagefolder", "--data-root", str(tmp_path / "folder"), "--epochs", "1", "--batch-size",
              "4", "--quiet", "data.image_size=16", "data.workers=0"]
    assert main(["train", "--model", "resnet8", "--out", str(tmp_path / "t"), *common]) == 0
    seen = spy_shapes(monkeypatch)
    code, _, err = run(["distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8", "--method",
                        "dkd", "--student-resolution", "8", "--out", str(tmp_path / "s"), *common], capsys)
    assert code == 0, err
    assert seen["teacher"] == {(3, 16, 16)} and seen["student"] == {(3, 8, 8)}


# ----------------------------------------------------------------------------------------- several teachers
def tiny_models(seed: int = 0, classes: int = 10):
    torch.manual_seed(seed)
    return [models.create("resnet8", classes, in_channels=1, image_size=8).eval() for _ in range(3)]


def test_mix_teacher_logits_matches_hand_computation():
    z1, z2, temperature, w = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5], 2.0, (0.7, 0.3)

    def softmax(z):
        e = [math.exp(v / temperature) for v in z]
        return [v / sum(e) for v in e]

    mean = [w[0] * a + w[1] * b for a, b in zip(softmax(z1), softmax(z2), strict=True)]
    mixed = mix_teacher_logits([torch.tensor([z1]), torch.tensor([z2])], [7, 3], temperature)  # normalised
    assert F.softmax(mixed / temperature, dim=1)[0].tolist() == pytest.approx(mean, abs=1e-6)
    # KD against the mixture is T²·KL(p̄ ‖ σ_T(z_s)), by hand:
    zs = [0.3, -0.2, 0.1]
    qs = softmax(zs)
    expected = temperature**2 * sum(p * math.log(p / q) for p, q in zip(mean, qs, strict=True))
    assert float(losses.kd(torch.tensor([zs]), mixed, temperature)) == pytest.approx(expected, rel=1e-5)
    probs = losses.average_teacher_probs([torch.tensor([z1]), torch.tensor([z2])], w, temperature)
    assert float(losses.kd_from_probs(torch.tensor([zs]), probs, temperature)) == pytest.approx(expected, rel=1e-5)


def test_one_teacher_in_a_list_is_plain_kd_exactly():
    teacher, student, _ = tiny_models()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    single = DistillationLoss(teacher, student, "kd")
    listed = DistillationLoss([teacher], student, "kd", teacher_mix=[2.0])
    loss_a, terms_a = single(x, y)
    loss_b, terms_b = listed(x, y)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(terms_a[k], terms_b[k]) for k in terms_a)
    with torch.no_grad():
        expected = 0.9 * losses.kd(student(x), teacher(x), temperature=4.0)
    assert torch.allclose(terms_a["kd"], expected)
    assert len(listed.teacher_methods) == 0  # the single-teacher path builds nothing extra


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "lskd", "at", "sp", "kd+rkd", "nst+dist"])
def test_two_identical_teachers_equal_one(method):
    teacher, student, _ = tiny_models(1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    one = DistillationLoss(teacher, student, method, input_shape=(1, 8, 8))
    two = DistillationLoss([teacher, teacher], student, method, input_shape=(1, 8, 8), teacher_mix=[0.25, 0.75])
    _, terms_one = one(x, y, epoch=30)
    _, terms_two = two(x, y, epoch=30)
    assert terms_one.keys() == terms_two.keys()
    for name in terms_one:
        # The mixed teacher is T·log Σ w·softmax(z/T): the same distribution, logits shifted by a per-row
        # constant, so float32 rounding differs. DKD's small TCKD (~1e-3, a difference of near-equal logs)
        # then moves by ~5e-7 on AVX2 kernels; a wrong mix or temperature moves the terms by far more.
        assert torch.allclose(terms_one[name], terms_two[name], rtol=1e-4, atol=1e-5), name


def test_feature_methods_sum_per_teacher_losses_weighted_by_mix():
    t1, student, t2 = tiny_models(2)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    per_teacher = [DistillationLoss(t, student, "kd+at", input_shape=(1, 8, 8))(x, y).terms for t in (t1, t2)]
    both = DistillationLoss([t1, t2], student, "kd+at", input_shape=(1, 8, 8), teacher_mix=[0.7, 0.3])
    assert both._mixed == {"kd"} and set(both.teacher_methods[0]) == {"at"}  # one AT instance per teacher
    terms = both(x, y).terms
    assert torch.allclose(terms["at"], 0.7 * per_teacher[0]["at"] + 0.3 * per_teacher[1]["at"], rtol=1e-5)
    with torch.no_grad():
        mixed = mix_teacher_logits([t1(x), t2(x)], [0.7, 0.3], 4.0)
        expected_kd = 0.9 * losses.kd(student(x), mixed, temperature=4.0)
    assert torch.allclose(terms["kd"], expected_kd, rtol=1e-5)
    assert terms["kd"] != per_teacher[0]["kd"]  # the second teacher is really used


def test_connector_methods_get_one_connector_per_teacher():
    t1, student, t2 = tiny_models(3)
    both = DistillationLoss([t1, t2], student, "fitnet", input_shape=(1, 8, 8))
    first, second = both.methods[0], both.teacher_methods[0]["fitnet"]
    assert first is not second
    ids = {id(p) for p in both.trainable_parameters()}
    assert all(id(p) in ids for p in second.parameters())  # the second connector is trained too


def test_bad_teacher_sets_in_the_library():
    t1, student, _ = tiny_models(4)
    other = models.create("resnet8", 5, in_channels=1, image_size=8).eval()
    with pytest.raises(KdlabError, match="different numbers of classes"):
        DistillationLoss([t1, other], student, "kd", input_shape=(1, 8, 8))
    with pytest.raises(KdlabError, match="different numbers of classes"):
        DistillationLoss([t1, other], student, "kd")(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(KdlabError, match="3 weights for 2 teachers"):
        DistillationLoss([t1, t1], student, "kd", teacher_mix=[1, 1, 1])
    with pytest.raises(KdlabError, match=">= 0"):
        DistillationLoss([t1, t1], student, "kd", teacher_mix=[-1, 2])


def test_two_teachers_through_the_cli(teachers, tmp_path, monkeypatch, capsys):
    a, b = str(teachers / "a" / "best.pt"), str(teachers / "b" / "best.pt")
    seen = spy_shapes(monkeypatch)
    code, _, err = run(["distill", "--teacher", a, "--teacher", b, "--teacher-mix", "0.7,0.3", "--student",
                        "resnet8", "--method", "kd+at", "--out", str(tmp_path / "two"), *FAST], capsys)
    assert code == 0, err
    assert seen["teacher"] == {(1, 8, 8)}
    record = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss_ce", "train_loss_kd", "train_loss_at"} <= set(record)
    assert "teacher_methods" in torch.load(tmp_path / "two" / "last.pt", weights_only=True)["extra"]
    code, _, err = run(["distill", "--teacher", a, "--teacher", b, "--student", "resnet8", "--method", "dkd",
                        "teacher_mix=[0.5,0.5]", "--student-resolution", "4", "--out", str(tmp_path / "dkd"),
                        *FAST], capsys)
    assert code == 0, err


def test_bad_teacher_sets_through_the_cli(teachers, tmp_path, capsys):
    a, b = str(teachers / "a" / "best.pt"), str(teachers / "b" / "best.pt")
    state = torch.load(a, weights_only=True)
    state["arch"]["num_classes"] = 5
    state["model"] = models.create("resnet8", 5, in_channels=1, image_size=8).state_dict()
    torch.save(state, tmp_path / "five.pt")
    cases = [
        ([a, str(tmp_path / "five.pt")], [], ["teachers differ", "5 classes", "10 classes"]),
        ([a, str(teachers / "xq" / "best.pt")], [], ["teachers differ", "1x4px", "1x8px"]),
        ([a, b], ["--teacher-mix", "0.5,0.3,0.2"], ["3 weights for 2 teachers"]),
        ([a, b], ["teacher_mix=[-1,2]"], ["teacher_mix weights must be >= 0"]),
    ]
    for paths, extra, needles in cases:
        args = ["distill", *[f for p in paths for f in ("--teacher", p)], "--student", "resnet8", "--method", "kd",
                *extra, "--out", str(tmp_path / "x"), *FAST]
        code, _, err = run(args, capsys)
        one_line_error(code, err, *needles)
        assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------- Tf-KD calibration
@pytest.mark.parametrize("classes, target", [(10, 0.5), (10, 0.97), (100, 0.75)])
def test_calibrated_temperature_gives_the_target_confidence(classes, target):
    tau = calibrated_temperature(classes, target)
    q = losses.virtual_teacher_probs(torch.tensor([3]), classes, correct_prob=0.99, temperature=tau,
                                     dtype=torch.float64)
    assert float(q[0, 3]) == pytest.approx(target, rel=1e-9)
    assert virtual_teacher_confidence(classes, 0.99, tau) == pytest.approx(target, rel=1e-12)


def test_virtual_teacher_confidence_matches_the_signal():
    q = losses.virtual_teacher_probs(torch.tensor([0]), 100, correct_prob=0.99, temperature=20.0,
                                     dtype=torch.float64)
    assert virtual_teacher_confidence(100, 0.99, 20.0) == pytest.approx(float(q[0, 0]), rel=1e-12)
    assert 0.0104 < float(q[0, 0]) < 0.0106  # docs/methods.md#tfkd_virtual: q_y ≈ 0.0105 for K=100, τ=20


def test_calibrate_hyperparameter_sets_the_temperature():
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    method = create_method("tfkd_virtual", calibrate=0.9)
    tau = calibrated_temperature(10, 0.9)
    assert method.signal_temperature(10) == tau
    expected = losses.tfkd_virtual(logits, y, correct_prob=0.99, temperature=tau, multiplier=100.0)
    batch = kdlab.methods.DistillBatch(logits, None, y, None, 1, {}, {})
    assert torch.equal(method(batch)["tfkd_virtual"], expected)
    assert create_method("tfkd_virtual").signal_temperature(10) == 20.0  # off by default: the authors' τ
    with pytest.raises(KdlabError, match="calibrate=1.0"):
        create_method("tfkd_virtual", calibrate=1.0)
    with pytest.raises(KdlabError, match="between chance"):
        create_method("tfkd_virtual", calibrate=0.05).signal_temperature(10)


def test_calibration_study_through_the_cli(teachers, tmp_path, capsys):
    code, _, err = run(["distill", "--student", "resnet8", "--method", "tfkd_virtual",
                        "method.tfkd_virtual.calibrate=0.9", "--out", str(tmp_path / "tf"), *FAST], capsys)
    assert code == 0, err
    png = tmp_path / "study" / "calibration.png"
    code, out, err = run(["calibration", "--run", str(teachers / "a"), "--run", str(tmp_path / "tf"), "--run",
                          str(teachers / "xq"), "--out", str(png)], capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = png.with_suffix(".md").read_text()
    assert "virtual teacher q (τ=0.225)" in table and "calibrate=" in table
    rows = calibration_study([teachers / "a", tmp_path / "tf", teachers / "xq"], out=tmp_path / "again.png",
                             quiet=True)
    for row, run_dir in zip(rows, [teachers / "a", tmp_path / "tf", teachers / "xq"], strict=True):
        last = json.loads((run_dir / "summary.json").read_text())["last"]
        assert row["top1"] == pytest.approx(last["test_top1"]) and row["ece"] == pytest.approx(last["test_ece"])
    signal = rows[1]["signal"]
    # q always ranks the label first; its confidence is the calibrated 0.9, so its ECE on the labels is 10%.
    assert signal["top1"] == 100.0 and signal["confidence"] == pytest.approx(90.0)
    assert signal["ece"] == pytest.approx(10.0) and rows[0]["signal"] is None and rows[2]["resolution"] == 4
    code, _, err = run(["calibration", "--run", str(tmp_path / "nothing")], capsys)
    one_line_error(code, err, "no config.yaml")
