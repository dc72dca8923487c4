"""Adding a model, as docs/architecture.md ("Adding a model") describes it.

(1) A zoo model: an nn.Module built from (num_classes, in_channels, image_size) that declares its symbolic
taps in `self.tap_points`, plus one `_Spec` entry in `kdlab.models.ZOO`; it is then listed, created by name
and distilled with a feature method, whose connector is built from the probed tap shapes. (2) A user's own
nn.Module that declares nothing: feature methods read it through taps given as module paths.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdlab
from kdlab import models
from kdlab.errors import KdlabError


class TinyNet(nn.Module):
    """Two conv stages and a linear classifier; the taps name the modules whose outputs they are."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2 if image_size > 4 else 1, padding=1),
                                    nn.BatchNorm2d(16), nn.ReLU())
        self.pool = models.FlatAdaptiveAvgPool2d()
        self.classifier = nn.Linear(16, num_classes)
        self.tap_points = {"stem": "stem", "stage1": "stage1", "stage2": "stage2", "embedding": "pool",
                           "classifier": "classifier"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stage2(self.stage1(self.stem(x)))))


@pytest.fixture
def tinynet_in_zoo(monkeypatch):
    spec = models._Spec("tiny", "TinyNet: two conv stages (a walkthrough model)", TinyNet)
    monkeypatch.setitem(models.ZOO, "tinynet", spec)  # given back after the test
    return "tinynet"


def _step(loss_fn: kdlab.DistillationLoss, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    optimizer = torch.optim.SGD(list(loss_fn.trainable_parameters()), lr=0.1)
    out = loss_fn(images, targets)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return {name: float(value) for name, value in out.terms.items()}


def _changed(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in module.named_parameters())


def test_a_zoo_entry_is_listed_created_by_name_and_distilled_with_a_feature_method(tinynet_in_zoo):
    assert tinynet_in_zoo in models.list_models(include_torchvision=False)
    assert models.model_info(tinynet_in_zoo)["family"] == "tiny"
    student = models.create(tinynet_in_zoo, num_classes=10, in_channels=1, image_size=8)
    assert isinstance(student, TinyNet) and models.tap_points(student)["stage2"] == "stage2"
    teacher = models.create("resnet8", num_classes=10, in_channels=1, image_size=8)
    # FitNet hints from the deepest stage: a connector from 16 student channels to resnet8's 64.
    loss_fn = kdlab.DistillationLoss(teacher, student, method="fitnet", input_shape=(1, 8, 8))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    terms = _step(loss_fn, torch.rand(6, 1, 8, 8), torch.arange(6))
    assert set(terms) == {"ce", "fitnet"} and all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert _changed(student, before)


def test_a_users_own_module_is_read_through_taps_given_as_module_paths():
    student = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                            models.FlatAdaptiveAvgPool2d(), nn.Linear(16, 10))
    teacher = models.create("resnet8", num_classes=10, in_channels=1, image_size=8)
    taps = {"student": {"stage1": "1", "stage2": "3", "embedding": "4"}}
    loss_fn = kdlab.DistillationLoss(teacher, student, method="at", taps=taps, input_shape=(1, 8, 8))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    terms = _step(loss_fn, torch.rand(6, 1, 8, 8), torch.arange(6))
    assert set(terms) == {"ce", "at"} and terms["at"] > 0
    assert _changed(student, before)


def test_a_users_module_without_taps_gets_a_one_line_error_from_a_feature_method():
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    teacher = models.create("resnet8", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(KdlabError) as err:
        kdlab.DistillationLoss(teacher, student, method="at", input_shape=(1, 8, 8))
    assert "\n" not in str(err.value) and "taps" in str(err.value)
