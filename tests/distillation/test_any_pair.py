"""Every method on cross-architecture pairs (the cells published KD tables leave empty): builds its
connectors from probed shapes, runs its init stage (if any) and a main-phase step, and trains the student
without touching the teacher. A method that cannot read a pair (CAT-KD and SDD need a `final_map`, which class-token
ViTs lack; DeiT needs a student with a distillation token; OD a teacher whose stages end in BN) must refuse it with
the one-line error listed in `expected_refusal`, and no other method may refuse."""

import pytest
import torch

from kdlab import models
from kdlab.distillation.loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.methods import list_methods

PAIRS = [("wrn_40_4", "mobilenetv2_w1"), ("resnet18", "mobilenetv2_w1"), ("resnet32x4", "shufflenetv2"),
         ("vgg13", "mobilenetv2"), ("tv:resnet34", "tv:resnet18"),
         ("resnet20", "vit_tiny_cifar"), ("vit_tiny_cifar", "resnet8"), ("resnet20", "deit_tiny_cifar")]
CLASS_TOKEN = {"vit_tiny_cifar", "deit_tiny_cifar"}  # no final_map: the embedding is the class token
DISTILLED = {"deit_tiny_cifar"}  # students with DeiT's distillation token and head
# The inputs' normalisation, for methods that augment in pixel space (MLKD's strong view): CIFAR-100's.
NORMALIZATION = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def expected_refusal(method: str, teacher: str, student: str) -> str | None:
    """What the one-line refusal of `method` on this pair must say, or None where it must train."""
    if method == "deit" and student not in DISTILLED:
        return "distillation token"
    if method in ("catkd", "sdd") and CLASS_TOKEN & {teacher, student}:
        return "final_map"
    if method == "od" and teacher in CLASS_TOKEN:
        return "BatchNorm2d"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_every_method_runs_on_cross_architecture_pair(teacher_name, student_name):
    size = 32 if not teacher_name.startswith("tv:") else 64
    torch.manual_seed(0)
    teacher = models.create(teacher_name, 10, image_size=size).eval()
    student = models.create(student_name, 10, image_size=size)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(4, 3, size, size)
    y = torch.tensor([0, 1, 2, 3])
    failures = []
    for name in list_methods():
        refusal = expected_refusal(name, teacher_name, student_name)
        if refusal is not None:
            try:
                DistillationLoss(teacher, student, method=name, input_shape=(3, size, size),
                                 normalization=NORMALIZATION).remove_hooks()
                failures.append(f"{name}: trained, but should refuse with '{refusal}'")
            except KdlabError as exc:
                if refusal not in str(exc) or "\n" in str(exc):
                    failures.append(f"{name}: refused with '{exc}', expected one line naming '{refusal}'")
            continue
        try:
            loss_fn = DistillationLoss(teacher, student, method=name, input_shape=(3, size, size),
                                       train_targets=torch.arange(8) % 10, train_indices=torch.arange(8),
                                       normalization=NORMALIZATION)
            loss_fn.train()
            phases = ["init", "main"] if loss_fn.init_methods() else ["main"]
            for phase in phases:
                loss_fn.set_phase(phase)
                params = list(loss_fn.trainable_parameters())
                out = loss_fn(x, y, torch.arange(4), epoch=1)
                assert torch.isfinite(out.loss), f"{name} {phase}: loss {out.loss}"
                if out.backward is not None:
                    out.backward()
                else:
                    out.loss.backward()
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"{name} {phase}: no grad"
                for p in params:
                    p.grad = None
            loss_fn.remove_hooks()
        except Exception as exc:  # collect all, to report every failing method at once
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
