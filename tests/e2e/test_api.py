"""The Python API on user objects: DistillationLoss in a custom loop, kdlab.distill on own loaders."""

import json

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlab


class OwnNet(nn.Module):
    """A user model outside the zoo (no tap table)."""

    def __init__(self, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.features(x))


def digits_loaders():
    train, test = kdlab.data.load("digits", train=True), kdlab.data.load("digits", train=False)

    def loader(ds, shuffle):
        x = ds.images.float() / 255.0
        return DataLoader(TensorDataset(x, ds.targets), batch_size=64, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(0))

    return loader(train, True), loader(test, False)


def test_distillation_loss_in_a_custom_loop_with_module_path_taps():
    torch.manual_seed(0)
    teacher, student = OwnNet(16), OwnNet(8)
    taps = {"student": {"stage1": "features.2", "stage2": "features.4"},
            "teacher": {"stage1": "features.2", "stage2": "features.4"}}
    loss_fn = kdlab.DistillationLoss(teacher, student, method="kd+at", taps=taps, input_shape=(1, 8, 8))
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.05)
    train, _ = digits_loaders()
    images, targets = next(iter(train))
    loss, terms = loss_fn(images, targets)
    assert set(terms) == {"ce", "kd", "at"} and torch.isfinite(loss)
    loss.backward()
    optimizer.step()


def test_kdlab_distill_on_own_objects(tmp_path):
    torch.manual_seed(0)
    teacher, student = OwnNet(16), OwnNet(8)
    train, test = digits_loaders()
    summary = kdlab.distill(teacher=teacher, student=student, train_loader=train, test_loader=test, method="dkd",
                            epochs=2, out=tmp_path / "run", num_classes=10)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "train_loss_dkd_nckd" in records[0] and summary["best_top1"] > 10.0  # better than chance


def test_kdlab_train_from_a_dict(tmp_path):
    summary = kdlab.train({"model": "resnet8", "data": {"name": "digits", "fraction": 0.3},
                           "optim": {"epochs": 1}, "out": str(tmp_path / "t")})
    assert summary["epochs"] == 1 and (tmp_path / "t" / "best.pt").exists()


def test_teacher_mix_is_checked_where_it_enters(tmp_path):
    import pytest

    from kdlab.errors import KdlabError

    with pytest.raises(KdlabError, match="3 weights for 2 teachers"):  # config: its teachers are counted
        kdlab.distill({"teachers": ["a.pt", "b.pt"], "teacher_mix": [1, 1, 1], "method": "kd", "model": "resnet8",
                       "out": str(tmp_path / "c")})
    assert not (tmp_path / "c").exists()
    train, test = digits_loaders()
    with pytest.raises(KdlabError, match="3 weights for 2 teachers"):  # objects: DistillationLoss counts them
        kdlab.distill(teacher=[OwnNet(4), OwnNet(4)], student=OwnNet(4), train_loader=train, test_loader=test,
                      epochs=1, out=tmp_path / "o", num_classes=10, teacher_mix=[1, 1, 1])
