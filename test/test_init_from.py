"""Fine-tuning (``model.init_from``): from a 19-class checkpoint to another label set, what loads,
what is re-initialised, what is reported, and how it composes with --resume and pretrained_backbone."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import ConfigError
from sfnet_core.models import build_model
from sfnet_core.training.config import load_train_config
from sfnet_core.training.engine import train
from sfnet_core.training.init_from import class_dependent_keys, init_from_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"fpn_dim": 64}
# A custom table sharing two class names with Cityscapes ("Car" differs in case only).
CUSTOM = ClassTable(("road", "Car", "cone"), ((128, 64, 128), (0, 0, 142), (255, 128, 0)))


def _cityscapes_checkpoint(path: Path, aux: bool = True) -> Path:
    """A 19-class 'Cityscapes' checkpoint with recognisable weights (seeded random)."""
    torch.manual_seed(1)
    model = build_model(MODEL, 19, aux=aux, **OPTIONS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # far from any fresh initialisation
    save_checkpoint(path, model, MODEL, ClassTable.cityscapes(), model_options={"aux": aux, **OPTIONS})
    return path


def _fresh(num_classes: int = 3, aux: bool = True):
    torch.manual_seed(2)
    return build_model(MODEL, num_classes, aux=aux, **OPTIONS)


def test_class_dependent_keys_are_the_classifiers():
    keys = class_dependent_keys(MODEL, 3, True, OPTIONS)
    assert keys and all(k.endswith(("weight", "bias")) for k in keys)
    own = _fresh().state_dict()
    assert all(own[k].shape[0] == 3 for k in keys)
    assert any(k.startswith("aux_heads.") for k in keys) and any(not k.startswith("aux_heads.") for k in keys)
    assert class_dependent_keys(MODEL, 3, False, OPTIONS) == {k for k in keys if not k.startswith("aux_heads.")}


def test_new_label_set_loads_everything_else_and_keeps_shared_class_rows(tmp_path, caplog):
    ck_path = _cityscapes_checkpoint(tmp_path / "city.pt")
    stored = load_checkpoint(ck_path).state_dict
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO", logger="sfnet_core.training.init_from"):
        report = init_from_checkpoint(model, ck_path, MODEL, CUSTOM, True, OPTIONS)
    own = model.state_dict()
    class_keys = class_dependent_keys(MODEL, 3, True, OPTIONS)
    assert set(report.reinitialised) == class_keys
    assert set(report.loaded) == {k for k in own if k not in class_keys and not k.endswith("num_batches_tracked")
                                  } | {k for k in own if k.endswith("num_batches_tracked")}
    assert not report.missing and not report.mismatched and not report.unused
    for key in report.loaded:
        assert torch.equal(own[key], stored[key]), key
    cityscapes = ClassTable.cityscapes().names
    road, car = cityscapes.index("road"), cityscapes.index("car")
    for key in class_keys:
        assert torch.equal(own[key][0], stored[key][road]) and torch.equal(own[key][1], stored[key][car])
        assert torch.equal(own[key][2], before[key][2])  # "cone" is new: fresh initialisation
    assert report.carried_classes == ["road", "Car"]
    text = caplog.text
    assert f"model.init_from {ck_path}: loaded {len(report.loaded)} tensors" in text
    assert "re-initialised for the new class table" in text and "rows carried over by class name: road, Car" in text


def test_options_written_out_equal_to_their_defaults_are_not_differences(tmp_path):
    """sfnet-import writes every option; a recipe names none: the same network, no warning."""
    from sfnet_core.models import variant_options

    torch.manual_seed(0)
    model = build_model(MODEL, 19)
    path = tmp_path / "imported.pt"
    save_checkpoint(path, model, MODEL, ClassTable.cityscapes(), model_options=variant_options(MODEL))
    report = init_from_checkpoint(build_model(MODEL, 19), path, MODEL, ClassTable.cityscapes(), False, {})
    assert report.option_changes == []
    report = init_from_checkpoint(build_model(MODEL, 19, fpn_dim=96), path, MODEL, ClassTable.cityscapes(), False,
                                  {"fpn_dim": 96})
    assert report.option_changes == [f"fpn_dim: checkpoint {variant_options(MODEL)['fpn_dim']}, recipe 96"]


def test_same_class_table_loads_the_classifiers_too(tmp_path):
    ck_path = _cityscapes_checkpoint(tmp_path / "city.pt")
    model = _fresh(19)
    report = init_from_checkpoint(model, ck_path, MODEL, ClassTable.cityscapes(), True, OPTIONS)
    assert not report.reinitialised
    stored = load_checkpoint(ck_path).state_dict
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_what_does_not_fit_is_named_with_the_reason(tmp_path, caplog):
    ck_path = _cityscapes_checkpoint(tmp_path / "city.pt", aux=False)  # e.g. imported without dsn heads
    model = build_model(MODEL, 3, aux=True, fpn_dim=32)                 # another decoder width
    with caplog.at_level("INFO", logger="sfnet_core.training.init_from"):
        report = init_from_checkpoint(model, ck_path, MODEL, CUSTOM, True, {"fpn_dim": 32})
    assert report.loaded and any(k.startswith("backbone.") for k in report.loaded)
    assert any(k.startswith("aux_heads.") for k in report.missing)
    assert any("checkpoint (64" in m and "model (32" in m for m in report.mismatched)
    assert report.option_changes == ["fpn_dim: checkpoint 64, recipe 32"]
    assert "did not fit (shape), freshly initialised" in caplog.text
    assert "not in the checkpoint, freshly initialised: aux_heads." in caplog.text
    assert "model options differ from the checkpoint's: fpn_dim" in caplog.text


def test_files_that_cannot_start_a_run_are_one_clear_error(tmp_path):
    raw = tmp_path / "released_like.pth"  # a bare state dict, as the authors save theirs
    torch.save({"state_dict": {"module.layer0.0.weight": torch.zeros(64, 3, 3, 3)}}, raw)
    with pytest.raises(ConfigError, match=r"model\.init_from: .*released_like\.pth.*sfnet-import"):
        init_from_checkpoint(_fresh(), raw, MODEL, CUSTOM, True, OPTIONS)
    other = tmp_path / "fcn.pt"
    torch.manual_seed(0)
    save_checkpoint(other, build_model("fcn_resnet18", 19), "fcn_resnet18", ClassTable.cityscapes())
    with pytest.raises(ConfigError, match=r"none of its \d+ tensors fits 'sfnet_shufflenetv2'.*'fcn_resnet18'"):
        init_from_checkpoint(_fresh(), other, MODEL, CUSTOM, True, OPTIONS)


def _folder_recipe(tmp_path: Path, **model) -> Path:
    """A 3-class folder dataset (road / Car / cone) and a 2-iteration recipe for it, paths relative."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 1)):
        (data / "images" / split).mkdir(parents=True)
        (data / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(data / "images" / split / f"{i}.png"), rng.integers(0, 255, (64, 96, 3), np.uint8))
            cv2.imwrite(str(data / "labels" / split / f"{i}.png"), rng.integers(0, 3, (64, 96), np.uint8))
    (data / "classes.yaml").write_text(yaml.safe_dump({"classes": [
        {"name": n, "color": list(c)} for n, c in zip(CUSTOM.names, CUSTOM.colors)]}))
    recipe = {
        "model": {"name": MODEL, "aux": True, "options": OPTIONS, **model},
        "data": {"kind": "folder", "root": "data", "crop_size": [64, 96], "scale_range": [1.0, 1.0], "workers": 0},
        "loss": {"ohem": False},
        "schedule": {"iterations": 2, "batch_size": 2},
        "runtime": {"device": "cpu", "progress": False, "eval_interval": 0, "checkpoint_interval": 1,
                    "image_interval": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_training_run_composes_init_from_with_pretrained_backbone_and_resume(tmp_path):
    ck_path = _cityscapes_checkpoint(tmp_path / "city.pt")
    # pretrained_backbone names a file that does not exist: init_from wins, so it is never read
    recipe = _folder_recipe(tmp_path, init_from="city.pt", pretrained_backbone="no_such_imagenet.pth")
    cfg = load_train_config(recipe)
    assert cfg.model.init_from == str(tmp_path / "city.pt")
    train(cfg, tmp_path / "run", max_iters=1)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"model.init_from {ck_path}: loaded" in log and "re-initialised for the new class table" in log
    assert "no_such_imagenet.pth not read: the weights come from model.init_from" in log
    # --resume wins: the run continues from last.pt; the init_from file is not even opened
    ck_path.write_bytes(b"gone")
    train(cfg, tmp_path / "run", resume=True)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"model.init_from {ck_path} not read: --resume continues from" in log
    assert load_checkpoint(tmp_path / "run" / "last.pt").train_state["iteration"] == 2
