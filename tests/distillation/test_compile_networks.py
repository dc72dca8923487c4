"""--compile for distillation and mutual learning (DistillationLoss/MutualObjective.compile_networks): the tapped
forwards run through torch.compile (dynamo with its 'eager' backend here: the tracing, hooks included, without
inductor's minute of code generation) and give the eager step's loss, terms and gradients."""

import pytest
import torch
import torch._dynamo
from torch import nn

import kdlab
from kdlab.distillation.mutual import MutualObjective


class Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.stage1(self.stem(x)))))


TAPS = {"student": {"stage1": "stage1", "embedding": "flatten"}, "teacher": {"stage1": "stage1",
                                                                          "embedding": "flatten"}}


def eager_backend(model):
    return torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break fails the test


def step(objective, x, y):
    out = objective(x, y)
    params = list(objective.trainable_parameters()) if hasattr(objective, "trainable_parameters") else \
        [p for p in objective.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, params)
    return out, grads


@pytest.mark.parametrize("method", ["kd", "at+rkd"])
def test_compiled_tapped_step_equals_the_eager_step(method):
    torch._dynamo.reset()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 5
    results = []
    for compiled in (False, True):
        loss_fn = kdlab.DistillationLoss(Net(1).eval(), Net(2), method=method, taps=TAPS, input_shape=(1, 8, 8))
        if compiled:
            loss_fn.compile_networks(eager_backend)
        results.append(step(loss_fn, x, y))
    (eager, g_eager), (comp, g_comp) = results
    assert eager.terms.keys() == comp.terms.keys()
    for name in eager.terms:
        torch.testing.assert_close(comp.terms[name], eager.terms[name])
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_cohort_step_equals_the_eager_step():
    torch._dynamo.reset()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 5
    results = []
    for compiled in (False, True):
        objective = MutualObjective([Net(1), Net(2)], ["a", "b"])
        if compiled:
            objective.compile_networks(eager_backend)
        results.append(step(objective, x, y))
    (eager, g_eager), (comp, g_comp) = results
    torch.testing.assert_close(comp.loss, eager.loss)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b)
    # evaluation and checkpoints keep the plain modules
    assert all(type(m) is Net for m in objective.students)
