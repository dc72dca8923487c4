"""The distillation objective on small models: frozen teacher, taps, terms, bad input."""

import pytest
import torch
from torch import nn

import kdlab.losses as L
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods.base import Method


class TinyNet(nn.Module):
    """An 'outside' model without a tap table: taps are named by module path."""

    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2),
                                   nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width * 2, classes)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))))


TAPS = {"stage1": "stem", "stage2": "block", "embedding": "pool", "classifier": "fc"}


def make_pair(seed=0):
    torch.manual_seed(seed)
    teacher, student = TinyNet(16), TinyNet(4)
    return teacher, student


def batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_kd_terms_match_pure_loss_and_add_up():
    teacher, student = make_pair()
    loss_fn = DistillationLoss(teacher, student, method="kd")
    x, y = batch()
    loss, terms = loss_fn(x, y)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    assert set(terms) == {"ce", "kd"}
    assert float(terms["kd"]) == pytest.approx(0.9 * float(L.kd(s, t, temperature=4.0)), rel=1e-5)
    assert float(terms["ce"]) == pytest.approx(0.1 * float(nn.functional.cross_entropy(s, y)), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)


def test_teacher_frozen_gradients_reach_student_only():
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(teacher, student, method="kd+srd", input_shape=(1, 8, 8),
                               taps={"student": TAPS, "teacher": TAPS})
    loss_fn.train()
    assert not teacher.training and student.training
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1)
    x, y = batch()
    loss, _ = loss_fn(x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    connector = loss_fn.methods[1].connector
    assert all(p.grad is not None for p in connector.parameters())
    optimizer.step()
    # teacher weights and BN running statistics untouched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the teacher's classifier used by SRD is not among the optimised or saved parameters
    ids = {id(p) for p in loss_fn.trainable_parameters()}
    assert not any(id(p) in ids for p in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in loss_fn.methods.state_dict())


def test_teacher_forward_stops_after_last_tap_when_logits_unused():
    teacher, student = make_pair()
    calls = []
    teacher.fc.register_forward_hook(lambda *a: calls.append("fc"))

    from kdlab.methods import register
    from kdlab.methods.base import Method

    @register
    class _StemOnly(Method):  # a feature-only method (like AT), registered just for this test
        name = "_test_stem_only"
        uses_teacher_logits = False
        teacher_tap_names = ("stage1",)
        student_tap_names = ("stage1",)

        def forward(self, b):
            return {"stem": (b.student["stage1"].mean() - b.teacher["stage1"].mean()) ** 2}

    from kdlab.methods import _REGISTRY

    try:
        loss_fn = DistillationLoss(teacher, student, method="_test_stem_only", input_shape=(1, 8, 8),
                                   taps={"student": TAPS, "teacher": TAPS})
    finally:
        _REGISTRY.pop("_test_stem_only")  # keep the registry as shipped for other tests in this process
    calls.clear()
    x, y = batch()
    loss_fn(x, y)
    assert calls == []  # the teacher's classifier never ran
    loss_fn_kd = DistillationLoss(teacher, student, method="kd")
    loss_fn_kd(x, y)
    assert calls == ["fc"]


def test_dkd_warmup_scales_the_term():
    teacher, student = make_pair()
    loss_fn = DistillationLoss(teacher, student, method="dkd")
    x, y = batch()
    _, t1 = loss_fn(x, y, epoch=1)
    _, t20 = loss_fn(x, y, epoch=20)
    assert float(t1["dkd_nckd"]) == pytest.approx(float(t20["dkd_nckd"]) / 20, rel=1e-5)


def test_hyperparameters_and_bad_input():
    teacher, student = make_pair()
    loss_fn = DistillationLoss(teacher, student, method="kd", temperature=2.0, ce_weight=0.5)
    x, y = batch()
    _, terms = loss_fn(x, y)
    with torch.no_grad():
        expected = 0.9 * L.kd(student(x), teacher(x), temperature=2.0)
    assert float(terms["kd"]) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(KdlabError, match="did you mean 'kd'"):
        DistillationLoss(teacher, student, method="kdd")
    with pytest.raises(KdlabError, match="did you mean 'temperature'"):
        DistillationLoss(teacher, student, method="kd", temprature=2.0)
    with pytest.raises(KdlabError, match="needs a teacher"):
        DistillationLoss(None, student, method="kd")
    with pytest.raises(KdlabError, match="needs stage taps"):
        DistillationLoss(teacher, student, method="srd", input_shape=(1, 8, 8))


def test_teacher_free_method_needs_no_teacher():
    _, student = make_pair()
    loss_fn = DistillationLoss(None, student, method="tfkd_virtual")
    x, y = batch()
    loss, terms = loss_fn(x, y)
    assert set(terms) == {"ce", "tfkd_virtual"} and torch.isfinite(loss)


@pytest.mark.parametrize("method", ["kdsvd", "mhgd"])
@pytest.mark.parametrize("epoch", [1, 3])
def test_clipped_gradient_bound_uses_the_zero_indexed_epoch(method, epoch):
    # KD-SVD / MHGD (authors' TF code): the distillation gradient of each parameter is clipped to
    # ‖∇CE‖·sigmoid(e) with e the 0-indexed epoch, so kdlab's epoch 1 gets sigmoid(0) = 0.5.
    teacher, student = make_pair()
    loss_fn = DistillationLoss(teacher, student, method=method, input_shape=(1, 8, 8), weight=1e8,
                               taps={"student": TAPS, "teacher": TAPS})
    loss_fn.set_phase("main")
    loss_fn.train()
    x, y = batch()
    out = loss_fn(x, y, epoch=epoch)
    out.backward()
    params = [p for p in student.parameters() if p.grad is not None]
    got = [p.grad.clone() for p in params]
    # The CE gradient on its own, from the same train-mode forward (BN uses batch statistics).
    ce = loss_fn.ce_weight * nn.functional.cross_entropy(student(x).float(), y)
    g_ce = torch.autograd.grad(ce, params, allow_unused=True)
    bound = float(torch.sigmoid(torch.tensor(float(epoch - 1))))
    clipped = 0
    for g, gm in zip(got, g_ce, strict=True):
        if gm is None:
            continue
        excess = (g - gm).norm()
        if float(excess) == 0.0:  # no distillation gradient reaches this parameter (the classifier)
            continue
        # weight 1e8 makes every distillation gradient exceed the bound; float32 sums -> rel 1e-4
        assert float(excess) == pytest.approx(bound * float(gm.norm()), rel=1e-4)
        clipped += 1
    assert clipped >= 2


def test_srd_dist_method_defaults_to_raw_logits_and_offers_softmax():
    # The method's term equals the pure loss on the method's own inputs, raw logits unless softmax=true.
    teacher, student = make_pair()
    x, y = batch()
    for hp, softmax in (({}, False), ({"softmax": True, "temperature": 4.0}, True)):
        loss_fn = DistillationLoss(teacher, student, method="srd_dist", input_shape=(1, 8, 8),
                                   taps={"student": TAPS, "teacher": TAPS}, **hp)
        loss_fn.eval()
        method = loss_fn.methods[0]
        seen = []
        method.register_forward_hook(lambda mod, args, out, seen=seen: seen.append(args[0]))
        _, terms = loss_fn(x, y)
        b = seen[0]
        with torch.no_grad():
            pooled = method.transformed(b)
            ref = L.srd_dist(pooled, b.teacher["embedding"], method.cross_logits(pooled), b.teacher_logits,
                             softmax=softmax, temperature=hp.get("temperature", 1.0))
        assert float(terms["srd_dist"]) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(KdlabError, match="softmax=true"):
        DistillationLoss(teacher, student, method="srd_dist", input_shape=(1, 8, 8),
                         taps={"student": TAPS, "teacher": TAPS}, temperature=4.0)


def test_kdsvd_svd_failure_is_one_kdlab_error_naming_the_shapes(monkeypatch):
    # float32 eigh can fail to converge on C x C Gram matrices of tiny maps (a VGG teacher's 512 x 1 x 1
    # stages on 8x8 digits); whether LAPACK fails depends on the build, so the failure is simulated here.
    teacher, student = make_pair()
    loss_fn = DistillationLoss(teacher, student, method="kdsvd", input_shape=(1, 8, 8),
                               taps={"student": TAPS, "teacher": TAPS})

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(L, "kdsvd", fail)
    x, y = batch()
    with pytest.raises(KdlabError, match=r"stage1 \(4, 8, 8\) -> stage1 \(16, 8, 8\).*data.image_size") as info:
        loss_fn(x, y)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- init stages
class _HeadMethod(Method):
    """A two-stage method with no freezing code of its own: DistillationLoss freezes its `frozen_in_main` head."""

    name = "_test_frozen_head"
    uses_teacher_logits = False
    has_init_stage = True
    student_tap_names = ("embedding",)
    teacher_tap_names = ("embedding",)
    frozen_in_main = ("head",)

    def build(self, ctx):
        t, s = int(ctx.teacher_shapes["embedding"][0]), int(ctx.student_shapes["embedding"][0])
        self.head = nn.Sequential(nn.Linear(t, s), nn.BatchNorm1d(s))

    def init_modules(self, student):
        return [self.head]

    def init_forward(self, b):
        return {"_head": self.head(b.teacher["embedding"]).pow(2).mean()}

    def forward(self, b):
        return {"_match": (b.student["embedding"] - self.head(b.teacher["embedding"])).pow(2).mean()}


@pytest.fixture
def head_method():
    from kdlab.methods import _REGISTRY, register

    register(_HeadMethod)
    yield _HeadMethod.name
    _REGISTRY.pop(_HeadMethod.name)  # keep the registry as shipped for other tests in this process


def head_loss(teachers, student):
    return DistillationLoss(teachers, student, method=_HeadMethod.name, input_shape=(1, 8, 8),
                            taps={"student": TAPS, "teacher": TAPS})


def test_frozen_in_main_modules_are_frozen_by_the_objective(head_method):
    t1, student = make_pair()
    t2, _ = make_pair(seed=1)
    loss_fn = head_loss([t1, t2], student)
    heads = [loss_fn.methods[0].head, loss_fn.teacher_methods[0][head_method].head]  # one per teacher
    trainable = lambda: {id(p) for p in loss_fn.trainable_parameters()}  # noqa: E731
    loss_fn.train()
    loss_fn.set_phase("init")
    assert trainable() == {id(p) for h in heads for p in h.parameters()}
    assert all(h.training for h in heads) and not student.training
    loss_fn.set_phase("main")
    loss_fn.train()  # as the trainer does every epoch: frozen heads stay in eval mode
    assert not any(h.training or any(p.requires_grad for p in h.parameters()) for h in heads)
    assert student.training and not trainable() & {id(p) for h in heads for p in h.parameters()}
    loss_fn.set_phase("init")  # back to the init stage: trained again
    assert all(h.training and all(p.requires_grad for p in h.parameters()) for h in heads)


def test_frozen_in_main_modules_freeze_on_the_first_step_without_set_phase(head_method):
    teacher, student = make_pair()
    loss_fn = head_loss(teacher, student)
    head = loss_fn.methods[0].head
    loss_fn.train()
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1, weight_decay=5e-4)  # holds the head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    for seed in (1, 2):
        optimizer.zero_grad()
        loss, terms = loss_fn(*batch(seed))
        loss.backward()
        optimizer.step()
        loss_fn.train()
    assert set(terms) == {"ce", "_match"} and not head.training
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())  # weights and BN statistics


