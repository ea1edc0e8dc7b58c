"""Checkpoint files: round trip, aux-head tolerance and every refusal, each naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sfnet_core.checkpoint import Checkpoint, checkpoint_digest, load_checkpoint, save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import CheckpointError
from sfnet_core.models import build_model

CLASSES = ClassTable(names=tuple(f"class{i}" for i in range(19)), colors=tuple((i, 2 * i, 3 * i) for i in range(19)))


class Payload:
    """A custom class: pickling an instance into a checkpoint must not be loadable."""

    def __init__(self) -> None:
        self.command = "rm -rf /"


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A real sfnet_resnet18 with aux heads, as the trainer saves it."""
    torch.manual_seed(0)
    return build_model("sfnet_resnet18", 19, aux=True).eval()


@pytest.fixture(scope="module")
def ckpt_path(trained: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sfnet.pt"
    save_checkpoint(
        path, trained, "sfnet_resnet18", CLASSES, model_options={"aux": True},
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        train_state={"epoch": 7, "best_miou": 0.5, "optimizer": {"lr": 0.01, "momentum": torch.ones(3)}},
    )
    return path


def save_edited(data: dict, path: Path) -> Path:
    """Save a checkpoint dict edited on purpose, with a fresh digest (as a deliberate editing tool
    would), so that the validation behind the digest check is what answers."""
    data["digest"] = checkpoint_digest(data)
    torch.save(data, path)
    return path


def test_round_trip(ckpt_path: Path, trained: torch.nn.Module) -> None:
    ck = load_checkpoint(ckpt_path, expected_num_classes=19)
    assert isinstance(ck, Checkpoint)
    assert ck.path == ckpt_path and ck.model_name == "sfnet_resnet18" and ck.num_classes == 19
    assert ck.classes == CLASSES
    assert ck.mean == (0.5, 0.5, 0.5) and ck.std == (0.25, 0.25, 0.25)
    assert ck.train_state["epoch"] == 7 and torch.equal(ck.train_state["optimizer"]["momentum"], torch.ones(3))
    # The file is a plain dict that loads with weights_only=True.
    raw = torch.load(ckpt_path, weights_only=True)
    assert raw["format"] == "sfnet_ros/checkpoint" and raw["version"] == 1
    assert ck.digest == raw["digest"] and raw["digest"]["algorithm"] == "sha256-v1"  # recorded, and checked
    # Saved with aux heads, rebuilt for inference without them: same predictions, in eval mode.
    model = ck.build_model()
    assert not model.training
    assert not any(k.startswith("aux_heads.") for k in model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.equal(model(x), trained(x))
    assert not list(ckpt_path.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_aux_heads_tolerated_both_ways(tmp_path: Path) -> None:
    torch.manual_seed(1)
    plain = build_model("sfnet_resnet18", 19)
    save_checkpoint(tmp_path / "plain.pt", plain, "sfnet_resnet18", CLASSES)
    ck = load_checkpoint(tmp_path / "plain.pt")
    assert ck.mean == (0.485, 0.456, 0.406)  # ImageNet default
    resumed = ck.build_model(aux=True)  # training resumes with fresh aux heads
    assert any(k.startswith("aux_heads.") for k in resumed.state_dict())
    own = plain.state_dict()
    for key, value in resumed.state_dict().items():
        assert key.startswith("aux_heads.") or torch.equal(value, own[key]), key


def test_wrong_architecture_is_refused(tmp_path: Path, ckpt_path: Path) -> None:
    data = torch.load(ckpt_path, weights_only=True)
    data["model"]["name"] = "fcn_resnet18"
    save_edited(data, tmp_path / "fcn.pt")
    with pytest.raises(CheckpointError, match=r"fcn\.pt.*does not match 'fcn_resnet18'"):
        load_checkpoint(tmp_path / "fcn.pt").build_model()


def test_pickled_object_is_refused(tmp_path: Path, ckpt_path: Path) -> None:
    data = torch.load(ckpt_path, weights_only=True)
    data["train_state"] = {"hook": Payload()}
    path = tmp_path / "evil.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: the file contains non-tensor python objects "
                                               r"\(Unsupported global: GLOBAL test_checkpoint\.Payload\): a pickle of "
                                               r"arbitrary objects, which cannot be loaded safely") as caught:
        load_checkpoint(path)
    # never torch's advice to load it anyway
    assert "weights_only" not in str(caught.value) and "trust this class" not in str(caught.value)


def test_pickled_object_in_a_weights_file_is_refused_without_advice(tmp_path: Path, capfd) -> None:
    """The ImageNet / released weight files (sfnet-import, model.pretrained) refuse the same way,
    and nothing of torch's reaches stderr."""
    from sfnet_core.models.pretrained import read_weights_file

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload()}, path)
    with pytest.raises(CheckpointError) as caught:
        read_weights_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the file contains non-tensor python objects (Unsupported global: GLOBAL "
                              "test_checkpoint.Payload): a pickle of arbitrary objects"), message
    assert "weights_only" not in message and "add_safe_globals" not in message and "trust this class" not in message
    assert capfd.readouterr().err == ""


