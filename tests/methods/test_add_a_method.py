"""Adding a method, as the registry's docstring describes it (kdlab.methods).

(1) A module dropped into the package (here: a directory appended to the package's path) is discovered
by the registry without being listed anywhere, shows up in `list_methods()` and the README's method
table, and trains through `kdlab.DistillationLoss`. (2) A method in the user's own module, outside the
package, is usable by name once imported. (3) The package keeps one registered method per module, named
after it, and a method refuses the hyperparameters its pure loss cannot use when it is created.

The first two tests change the registry; their fixtures give it back exactly as they found it, since
other tests rely on the shipped list of methods.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

import kdlab
from kdlab import methods
from kdlab.errors import KdlabError
from kdlab.methods import catalog
from kdlab.models import create

TOY = "toy_logit_mse"
USER = "user_logit_l1"

# A complete method module, as a contributor would write it (its pure loss would live in kdlab.losses).
TOY_MODULE = '''
"""Toy method: a weighted MSE between student and teacher logits (docs/methods.md#toy_logit_mse)."""

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import DistillBatch, Method


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The pure loss: mean squared difference of the logits (teacher detached)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit_mse: shapes {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    return F.mse_loss(student_logits.float(), teacher_logits.detach().float())


@register
class LogitMSE(Method):
    """weight * MSE(z_s, z_t)."""

    name = "toy_logit_mse"
    paper = "A walkthrough method: weighted MSE of logits"
    defaults = {"weight": 0.5}
    ce_weight = 1.0

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.hp["weight"] < 0:
            raise KdlabError(f"method.toy_logit_mse.weight must be >= 0, got {self.hp['weight']}")

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"toy_logit_mse": logit_mse(batch.student_logits, batch.teacher_logits)}
'''

USER_MODULE = '''
import torch

from kdlab.methods import register
from kdlab.methods.base import Method


@register
class LogitL1(Method):
    name = "user_logit_l1"
    paper = "A user's own method: L1 between logits"
    defaults = {"weight": 2.0}

    def forward(self, batch):
        return {"user_logit_l1": (batch.student_logits - batch.teacher_logits.detach()).abs().mean()}
'''


@pytest.fixture
def registry(monkeypatch):
    """The registry with its shipped methods loaded; on teardown it is exactly as before the test."""
    shipped = methods.list_methods()
    table, loaded = methods._REGISTRY, methods._loaded
    monkeypatch.setattr(methods, "_REGISTRY", dict(table))
    added: list[str] = []
    yield added
    monkeypatch.undo()
    for module in added:
        sys.modules.pop(module, None)
        package, _, leaf = module.rpartition(".")
        if package and hasattr(sys.modules[package], leaf):
            delattr(sys.modules[package], leaf)
    assert methods._REGISTRY is table and methods._loaded is loaded
    assert methods.list_methods() == shipped


def zoo_pair(seed: int = 0):
    torch.manual_seed(seed)
    return create("resnet20", 10, image_size=16), create("resnet8", 10, image_size=16)


def one_step(method: str):
    """One SGD step of `method` on a resnet20 -> resnet8 pair: (terms, student changed, teacher changed)."""
    teacher, student = zoo_pair()
    loss_fn = kdlab.DistillationLoss(teacher, student, method=method, input_shape=(3, 16, 16))
    loss_fn.train()
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    s_before = [p.detach().clone() for p in student.parameters()]
    t_before = [p.detach().clone() for p in teacher.parameters()]
    optimizer.zero_grad()
    loss, terms = loss_fn(x, y)
    loss.backward()
    optimizer.step()
    student_changed = any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters(), strict=True))
    teacher_changed = any(not torch.equal(a, b) for a, b in zip(t_before, teacher.parameters(), strict=True))
    with torch.no_grad():
        teacher.eval()
        logits_t = teacher(x)
    return terms, loss, student_changed, teacher_changed, (x, logits_t)


def test_a_module_in_the_package_is_discovered_listed_and_trains(registry, tmp_path, monkeypatch):
    (tmp_path / f"{TOY}.py").write_text(textwrap.dedent(TOY_MODULE))
    importlib.invalidate_caches()
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "_loaded", False)  # as in a fresh process: the next lookup imports the package
    registry.append(f"kdlab.methods.{TOY}")

    assert TOY in methods.method_modules()
    assert TOY in methods.list_methods()
    assert methods.get(TOY).__module__ == f"kdlab.methods.{TOY}"
    row = next(line for line in catalog.markdown_table().splitlines() if line.startswith(f"| `{TOY}` |"))
    assert "A walkthrough method" in row and "weight=0.5" in row and "ce_weight=1.0" in row
    assert TOY in catalog.text_listing()

    with pytest.raises(KdlabError, match="weight must be >= 0"):
        methods.create(TOY, weight=-1.0)
    with pytest.raises(KdlabError, match="has no hyperparameter 'temperature'"):
        methods.create(TOY, temperature=2.0)

    terms, loss, student_changed, teacher_changed, _ = one_step(TOY)
    assert set(terms) == {"ce", TOY}
    assert torch.isfinite(loss) and float(terms[TOY]) > 0
    assert student_changed and not teacher_changed
    methods.parse(f"kd+{TOY}", {TOY: {"weight": 0.25}})  # combines with shipped methods like any other


def test_a_users_own_module_is_usable_by_name(registry, tmp_path, monkeypatch):
    (tmp_path / "my_distillers.py").write_text(textwrap.dedent(USER_MODULE))
    importlib.invalidate_caches()
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.append("my_distillers")
    importlib.import_module("my_distillers")  # the user's import runs @register

    assert USER in methods.list_methods()
    assert methods.create(USER.upper()).weight == 2.0  # names are case-insensitive, as for shipped methods
    terms, loss, student_changed, teacher_changed, _ = one_step(f"kd+{USER}")
    assert set(terms) == {"ce", "kd", USER}
    assert torch.isfinite(loss) and student_changed and not teacher_changed


def test_one_registered_method_per_module_named_after_it():
    modules = methods.method_modules()
    names = methods.list_methods()
    for name in names:
        cls = methods.get(name)
        assert cls.__module__ == f"kdlab.methods.{name}", f"{name} is registered by {cls.__module__}"
        doc = sys.modules[cls.__module__].__doc__ or ""
        assert f"docs/methods.md#{name}" in doc and "github.com/" in doc, name
    for module in modules:
        registered = [n for n in names if methods.get(n).__module__ == f"kdlab.methods.{module}"]
        assert registered in ([], [module]), module
    # the building blocks register nothing
    assert {"base", "catalog", "connectors", "crd_memory", "stages", "taps"} <= set(modules) - set(names)


def test_temperatures_are_checked_when_the_method_is_created():
    """A pure loss raises ValueError for a temperature <= 0; a user gets the method's one-line KdlabError first."""
    with_temperature = [n for n in methods.list_methods() if "temperature" in methods.get(n).defaults]
    assert {"kd", "lskd", "dkd", "dist", "tfkd_self", "tfkd_virtual", "srd_dist", "ab", "crd"} <= set(with_temperature)
    for name in with_temperature:
        extra = {"softmax": True} if name == "srd_dist" else {}
        for bad in (0.0, -1.0):
            with pytest.raises(KdlabError, match=f"method.{name}.temperature must be > 0"):
                methods.create(name, temperature=bad, **extra)


@pytest.mark.parametrize("name, hparams, message", [
    ("kdsvd", {"k": 0}, "method.kdsvd.k=0 must be >= 1"),
    ("vid", {"init_variance": 1e-6}, "method.vid.init_variance=1e-06 must exceed"),
    ("tfkd_virtual", {"correct_prob": 1.5}, "method.tfkd_virtual.correct_prob=1.5 must be a probability"),
])
def test_hyperparameters_a_loss_refuses_are_refused_by_the_method(name, hparams, message):
    with pytest.raises(KdlabError, match=message):
        methods.create(name, **hparams)


def test_shape_dependent_settings_are_refused_at_build():
    teacher, student = zoo_pair()
    with pytest.raises(KdlabError, match=r"method.kdsvd.k=80 exceeds the \d+ singular vectors"):
        kdlab.DistillationLoss(teacher, student, method="kdsvd", hparams={"kdsvd": {"k": 80}},
                               input_shape=(3, 16, 16))
    hparams = {"tfkd_virtual": {"calibrate": 0.05}}  # below chance for 10 classes
    with pytest.raises(KdlabError, match="between chance"):
        kdlab.DistillationLoss(None, student, method="tfkd_virtual", hparams=hparams, num_classes=10)
    loss_fn = kdlab.DistillationLoss(None, student, method="tfkd_virtual", hparams=hparams)  # classes unknown yet
    with pytest.raises(KdlabError, match="between chance"):
        loss_fn(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
