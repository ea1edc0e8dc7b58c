"""sfnet-extract: bag -> folder dataset (images/, labels/, classes.yaml) -> sfnet-train runs on it."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from sfnet_core.data.classes import ClassTable
from sfnet_ros.tools import extract
from sfnet_ros.tools.bag_io import stamp_name
from sfnet_ros.tools.synthetic_bag import frame_stamps, write_synthetic_bag

H, W = 64, 128


def _run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, dict | None, str]:
    code = extract.main(["--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_extract_every_and_rate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, images, _ = write_synthetic_bag(tmp_path / "drive.bag", 6, H, W, storage="ros1", compressed=True)
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--out",
                              tmp_path / "every2", "--every", "2")
    assert code == 0, err
    stamps = frame_stamps(6, 10.0)
    names = sorted(p.name for p in (tmp_path / "every2" / "images").iterdir())
    assert names == [f"{stamp_name(s)}.png" for s in stamps[::2]]
    assert summary["images"] == 3 and summary["labels"] == 0
    assert list((tmp_path / "every2" / "labels").iterdir()) == []  # ready for a labelling tool
    first = cv2.cvtColor(cv2.imread(str(tmp_path / "every2" / "images" / names[0])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(first, images[0])  # PNG in, PNG out: lossless
    table = ClassTable.from_yaml(tmp_path / "every2" / "classes.yaml")
    assert table.names == ClassTable.cityscapes().names and table.id_map is None

    # --rate 4 Hz on a 10 Hz bag (0..500 ms): kept frames are >= 250 ms apart -> 0 ms and 300 ms
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--out",
                              tmp_path / "rate", "--rate", "4")
    assert code == 0, err
    kept = sorted(p.stem for p in (tmp_path / "rate" / "images").iterdir())
    assert kept == [stamp_name(s) for s in (stamps[0], stamps[3])]


def test_extract_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 2, H, W)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("labelling work")
    for args, expected in [
        (("--bag", tmp_path / "none.mcap", "--image-topic", "/x", "--out", tmp_path / "o1"), "no such bag"),
        (("--bag", bag, "--image-topic", "/nope", "--out", tmp_path / "o2"), "/front/image_raw"),
        (("--bag", bag, "--image-topic", "/front/image_raw", "--out", tmp_path / "busy"), "not an empty folder"),
        (("--bag", bag, "--image-topic", "/front/image_raw", "--out", tmp_path / "o3", "--classes",
          tmp_path / "missing.yaml"), "missing.yaml"),
    ]:
        code, _, err = _run(capsys, *args)
        assert code == 2 and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "drive.mcap"]  # nothing half-written
    assert (tmp_path / "busy" / "keep.txt").read_text() == "labelling work"


def test_extract_then_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sfnet_core.cli.train import main as train_main

    bag, _, labels = write_synthetic_bag(tmp_path / "drive_sqlite", 4, H, W, storage="sqlite3")
    data = tmp_path / "dataset"
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--label-topic",
                              "/front/labels", "--out", data, "--classes", Path(__file__).parents[1] / "config"
                              / "classes" / "cityscapes.yaml")
    assert code == 0, err
    assert summary["images"] == 4 and summary["labels"] == 4
    label_files = sorted((data / "labels").iterdir())
    np.testing.assert_array_equal(cv2.imread(str(label_files[2]), cv2.IMREAD_UNCHANGED), labels[2])
    assert [p.stem for p in label_files] == sorted(p.stem for p in (data / "images").iterdir())

    recipe = {
        "model": {"name": "sfnet_shufflenetv2", "aux": False},
        "data": {"kind": "folder", "root": str(data), "train_split": None, "val_split": None,
                 "crop_size": [H, W], "scale_range": [1.0, 1.0], "workers": 0},
        "loss": {"ohem": False},
        "schedule": {"iterations": 2, "batch_size": 2},
        "runtime": {"device": "cpu", "progress": False, "eval_interval": 0, "checkpoint_interval": 1},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert train_main(["--config", str(tmp_path / "recipe.yaml"), "--out", str(run), "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert any(run.glob("*.pt"))