def test_truncated_file(tmp_path: Path, ckpt_path: Path) -> None:
    data = ckpt_path.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pt: not a readable checkpoint \(truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("garbage", [b"this is not a checkpoint" * 10, b"", bytes(range(256)) * 4])
def test_garbage_file(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(garbage)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_class_count_mismatch(ckpt_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"{ckpt_path.name}: num_classes: .*19 classes .*expects 11"):
        load_checkpoint(ckpt_path, expected_num_classes=11)


def test_raw_state_dict_is_not_a_checkpoint(tmp_path: Path, trained: torch.nn.Module) -> None:
    path = tmp_path / "weights.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"weights\.pth: not an sfnet_ros checkpoint .*raw state_dict"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"weights\.pth: not an sfnet_ros checkpoint \(got a list"):
        load_checkpoint(path)


def test_unknown_model_lists_variants(tmp_path: Path, ckpt_path: Path) -> None:
    data = torch.load(ckpt_path, weights_only=True)
    data["model"]["name"] = "sfnet_vgg99"
    save_edited(data, tmp_path / "vgg.pt")
    with pytest.raises(CheckpointError, match=r"vgg\.pt: model\.name: unknown model 'sfnet_vgg99'.*sfnet_resnet18"):
        load_checkpoint(tmp_path / "vgg.pt")


def test_inconsistent_class_table(tmp_path: Path, ckpt_path: Path) -> None:
    data = torch.load(ckpt_path, weights_only=True)
    data["num_classes"] = 18
    save_edited(data, tmp_path / "bad.pt")
    message = r"bad\.pt: classes: the class table has 19 classes but num_classes is 18"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def test_save_refuses_what_load_would_refuse(tmp_path: Path, trained: torch.nn.Module) -> None:
    path = tmp_path / "x.pt"
    with pytest.raises(CheckpointError, match=r"x\.pt: train_state\.best: numpy\.float64"):
        save_checkpoint(path, trained, "sfnet_resnet18", CLASSES, train_state={"best": np.float64(0.5)})
    small = ClassTable(names=("a", "b"), colors=((0, 0, 0), (1, 1, 1)))
    with pytest.raises(CheckpointError, match=r"x\.pt: the model predicts 19 classes but the class table has 2"):
        save_checkpoint(path, trained, "sfnet_resnet18", small)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_non_finite_weights_are_never_written(tmp_path: Path, ckpt_path: Path) -> None:
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model

    model = build_model("sfnet_shufflenetv2", 19)
    target = tmp_path / "model.pt"
    target.write_bytes(b"the last good checkpoint")
    with torch.no_grad():
        model.decoder.classifier.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"model\.pt: state_dict\.decoder\.classifier\.weight holds NaN "
                                               r"or infinity; not written"):
        save_checkpoint(target, model, "sfnet_shufflenetv2", ClassTable.cityscapes())
    model = build_model("sfnet_shufflenetv2", 19)
    state = {"optimizer": {"state": {0: {"momentum_buffer": torch.tensor([1.0, float("inf")])}}}}
    with pytest.raises(CheckpointError, match=r"train_state\.optimizer\.state\.0\.momentum_buffer holds NaN"):
        save_checkpoint(target, model, "sfnet_shufflenetv2", ClassTable.cityscapes(), train_state=state)
    assert target.read_bytes() == b"the last good checkpoint"