# --------------------------------------------------------------------------------------------- teachers
def test_teacher_recorders_and_their_signatures():
    t1, student = make_pair()
    t2, _ = make_pair(seed=1)
    both = DistillationLoss([t1, t2], student, method="kd+srd", input_shape=(1, 8, 8),
                            taps={"student": TAPS, "teacher": TAPS})
    recorders = both.teacher_recorders
    assert [r.model for r in recorders] == [t1, t2]
    assert [r.signature for r in recorders] == [{"taps": {"embedding": "pool", "classifier": "fc"},
                                                "stop_early": False}] * 2
    recorders.clear()  # a copy: the objective keeps its own
    assert len(both.teacher_recorders) == 2
    stem_only = DistillationLoss(t1, student, method="at", input_shape=(1, 8, 8),
                                 taps={"student": TAPS, "teacher": TAPS})
    assert [r.signature["stop_early"] for r in stem_only.teacher_recorders] == [True]  # AT reads no logits
    assert DistillationLoss(None, student, method="tfkd_virtual").teacher_recorders == []


def test_teacher_mix_plans_mixed_and_per_teacher_methods():
    from kdlab.distillation.teachers import TeacherMix, teacher_list
    from kdlab.methods import parse

    methods = parse("kd+at", {})
    several = TeacherMix(methods, [["logits"], ["stage3"]], [0.5, 0.25, 0.25], {"at": {"weight": 7.0}})
    assert several.mixed == {"kd"} and len(several.copies) == 2
    assert [list(c) for c in several.copies] == [["at"], ["at"]] and several.copies[1]["at"].weight == 7.0
    assert several.instances(methods[0]) == [methods[0]]
    assert several.instances(methods[1])[1:] == [c["at"] for c in several.copies]
    one = TeacherMix(methods, [["logits"], ["stage3"]], [1.0], {})
    assert one.mixed == set() and not len(one.copies) and one.instances(methods[1]) == [methods[1]]
    teacher = nn.Linear(1, 1)
    assert teacher_list(None) == [] and teacher_list(teacher) == [teacher] and teacher_list((teacher,)) == [teacher]
