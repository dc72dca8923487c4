"""The benchmark scripts keep working: the reference loop's data matches kdlab's, and --quick runs end to end."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark_module(name):
    """Import benchmarks/<name>.py (the scripts are not a package) for the duration of a test module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def reference_loop():
    yield from _benchmark_module("reference_loop")


def test_reference_dataset_normalises_like_kdlab(reference_loop):
    from kdlab.data.augment import normalize
    from kdlab.data.cifar import CIFAR100_MEAN, CIFAR100_STD

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.tensor([3, 1, 4, 1])
    data = reference_loop.PILAugmentedDataset(images, targets, CIFAR100_MEAN, CIFAR100_STD, padding=0)
    expected = normalize(images, CIFAR100_MEAN, CIFAR100_STD)
    for i in range(4):
        image, target, index = data[i]
        # padding 0: the crop is the whole image, so only the random flip can differ
        assert torch.allclose(image, expected[i], atol=1e-5) or torch.allclose(image, expected[i].flip(-1), atol=1e-5)
        assert (target, index) == (int(targets[i]), i)


def test_reference_batches_continue_across_epochs(reference_loop):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(5)), batch_size=2, drop_last=True)
    batches = reference_loop.ReferenceBatches(loader)
    seen = [int(b[0][0]) for b in batches.take(3)] + [int(b[0][0]) for b in batches.take(2)]
    assert seen == [0, 2, 0, 2, 0]  # 2 batches per epoch, re-opened when exhausted


