"""Starting a model from pretrained weights: `kdlab train --weights`, `kdlab distill --student-weights`,
`weights=` in a config. A classifier for another number of classes is replaced (fine-tuning on new classes);
everything else must load exactly, or the run stops with one line."""

import pytest
import torch
import yaml

from kdlab import models
from kdlab.cli import main
from kdlab.errors import KdlabError

FAST = ["--data", "digits", "--batch-size", "128", "data.fraction=0.3", "--threads", "1", "--quiet"]


def _same(a: dict, b: dict, skip: tuple[str, ...] = ()) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(skip))


def test_a_state_dict_for_other_classes_loads_all_but_a_new_classifier(tmp_path):
    source = models.create("resnet8", 10, in_channels=1, image_size=8)
    torch.save(source.state_dict(), tmp_path / "ten.pt")
    torch.manual_seed(3)
    fresh = models.create("resnet8", 2, in_channels=1, image_size=8)
    torch.manual_seed(3)
    tuned = models.create("resnet8", 2, in_channels=1, image_size=8, weights=tmp_path / "ten.pt", new_head=True)
    assert _same(tuned.state_dict(), source.state_dict(), skip=("classifier.",))
    assert _same(tuned.state_dict(), fresh.state_dict(), skip=tuple(k for k in fresh.state_dict()
                                                                     if not k.startswith("classifier.")))
    assert "new classifier 'classifier' for 2 classes" in tuned.kdlab_weights_note
    with pytest.raises(KdlabError, match="shape mismatches"):  # without new_head the head must fit too
        models.create("resnet8", 2, in_channels=1, image_size=8, weights=tmp_path / "ten.pt")


def test_torchvision_imagenet_weights_fine_tune_on_ten_classes(tmp_path):
    imagenet = models.create("tv:resnet18", 1000)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pt")
    tuned = models.create("tv:resnet18", 10, weights=tmp_path / "r18.pt", new_head=True)
    assert tuned.fc.out_features == 10
    assert _same(tuned.state_dict(), imagenet.state_dict(), skip=("fc.",))


def test_weights_of_another_architecture_are_one_line(tmp_path):
    torch.save(models.create("resnet20", 10, in_channels=1, image_size=8).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(KdlabError) as err:
        models.create("resnet8", 10, in_channels=1, image_size=8, weights=tmp_path / "r20.pt", new_head=True)
    assert "\n" not in str(err.value) and "does not fit model 'resnet8'" in str(err.value)


def test_train_and_distill_start_from_a_kdlab_checkpoint(tmp_path, capsys):
    teacher = tmp_path / "t"
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--out", str(teacher), *FAST]) == 0
    trained = torch.load(teacher / "best.pt", weights_only=True)["model"]
    # one epoch at a negligible LR from the teacher's weights keeps them (nearly) as they were
    tuned = tmp_path / "tuned"
    assert main(["distill", "--teacher", str(teacher / "best.pt"), "--student", "resnet8", "--method", "kd",
                 "--student-weights", str(teacher / "best.pt"), "--epochs", "1", "--lr", "1e-9",
                 "--out", str(tuned), *FAST]) == 0
    assert yaml.safe_load((tuned / "config.yaml").read_text())["weights"] == str(teacher / "best.pt")
    student = torch.load(tuned / "last.pt", weights_only=True)["model"]
    conv = "stem.0.weight" if "stem.0.weight" in trained else next(k for k in trained if k.endswith("weight"))
    torch.testing.assert_close(student[conv], trained[conv], rtol=0, atol=1e-6)
    code = main(["mutual", "--models", "resnet8,resnet8", "--epochs", "1", "--out", str(tmp_path / "m"),
                 f"weights={teacher / 'best.pt'}", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "from scratch" in err
