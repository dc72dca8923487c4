"""Relation/contrastive (rkd, sp, pkt, cc, mhgd, crd) and two-stage (ab, fsp, ft) methods on small zoo pairs.

(1) each DistillationLoss term equals the pure loss applied by hand to tensors captured with our own hooks
(taps, stage pairing, heads and connectors wired right); (2) a few SGD steps on a same- and a cross-
architecture pair: finite loss, the distillation gradient reaches the student and the heads/connectors,
the teacher (weights and BN statistics) unchanged; (3) init stages train exactly the right modules, and
AB/FSP's main phase is plain CE; (4) CRD's bank uses the batch indices, its queue has constant size.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from tap_capture import Capture
from torch import nn

import kdlab.losses as L
from kdlab import methods
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods.base import BuildContext
from kdlab.methods.connectors import resize_to
from kdlab.methods.fsp import _flow_points
from kdlab.models import create, tap_points

SIZE = 16
CLASSES = 10
N_TRAIN = 64
TRAIN_TARGETS = torch.arange(N_TRAIN) % CLASSES
INIT_METHODS = ["mhgd", "ab", "fsp", "ft"]
# Per pair, written out by hand: (teacher, student) matched stages (deepest aligned) and the FSP point
# before the first matched stage.
STAGES = {
    ("resnet20", "resnet8"): (["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"], "stem", "stem"),
    ("wrn_16_2", "wrn_16_1"): (["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"], "stem", "stem"),
    ("resnet20", "mobilenetv2"): (["stage1", "stage2", "stage3"], ["stage2", "stage3", "stage4"], "stem", "stage1"),
    ("resnet20", "vgg8"): (["stage1", "stage2", "stage3"], ["stage2", "stage3", "stage4"], "stem", "stage1"),
    ("resnet18", "resnet8"): (["stage2", "stage3", "stage4"], ["stage1", "stage2", "stage3"], "stage1", "stem"),
}
# One same-architecture and one cross-architecture pair per method (spread over the cross pairs).
PAIRS = {
    "rkd": [("resnet20", "resnet8"), ("resnet20", "mobilenetv2")],
    "sp": [("wrn_16_2", "wrn_16_1"), ("resnet18", "resnet8")],
    "pkt": [("resnet20", "resnet8"), ("resnet20", "vgg8")],
    "cc": [("wrn_16_2", "wrn_16_1"), ("resnet20", "mobilenetv2")],
    "mhgd": [("resnet20", "resnet8"), ("resnet20", "mobilenetv2")],
    "crd": [("wrn_16_2", "wrn_16_1"), ("resnet20", "vgg8")],
    "ab": [("resnet20", "resnet8"), ("resnet20", "mobilenetv2")],
    "fsp": [("wrn_16_2", "wrn_16_1"), ("resnet18", "resnet8")],
    "ft": [("resnet20", "resnet8"), ("resnet20", "mobilenetv2")],
}
CASES = [(name, pair) for name, pairs in PAIRS.items() for pair in pairs]
HPARAMS = {"crd": {"num_negatives": 32}}  # small contrast sets keep the test fast


def make(teacher: str, student: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    t = create(teacher, CLASSES, image_size=SIZE)
    s = create(student, CLASSES, image_size=SIZE)
    g = torch.Generator().manual_seed(seed + 100)
    for m in t.modules():  # a 'trained-looking' teacher: varied BN affine parameters and statistics
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return t, s


def batch(seed: int = 1, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(N_TRAIN, generator=g)[:n]
    return torch.randn(n, 3, SIZE, SIZE, generator=g), TRAIN_TARGETS[indices], indices


def loss_for(name: str, teacher: nn.Module, student: nn.Module, **kwargs) -> DistillationLoss:
    hparams = {name: {**HPARAMS.get(name, {}), **kwargs.pop("hp", {})}}
    return DistillationLoss(teacher, student, method=name, input_shape=(3, SIZE, SIZE), hparams=hparams,
                            train_targets=TRAIN_TARGETS, **kwargs)


def all_taps(model: nn.Module) -> list[str]:
    return [n for n in tap_points(model) if n != "classifier"]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def changed(module: nn.Module, before: dict[str, torch.Tensor], params_only: bool = True) -> bool:
    names = {k for k, _ in module.named_parameters()} if params_only else set(before)
    now = module.state_dict()
    return any(not torch.equal(now[k], before[k]) for k in names)


# ---------------------------------------------------------------------------------------- (1) wiring


def mhgd_vectors(m, s: dict, t: dict, ss: list[str], ts: list[str]) -> tuple[list, list]:
    v_t = [L.svd_compress(t[n], k=1)[:, 0] for n in ts]
    v_s = [L.align_singular_vectors(L.svd_compress(c(s[n]), k=4), v[:, None])[:, 0]
           for c, n, v in zip(m.connectors, ss, v_t)]
    return v_s, v_t


def mhgd_graphs(m, v: list[torch.Tensor]) -> list[torch.Tensor]:
    heads = m.attention["heads"]
    return [heads[i - 1](v[i], v[i - 1]) for i in range(1, len(v))]


def by_hand(name: str, m, s: dict, t: dict, pair, x_seed: int) -> dict[str, float]:
    """Expected (unweighted by the engine) terms from the pure losses on hand-captured tensors."""
    ts, ss, t_before, s_before = STAGES[pair]
    s_emb, t_emb = s.get("embedding"), t.get("embedding")  # the teacher may stop before its embedding
    if name == "rkd":
        return {"rkd": float(L.rkd(s_emb, t_emb, distance_weight=25.0, angle_weight=50.0))}
    if name == "sp":  # the deepest stage of each network
        return {"sp": float(L.sp(s[ss[-1]], t[ts[-1]]))}
    if name == "pkt":
        return {"pkt": float(L.pkt(s_emb, t_emb))}
    if name == "cc":
        return {"cc": float(L.cc(m.embed_student(s_emb), m.embed_teacher(t_emb), variant="paper", gamma=0.4, order=2))}
    if name == "mhgd":
        return {"mhgd": float(L.mhgd(*[mhgd_graphs(m, v) for v in mhgd_vectors(m, s, t, ss, ts)]))}
    if name == "ab":
        student = [c(s[n + "_pre"]) for c, n in zip(m.connectors, ss)]
        return {"ab": 3e-3 * float(L.ab(student, [t[n + "_pre"] for n in ts], margin=1.0))}
    if name == "fsp":
        sp, tp = [s_before, *ss], [t_before, *ts]
        smaps = [c(s[n]) for c, n in zip(m.connectors, sp)]
        tmaps = [t[n] for n in tp]
        return {"fsp": float(L.fsp(list(zip(smaps[:-1], smaps[1:])), list(zip(tmaps[:-1], tmaps[1:]))))}
    if name == "ft":
        factor = m.paraphraser.encoder(t[ts[-1]])
        student = resize_to(m.translator(s[ss[-1]]), factor.shape[-2:])
        return {"ft": float(L.ft(student, factor))}
    raise KeyError(name)


def init_by_hand(name: str, m, s: dict, t: dict, pair, seed: int) -> float:
    ts = STAGES[pair][0]
    if name == "ft":
        return float(L.paraphraser_reconstruction(m.paraphraser(t[ts[-1]]), t[ts[-1]]))
    if name == "mhgd":
        v_t = [L.svd_compress(t[n], k=1)[:, 0] for n in ts]
        torch.manual_seed(seed)  # the estimator's random head dropout
        total = 0.0
        for i, graph in enumerate(mhgd_graphs(m, v_t)):
            estimate = m.attention["estimators"][i](v_t[i], graph)
            total += float((1 - (estimate * v_t[i + 1]).sum(-1)).mean())
        return total
    return sum(by_hand(name, m, s, t, pair, seed).values())


@pytest.mark.parametrize("name,pair", CASES, ids=[f"{n}-{p[0]}-{p[1]}" for n, p in CASES])
def test_term_equals_pure_loss_on_captured_tensors(name, pair):
    teacher, student = make(*pair)
    s_cap, t_cap = Capture(student, all_taps(student)), Capture(teacher, all_taps(teacher))
    loss_fn = loss_for(name, teacher, student)
    loss_fn.eval()  # BN running statistics, and CRD's memory is not updated by the step
    m = loss_fn.methods[0]
    x, y, idx = batch()
    if m.has_init_stage:
        loss_fn.set_phase("init")
        torch.manual_seed(5)
        out = loss_fn(x, y, idx)
        with torch.no_grad():
            expected = init_by_hand(name, m, s_cap.out, t_cap.out, pair, seed=5)
        assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert expected > 0
        loss_fn.set_phase("main")
    memory = copy.deepcopy(m.memory.state_dict()) if name == "crd" else None
    out = loss_fn(x, y, idx)
    with torch.no_grad():
        if name == "crd":
            m.memory.load_state_dict(memory)  # same negatives (sampler RNG) and Z not fixed yet
            s = m.embed_student(s_cap.out["embedding"])
            t = m.embed_teacher(t_cap.out["embedding"])
            expected = {"crd": float(m.memory(s, t, idx, y))}
        elif name in ("ab", "fsp"):
            expected = {}  # RepDistiller: CE only in the main phase
        else:
            expected = by_hand(name, m, s_cap.out, t_cap.out, pair, 0)
    terms = {k: float(v) for k, v in out.terms.items() if k != "ce"}
    if name == "rkd":
        terms = {"rkd": terms["rkd_distance"] + terms["rkd_angle"]}
    assert terms.keys() == expected.keys()
    for k in expected:
        assert terms[k] == pytest.approx(m.weight * expected[k], rel=1e-4, abs=1e-6), k
        assert expected[k] > 0
    assert float(out.loss.detach()) == pytest.approx(sum(float(v) for v in out.terms.values()), rel=1e-5)


# ---------------------------------------------------------------------------------------- (2) training


def distill_grads_reach(loss_fn: DistillationLoss, student: nn.Module, modules: list[nn.Module], x, y, idx) -> None:
    """With CE weight 0 the gradient comes from the method alone: it must reach the student (its feature
    layers; the classifier may get none) and every parameter of the given heads/connectors."""
    out = loss_fn(x, y, idx)
    out.loss.backward()  # plain backward: also checks MHGD's term (whose engine backward clips it to ∇CE)
    student_grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert student_grads and all(torch.isfinite(g).all() for g in student_grads)
    assert sum(float(g.abs().sum()) for g in student_grads) > 0
    for module in modules:
        for k, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k


@pytest.mark.parametrize("name,pair", CASES, ids=[f"{n}-{p[0]}-{p[1]}" for n, p in CASES])
def test_training_steps(name, pair):
    teacher, student = make(*pair)
    before = snapshot(teacher)
    loss_fn = loss_for(name, teacher, student)
    loss_fn.train()
    assert not teacher.training
    m = loss_fn.methods[0]
    if m.has_init_stage:  # one init step first, as `kdlab distill` does
        loss_fn.set_phase("init")
        optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
        x, y, idx = batch(seed=10)
        out = loss_fn(x, y, idx)
        assert torch.isfinite(out.loss) and float(out.loss.detach()) > 0
        out.loss.backward()
        optimizer.step()
        loss_fn.set_phase("main")
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    student_before = snapshot(student)
    for step in range(3):
        x, y, idx = batch(seed=step)
        optimizer.zero_grad()
        out = loss_fn(x, y, idx, epoch=step + 1)
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.terms.values())
        (out.backward() if out.backward is not None else out.loss.backward())
        optimizer.step()
    assert changed(student, student_before)
    for k, v in snapshot(teacher).items():  # weights and BN running statistics
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in loss_fn.trainable_parameters()}

    # Where the method has a main-phase term, its own gradient reaches the student and the heads/connectors.
    if name in ("ab", "fsp"):
        loss_fn.set_phase("init")  # their distillation happens in the init stage
    trained = {"cc": ["embed_student", "embed_teacher"], "crd": ["embed_student", "embed_teacher"],
               "ft": ["translator"], "ab": ["connectors"], "fsp": ["connectors"], "mhgd": ["connectors"]}
    modules = [getattr(m, k) for k in trained.get(name, [])]
    loss_fn.ce_weight = 0.0
    loss_fn.zero_grad(set_to_none=True)
    distill_grads_reach(loss_fn, student, modules, *batch(seed=7))


# ---------------------------------------------------------------------------------------- (3) init stages


def test_ft_init_trains_only_the_paraphraser_then_freezes_it():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = loss_for("ft", teacher, student)
    m = loss_fn.methods[0]
    loss_fn.train()
    loss_fn.set_phase("init")
    assert {id(p) for p in loss_fn.trainable_parameters()} == {id(p) for p in m.paraphraser.parameters()}
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1, momentum=0.9)
    s0, p0, tr0, t0 = snapshot(student), snapshot(m.paraphraser), snapshot(m.translator), snapshot(teacher)
    for step in range(2):
        optimizer.zero_grad()
        out = loss_fn(*batch(seed=step))
        assert set(out.terms) == {"ft_paraphraser"}
        out.loss.backward()
        optimizer.step()
    assert changed(m.paraphraser, p0)
    assert not changed(student, s0) and not changed(m.translator, tr0) and not changed(teacher, t0, False)

    loss_fn.set_phase("main")
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    p1, s1, tr1 = snapshot(m.paraphraser), snapshot(student), snapshot(m.translator)
    for step in range(2):
        loss_fn.train()  # as the trainer does every epoch: the frozen paraphraser must stay in eval
        optimizer.zero_grad()
        out = loss_fn(*batch(seed=step))
        out.loss.backward()
        optimizer.step()
    assert not m.paraphraser.training and all(not p.requires_grad for p in m.paraphraser.parameters())
    assert not changed(m.paraphraser, p1)  # frozen even though the optimizer was built before the freeze
    assert changed(student, s1) and changed(m.translator, tr1)
    assert not {id(p) for p in m.paraphraser.parameters()} & {id(p) for p in loss_fn.trainable_parameters()}


def test_ft_init_leaves_student_bn_statistics_alone():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = loss_for("ft", teacher, student)
    loss_fn.train()
    loss_fn.set_phase("init")
    before = snapshot(student)
    loss_fn(*batch())
    assert not changed(student, before, params_only=False)


def test_mhgd_init_trains_only_the_attention_network():
    teacher, student = make("resnet20", "mobilenetv2")
    loss_fn = loss_for("mhgd", teacher, student)
    m = loss_fn.methods[0]
    assert m.clip_to_ce and m.has_init_stage
    loss_fn.train()
    loss_fn.set_phase("init")
    assert {id(p) for p in loss_fn.trainable_parameters()} == {id(p) for p in m.attention.parameters()}
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1, momentum=0.9)
    s0, a0, c0 = snapshot(student), snapshot(m.attention), snapshot(m.connectors)
    for step in range(2):
        optimizer.zero_grad()
        out = loss_fn(*batch(seed=step))
        assert set(out.terms) == {"mhgd_attention"}
        out.loss.backward()
        optimizer.step()
    assert changed(m.attention, a0)
    assert not changed(student, s0) and not changed(m.connectors, c0)

    loss_fn.set_phase("main")
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1, momentum=0.9)
    a1, s1 = snapshot(m.attention), snapshot(student)
    for step in range(2):
        loss_fn.train()
        optimizer.zero_grad()
        out = loss_fn(*batch(seed=step), epoch=step + 1)
        out.backward()  # the engine's clipped backward (clip_to_ce)
        optimizer.step()
    assert not changed(m.attention, a1, params_only=False)  # weights and BN statistics frozen
    assert changed(student, s1)


@pytest.mark.parametrize("name,pair", [("ab", ("resnet20", "resnet8")), ("ab", ("resnet20", "mobilenetv2")),
                                       ("fsp", ("resnet18", "resnet8"))])
def test_ab_fsp_init_trains_student_and_main_phase_is_plain_ce(name, pair):
    teacher, student = make(*pair)
    loss_fn = loss_for(name, teacher, student)
    m = loss_fn.methods[0]
    loss_fn.train()
    loss_fn.set_phase("init")
    trainable = {id(p) for p in loss_fn.trainable_parameters()}
    assert {id(p) for p in student.parameters()} <= trainable and {id(p) for p in m.parameters()} <= trainable
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    s0, c0, t0 = snapshot(student), snapshot(m), snapshot(teacher)
    x, y, idx = batch()
    out = loss_fn(x, y, idx)
    assert set(out.terms) == {name}
    out.loss.backward()
    optimizer.step()
    assert changed(student, s0) and not changed(teacher, t0, False)
    assert changed(m, c0) == any(True for _ in m.parameters())

    loss_fn.set_phase("main")
    out = loss_fn(x, y, idx)
    assert set(out.terms) == {"ce"}
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(student(x), y).detach()), rel=1e-5)


def test_ab_official_main_phase_is_kd_at_t3_without_ce():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = loss_for("ab", teacher, student, hp={"main": "kd"})
    assert loss_fn.ce_weight == 0.0 and loss_fn.teacher_logits_needed
    loss_fn.eval()
    x, y, idx = batch()
    out = loss_fn(x, y, idx)
    with torch.no_grad():
        log_ps, log_pt = F.log_softmax(student(x) / 3, 1), F.log_softmax(teacher(x) / 3, 1)
        expected = (log_pt.exp() * (log_pt - log_ps)).sum() / x.shape[0]  # official: no T² factor
    assert float(out.terms["ab_kd"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_connectors_only_where_widths_differ():
    teacher, student = make("resnet20", "mobilenetv2")  # teacher 16/32/64 (+stem 16), student 16/48/160 (+12)
    ab = loss_for("ab", teacher, student).methods[0]
    assert [any(True for _ in c.parameters()) for c in ab.connectors] == [False, True, True]
    fsp = loss_for("fsp", teacher, student).methods[0]
    assert [isinstance(c, nn.Identity) for c in fsp.connectors] == [False, True, False, False]
    teacher, student = make("resnet20", "resnet8")
    assert all(isinstance(c, nn.Identity) for c in loss_for("fsp", teacher, student).methods[0].connectors)


def test_fsp_needs_the_point_before_the_first_stage():
    points = {"stage1": "a", "stage2": "b"}
    assert _flow_points({**points, "stem": "s"}, ["stage1", "stage2"], "student") == ["stem", "stage1", "stage2"]
    assert _flow_points(points, ["stage2"], "teacher") == ["stage1", "stage2"]
    with pytest.raises(KdlabError, match="stem"):
        _flow_points(points, ["stage1", "stage2"], "student")


# ---------------------------------------------------------------------------------------- (4) CRD


def test_crd_bank_updates_the_rows_of_the_batch_indices():
    teacher, student = make("resnet20", "resnet8")
    loss_fn = loss_for("crd", teacher, student)
    memory = loss_fn.methods[0].memory
    assert memory.mode == "bank" and memory.memory_s.shape == (N_TRAIN, 128)
    loss_fn.train()
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    before_s, before_t = memory.memory_s.clone(), memory.memory_t.clone()
    x, y, idx = batch(n=8)
    out = loss_fn(x, y, idx)
    out.loss.backward()
    optimizer.step()
    rows = torch.zeros(N_TRAIN, dtype=torch.bool)
    rows[idx] = True
    for now, before in ((memory.memory_s, before_s), (memory.memory_t, before_t)):
        assert not torch.isclose(now[rows], before[rows]).all(dim=1).any()  # every batch row moved
        assert torch.equal(now[~rows], before[~rows])  # no other row did
        assert torch.allclose(now[rows].norm(dim=1), torch.ones(8))
    with pytest.raises(KdlabError, match="indices"):
        loss_fn(x, y)


def test_crd_needs_labels_in_bank_mode_and_queue_mode_has_constant_memory():
    teacher, student = make("wrn_16_2", "wrn_16_1")
    with pytest.raises(KdlabError, match="train_targets"):
        DistillationLoss(teacher, student, method="crd", input_shape=(3, SIZE, SIZE))
    loss_fn = DistillationLoss(teacher, student, method="crd", input_shape=(3, SIZE, SIZE),
                               hparams={"crd": {"mode": "queue", "num_negatives": 24}})
    memory = loss_fn.methods[0].memory
    sizes = {k: v.shape for k, v in memory.state_dict().items() if torch.is_tensor(v)}
    assert memory.queue_s.shape == (24, 128) and all(s.numel() <= 24 * 128 for s in sizes.values())
    loss_fn.train()
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.01, momentum=0.9)
    for step in range(4):
        x, y, _ = batch(seed=step, n=8)
        optimizer.zero_grad()
        out = loss_fn(x, y)  # no dataset indices needed
        assert torch.isfinite(out.loss) and float(out.terms["crd"]) > 0
        out.loss.backward()
        optimizer.step()
        assert int(memory.queue_ptr) == (8 * (step + 1)) % 24
    assert {k: v.shape for k, v in memory.state_dict().items() if torch.is_tensor(v)} == sizes
    assert (memory.queue_labels >= 0).all()  # filled with the batches' labels


def test_crd_maps_full_split_indices_of_a_fraction():
    teacher, student = make("resnet20", "resnet8")
    m = methods.create("crd", num_negatives=8)
    ctx = BuildContext(student=student, teacher=teacher, student_points={}, teacher_points={},
                       student_shapes={"embedding": torch.Size([64])}, teacher_shapes={"embedding": torch.Size([64])},
                       train_targets=torch.tensor([0, 1, 2, 0, 1]))
    ctx.train_indices = torch.tensor([3, 10, 11, 20, 40])  # positions of those samples in the full split
    m.build(ctx)
    assert m.memory.n_data == 5
    assert m.memory_rows(torch.tensor([20, 3]), 2, torch.device("cpu")).tolist() == [3, 0]
    with pytest.raises(KdlabError, match="not among"):
        m.memory_rows(torch.tensor([4]), 1, torch.device("cpu"))


# ---------------------------------------------------------------------------------------- defaults


def test_registry_defaults_and_hyperparameters():
    expected = {"rkd": 1.0, "sp": 3000.0, "pkt": 30000.0, "cc": 100.0, "mhgd": 1.0, "crd": 0.8, "ab": 1.0,
                "fsp": 1.0, "ft": 500.0}
    for name, weight in expected.items():
        cls = methods.get(name)
        assert methods.create(name).weight == weight and cls.ce_weight == 1.0, name
        assert cls.paper and cls.__doc__ and f"docs/methods.md#{name}" in sys.modules[cls.__module__].__doc__
        assert cls.has_init_stage == (name in INIT_METHODS), name
    assert methods.get("rkd").defaults["distance_weight"] == 25 and methods.get("rkd").defaults["angle_weight"] == 50
    crd = methods.get("crd").defaults
    assert (crd["feat_dim"], crd["num_negatives"], crd["temperature"], crd["momentum"], crd["mode"]) == (
        128, 16384, 0.07, 0.5, "bank")
    assert methods.get("mhgd").clip_to_ce and not methods.get("crd").clip_to_ce
    assert methods.create("ab").hp["init_weight"] == pytest.approx(3e-3)
    assert methods.create("cc", variant="repdistiller").weight == 0.02
    assert methods.create("cc", variant="repdistiller", weight=1).weight == 1.0
    for name, hp in [("cc", {"variant": "torchdistill"}), ("ab", {"main": "fitnet"}), ("crd", {"mode": "ring"})]:
        with pytest.raises(KdlabError, match=list(hp)[0]):
            methods.create(name, **hp)


def test_cc_repdistiller_variant_term():
    teacher, student = make("resnet20", "resnet8")
    cap_s, cap_t = Capture(student, ["embedding"]), Capture(teacher, ["embedding"])
    loss_fn = loss_for("cc", teacher, student, hp={"variant": "repdistiller"})
    loss_fn.eval()
    m = loss_fn.methods[0]
    out = loss_fn(*batch())
    with torch.no_grad():
        delta = (m.embed_student(cap_s.out["embedding"]) - m.embed_teacher(cap_t.out["embedding"])).abs()
        expected = (delta[:-1] * delta[1:]).sum(1).mean()
    assert float(out.terms["cc"]) == pytest.approx(0.02 * float(expected), rel=1e-4)


@pytest.mark.parametrize("hp, message", [({"temperature": 0}, "method.crd.temperature must be > 0"),
                                         ({"momentum": 1.0}, r"method.crd.momentum must be in \[0, 1\)"),
                                         ({"feat_dim": 0}, "method.crd.feat_dim must be >= 1"),
                                         ({"num_negatives": 0}, "method.crd.num_negatives must be >= 1"),
                                         ({"queue_size": -1}, "method.crd.queue_size must be >= 0")])
def test_crd_hyperparameters_are_checked_when_the_method_is_created(hp, message):
    with pytest.raises(KdlabError, match=message):
        methods.create("crd", **hp)