def test_reference_loop_quick_run_writes_results(reference_loop, tmp_path, capsys):
    out = tmp_path / "reference.json"
    code = reference_loop.main(["--quick", "--models", "resnet20:resnet8", "--ref-workers", "0",
                                "--modes", "fp32,channels_last", "--cached", "--cache-size", "64",
                                "--torchdistill", "no", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())["results"][0]
    assert set(result["cases"]) == {"reference fp32, 0 workers", "kdlab fp32", "kdlab channels_last",
                                    "kdlab channels_last, cached teacher"}
    assert all(ratio > 0 for ratio in result["speedup"].values())
    targets = capsys.readouterr().out.split("## Targets")[1]
    assert "kdlab channels_last, cached teacher KD / fastest reference" in targets


def test_torchdistill_step_computes_the_benchmarks_kd_loss(reference_loop):
    """torchdistill's box, as configured here, computes 0.1 CE + 0.9 T^2 KL(T=4) like the other loops."""
    pytest.importorskip("torchdistill")
    import torchdistill_step

    from kdlab import models

    torch.manual_seed(0)
    teacher, student = models.create("resnet8", 10).eval(), models.create("resnet8", 10)
    images, targets = torch.rand(8, 3, 32, 32), torch.arange(8)
    data = reference_loop.PILAugmentedDataset((images * 255).to(torch.uint8), targets, (0.5,) * 3, (0.25,) * 3, 4)
    step = torchdistill_step.TorchdistillStep(teacher, student, data, 4, 0, reference_loop.TEMPERATURE,
                                              reference_loop.CE_WEIGHT)
    loss = step.box.forward_process(images, targets, {})
    with torch.no_grad():
        t, s = teacher(images) / reference_loop.TEMPERATURE, student(images)
        kl = torch.nn.functional.kl_div(torch.log_softmax(s / reference_loop.TEMPERATURE, 1), torch.softmax(t, 1),
                                        reduction="batchmean")
        expected = (reference_loop.CE_WEIGHT * torch.nn.functional.cross_entropy(s, targets)
                    + reference_loop.KD_WEIGHT * reference_loop.TEMPERATURE ** 2 * kl)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert step.run(2)[0] > 0 and len(step.losses) == 2


def analytic_forward_flops(model: torch.nn.Module, shape) -> float:
    """2 x multiply-adds of every Conv2d and Linear for one image, from the layer shapes (hooks record sizes)."""
    total = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total.append(2 * k * output[0].numel())
        else:
            total.append(2 * module.in_features * module.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return float(sum(total))


def test_reference_step_flops_are_teacher_forward_plus_three_student_forwards(reference_loop):
    from argparse import Namespace

    from kdlab import models

    dataset = Namespace(num_classes=10, in_channels=3)
    args = Namespace(image_size=16, batch_size=4)
    counted = reference_loop.step_flops_per_image("resnet20", "resnet8", args, dataset)
    teacher = analytic_forward_flops(models.create("resnet20", 10, image_size=16).eval(), (3, 16, 16))
    student = analytic_forward_flops(models.create("resnet8", 10, image_size=16), (3, 16, 16))
    # Backward = grad input + grad weight = 2 forwards, except the first conv's grad input (the images).
    assert teacher + 2.9 * student < counted <= teacher + 3 * student


def test_arithmetic_ceiling_rows_by_hand(reference_loop):
    results = [{"teacher": "t", "student": "s", "baseline_median": 100.0, "flops_per_image": 0.5e9},
               {"teacher": "T", "student": "S", "baseline_median": 40.0, "flops_per_image": 3e9}]
    # 100 img/s x 0.5 GFLOP = 50 GFLOP/s sustained, 2x needs 100 of a 150 peak; 40 x 3 = 120, 2x needs 240
    assert reference_loop.ceiling_rows(results, peak=150.0) == [
        ["t -> s", "0.500", "50", "100", "0.67", "yes"],
        ["T -> S", "3.000", "120", "240", "1.60", "no: above the fp32 peak"]]



@pytest.fixture(scope="module")
def baseline_parity():
    yield from _benchmark_module("baseline_parity")


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet8x4"])
def test_parity_reference_resnet_computes_kdlab_resnet(baseline_parity, name):
    from kdlab import models

    depth, widths = baseline_parity.REF_RESNETS[name]
    reference = baseline_parity.RefResNet(depth, widths, 100).double()
    ours = models.create(name, 100).double()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert [tuple(v.shape) for v in ref_state.values()] == [tuple(v.shape) for v in our_state.values()]
    ours.load_state_dict(dict(zip(our_state, ref_state.values(), strict=True)))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for mode in (True, False):  # batch statistics, then running statistics
        reference.train(mode)
        ours.train(mode)
        assert torch.allclose(ours(x), reference(x), rtol=0, atol=1e-10)


def test_kdlab_step_schedule_is_repdistiller_adjust_learning_rate(baseline_parity):
    from kdlab.config import OptimConfig
    from kdlab.engine.schedule import lr_factor

    optim = OptimConfig()  # 240 epochs, x0.1 at 150/180/210
    factor = lr_factor(optim)
    for epoch in range(1, optim.epochs + 1):  # the reference sets the LR at the start of 1-indexed epochs
        expected = baseline_parity.reference_lr(optim.lr, epoch, optim.milestones)
        assert optim.lr * factor(epoch - 1) == pytest.approx(expected, rel=1e-12)
    assert baseline_parity.milestones(240) == [150, 180, 210]


def test_baseline_parity_quick_run_on_synthetic_data(baseline_parity, tmp_path, capsys):
    out = tmp_path / "parity.json"
    code = baseline_parity.main(["--quick", "--data-root", "", "--train-size", "256", "--test-size", "128",
                                 "--threads", "1", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"kdlab", "reference"}
    assert runs["kdlab"]["0"]["lrs"] == pytest.approx(runs["reference"]["0"]["lrs"], rel=1e-12)
    assert set(result["summary"]) >= {"kdlab", "reference", "kdlab_minus_reference_last"}
    assert "kdlab - reference" in capsys.readouterr().out


def test_kdlab_trainer_steps_like_the_reference_loop_on_identical_batches(baseline_parity, tmp_path):
    """Same weights, same batches (the last one partial), 3 epochs across 2 LR decays: kdlab's Trainer on
    SupervisedObjective and the reference loop end at the same weights. Checks the LR of every epoch, weight
    decay on every parameter (BN and biases too), momentum, the CE and that no batch is dropped."""
    from kdlab import models
    from kdlab.config import Config
    from kdlab.engine.objectives import SupervisedObjective
    from kdlab.engine.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    sizes = (8, 8, 3)
    batches = [(torch.randn(n, 3, 32, 32, dtype=torch.float64, generator=g), torch.randint(0, 10, (n,), generator=g),
                torch.arange(n)) for n in sizes]
    depth, widths = baseline_parity.REF_RESNETS["resnet8"]
    torch.manual_seed(0)
    reference = baseline_parity.RefResNet(depth, widths, 10).double()
    ours = models.create("resnet8", 10).double()
    ours.load_state_dict(dict(zip(ours.state_dict(), reference.state_dict().values(), strict=True)))

    config = Config(model="resnet8", device="cpu", log_every=10**9)
    config.optim.epochs, config.optim.milestones = 3, [1, 2]
    trainer = Trainer(config, SupervisedObjective(ours), batches, None, tmp_path, {}, torch.device("cpu"), quiet=True)
    optimizer = torch.optim.SGD(reference.parameters(), lr=config.optim.lr, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, 4):
        record = trainer.train_epoch(epoch)
        lr = baseline_parity.reference_set_lr(optimizer, config.optim.lr, epoch, config.optim.milestones)
        assert record["lr"] == pytest.approx(lr, rel=1e-12)
        assert baseline_parity.reference_epoch(reference, batches, optimizer, torch.nn.CrossEntropyLoss()) == 19
    # kdlab takes the CE of float32 logits (rounding ~1e-7 relative): 1e-6 is far above that and far below
    # one step of any missing piece (weight decay alone moves a BN weight of 1 by 0.05 x 5e-4 = 2.5e-5).
    for (name, p), q in zip(ours.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(p.double(), q.double(), rtol=0, atol=1e-6), name


def test_compile_step_runs_end_to_end_with_the_tracing_backend():
    """benchmarks/compile_step.py with dynamo's 'eager' backend (the tracing without inductor's compilation)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        module = importlib.import_module("compile_step")
        result = module.main(["--quick", "--threads", "1", "--backend", "eager", "--pair", "resnet8:resnet8"])
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert result["ratio"] > 0 and len(result["rates"]["compiled"]) == 2 and result["compile_seconds"] > 0


@pytest.fixture(scope="module")
def distill_throughput():
    yield from _benchmark_module("distill_throughput")


def test_operator_kinds_of_the_cost_table(distill_throughput):
    kind = distill_throughput.op_kind
    assert [kind(n) for n in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm", "aten::bmm")] \
        == ["matrix"] * 4
    assert [kind(n) for n in ("aten::linalg_eigh", "aten::_linalg_svd", "aten::linalg_qr")] == ["decomposition"] * 3
    assert [kind(n) for n in ("aten::native_batch_norm", "aten::mul", "aten::copy_", "aten::cat")] == ["other"] * 4


def test_cost_table_splits_a_flagged_methods_extra_time(distill_throughput, capsys):
    """KD-SVD over KD: a second backward pass (more FLOPs) and eigendecompositions (which KD never runs)."""
    bench = distill_throughput
    args = bench.parse_args(["--quick", "--threads", "1"])
    flagged = [{"teacher": "resnet8", "student": "resnet8", "precision": "fp32",
                "methods": [{"method": "kd", "overhead_pct": 0.0}, {"method": "kdsvd", "overhead_pct": 99.0}]}]
    (result,) = bench.cost_table(args, bench.training_set(args), flagged)
    (row,) = result["methods"]  # only the method over the flag
    assert row["method"] == "kdsvd" and row["flops_ratio"] > 1.0
    assert row["decomposition_s_per_image"] > 0 and row["extra_decomposition_pct"] > 0
    assert row["profiled_overhead_pct"] == pytest.approx(sum(row[f"extra_{k}_pct"] for k in bench.OP_KINDS))
    bench.print_cost_tables([result])
    assert "| kdsvd |" in capsys.readouterr().out
