"""make_optimizer picks the fused SGD/AdamW kernels for CUDA parameters only, and a checkpoint keeps that choice.

Without a GPU the CUDA branch is exercised with parameter stand-ins that say they live on CUDA and an optimizer
class that records its arguments; the real decision code (`fused_on_cuda`, make_optimizer) runs unchanged.
tests/engine/test_gpu_engine.py checks the fused step against the unfused one on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.config import Config
from kdlab.engine import trainer
from kdlab.engine.dot import DOT
from kdlab.engine.trainer import fused_on_cuda, make_optimizer


class OnDevice:
    """A parameter stand-in: only what the decision reads (device, floating point)."""

    def __init__(self, device: str, floating: bool = True):
        self.device = torch.device(device)
        self.floating = floating

    def is_floating_point(self) -> bool:
        return self.floating


class Recording:
    """Stands in for torch.optim.SGD / AdamW: records the keyword arguments make_optimizer passes."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, params, **kwargs):
        Recording.calls.append((type(self).__name__, kwargs))
        self.defaults = kwargs

    def register_load_state_dict_pre_hook(self, hook):
        self.hook = hook


class SGD(Recording):
    pass


class AdamW(Recording):
    pass


def config(kind: str) -> Config:
    c = Config()
    c.optim.optimizer = kind
    return c


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cpu_parameters_are_never_fused(kind) -> None:
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    optimizer = make_optimizer(params, config(kind), 0.1)
    assert isinstance(optimizer, torch.optim.SGD if kind == "sgd" else torch.optim.AdamW)
    assert not optimizer.defaults.get("fused") and not optimizer.param_groups[0]["fused"]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cuda_parameters_take_the_fused_kernels(monkeypatch, kind) -> None:
    monkeypatch.setattr(trainer.torch.optim, "SGD", SGD)
    monkeypatch.setattr(trainer.torch.optim, "AdamW", AdamW)
    Recording.calls = []
    make_optimizer([OnDevice("cuda"), OnDevice("cuda:1")], config(kind), 0.1)
    make_optimizer([OnDevice("cuda"), OnDevice("cpu")], config(kind), 0.1)  # mixed: not fused
    make_optimizer([OnDevice("cuda"), OnDevice("cuda", floating=False)], config(kind), 0.1)
    name = "SGD" if kind == "sgd" else "AdamW"
    assert [(n, kw.get("fused")) for n, kw in Recording.calls] == [(name, True), (name, None), (name, None)]


def test_fused_decision() -> None:
    assert fused_on_cuda([OnDevice("cuda")]) and not fused_on_cuda([])
    assert not fused_on_cuda([OnDevice("cpu")]) and not fused_on_cuda([OnDevice("meta")])
    params = [torch.nn.Parameter(torch.randn(2))]
    assert isinstance(make_optimizer(params, config("dot"), 0.1), DOT)  # DOT has no fused kernel


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_fused_checkpoint_resumes_unfused_on_the_cpu(kind) -> None:
    """A run saved on a GPU has fused=True in its param groups; resumed on the CPU it must step unfused there."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(list(model.parameters()), config(kind), 0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    saved["param_groups"] = [{**g, "fused": True} for g in saved["param_groups"]]  # as written on a GPU
    resumed = make_optimizer(list(model.parameters()), config(kind), 0.1)
    resumed.load_state_dict(saved)
    assert all(g["fused"] is False for g in resumed.param_groups)
    plain = torch.optim.SGD(model.parameters(), lr=0.1) if kind == "sgd" else torch.optim.AdamW(model.parameters())
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["fused"] is True  # what torch does without kdlab's hook
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(5, 4)).sum().backward()
    resumed.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
