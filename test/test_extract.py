"""sfnet-extract: bag -> folder dataset (images/, labels/, classes.yaml) -> sfnet-train runs on it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from node_harness import REPO_ROOT

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
        (("--bag", bag, "--image-topic", "/front/image_raw", "--out", tmp_path / "busy"), "exists (folder)"),
        (("--bag", bag, "--image-topic", "/front/image_raw", "--out", tmp_path / "busy", "--overwrite"),
         "never replaced"),
        (("--bag", bag, "--image-topic", "/front/image_raw", "--out", tmp_path / "o3", "--classes",
          tmp_path / "missing.yaml"), "missing.yaml"),
    ]:
        code, _, err = _run(capsys, *args)
        assert code == 2 and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "drive.mcap"]  # nothing half-written
    assert (tmp_path / "busy" / "keep.txt").read_text() == "labelling work"


def test_overwrite_replaces_only_an_untouched_extract(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 3, H, W)
    out = tmp_path / "data"
    args = ("--bag", bag, "--image-topic", "/front/image_raw", "--out", out)
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "exists (folder)" in err
    code, summary, err = _run(capsys, *args, "--every", "3", "--overwrite")  # ours and untouched: replaced
    assert code == 0, err
    assert summary["images"] == 1 and len(list((out / "images").iterdir())) == 1
    # somebody labelled a frame: the folder is theirs now, and never replaced
    (out / "labels" / "0000000001_000000000.png").write_bytes(b"a label drawn by a person")
    code, _, err = _run(capsys, *args, "--overwrite")
    assert code == 2 and "never replaced" in err
    assert (out / "labels" / "0000000001_000000000.png").read_bytes() == b"a label drawn by a person"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "drive.mcap"]


def test_val_fraction_splits_by_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 6, H, W)
    stamps = [stamp_name(s) for s in frame_stamps(6, 10.0)]
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--label-topic",
                              "/front/labels", "--out", tmp_path / "data", "--val-fraction", "0.3")
    assert code == 0, err
    assert summary["splits"] == {"train": 4, "val": 2}
    for folder in ("images", "labels"):
        assert sorted(p.stem for p in (tmp_path / "data" / folder / "train").iterdir()) == stamps[:4]
        assert sorted(p.stem for p in (tmp_path / "data" / folder / "val").iterdir()) == stamps[4:]  # the last 30 %
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--out",
                              tmp_path / "one", "--split", "drive1")
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "one" / "images" / "drive1").iterdir()) == stamps
    assert list((tmp_path / "one" / "labels" / "drive1").iterdir()) == []  # ready for the labelling tool


def test_extract_then_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--val-fraction writes what the custom-data template reads: folder kind, train/val splits."""
    from sfnet_core.cli.train_command import main as train_main

    bag, _, labels = write_synthetic_bag(tmp_path / "drive_sqlite", 5, H, W, storage="sqlite3")
    data = tmp_path / "dataset"
    code, summary, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--label-topic",
                              "/front/labels", "--out", data, "--val-fraction", "0.2", "--classes",
                              Path(__file__).parents[1] / "config" / "classes" / "cityscapes.yaml")
    assert code == 0, err
    assert summary["images"] == 5 and summary["labels"] == 5 and summary["splits"] == {"train": 4, "val": 1}
    label_files = sorted((data / "labels" / "train").iterdir())
    np.testing.assert_array_equal(cv2.imread(str(label_files[2]), cv2.IMREAD_UNCHANGED), labels[2])
    assert [p.stem for p in label_files] == sorted(p.stem for p in (data / "images" / "train").iterdir())

    template = yaml.safe_load((Path(__file__).parents[1] / "training" / "configs" / "custom_template.yaml").read_text())
    recipe = {
        "model": {"name": "sfnet_shufflenetv2", "aux": False},
        "data": {**{k: template["data"][k] for k in ("kind", "train_split", "val_split")},
                 "root": str(data), "classes": str(data / "classes.yaml"),
                 "crop_size": [H, W], "scale_range": [1.0, 1.0], "workers": 0},
        "loss": {"ohem": False},
        "schedule": {"iterations": 2, "batch_size": 2},
        "runtime": {"device": "cpu", "progress": False, "eval_interval": 2, "checkpoint_interval": 1},
    }
    assert (recipe["data"]["kind"], recipe["data"]["train_split"], recipe["data"]["val_split"]) == \
        ("folder", "train", "val")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert train_main(["--config", str(tmp_path / "recipe.yaml"), "--out", str(run), "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert (run / "best.pt").exists()  # validated on the val split


def test_sigterm_mid_run_leaves_no_staging(tmp_path: Path) -> None:
    """SIGTERM while the dataset is being written: exit 143, one line, no hidden staging folder."""
    bag = tmp_path / "long.mcap"
    _repeated_frame_bag(bag, frames=400, height=256, width=512)
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "sfnet_ros.tools.extract", "--bag", str(bag), "--image-topic",
                             "/cam/image_raw", "--out", str(out), "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _terminate_when_staging_appears(proc, tmp_path, ".data.")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["sfnet-extract: terminated (SIGTERM); no output written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mcap"]


def _repeated_frame_bag(path: Path, frames: int, height: int, width: int) -> None:
    """A long bag cheaply: one noisy frame (slow to encode as PNG) under ``frames`` stamps."""
    from sfnet_ros.conversions import numpy_to_image
    from sfnet_ros.tools.bag_io import IMAGE, BagWriter, make_header, ros2_class

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cls = ros2_class(IMAGE)
    with BagWriter(path) as writer:
        for i in range(frames):
            stamp = 1_000_000_000 + i * 50_000_000
            writer.write("/cam/image_raw", stamp, numpy_to_image(image, "rgb8", header=make_header(stamp), msg_cls=cls))


def _terminate_when_staging_appears(proc: subprocess.Popen, folder: Path, prefix: str, timeout: float = 120.0) -> None:
    """SIGTERM ``proc`` as soon as its staging entry (``prefix``...) exists in ``folder`` (polled, bounded)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not any(p.name.startswith(prefix) for p in folder.iterdir()):
        if proc.poll() is not None:
            raise AssertionError(f"the tool ended (exit {proc.returncode}) before it staged anything: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no staging folder appeared")
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def two_drives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Path, list, list]]]:
    """drives/day1/drive.mcap and drives/day2/drive.mcap: other streets, the same header stamps;
    left.mcap: another camera's topic only."""
    d = tmp_path_factory.mktemp("two_drives")
    drives = [write_synthetic_bag(d / "drives" / day / "drive.mcap", 3, 32, 64, seed=seed)
              for day, seed in (("day1", 1), ("day2", 2))]
    write_synthetic_bag(d / "left.mcap", 2, 32, 64, image_topic="/left/image_raw", label_topic=None)
    return d, drives


def test_several_bags_with_the_same_stamps(two_drives: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder of bags: every frame kept under a name of its bag, labels paired within their bag,
    --val-fraction holding out the last bag."""
    d, drives = two_drives
    code, summary, err = _run(capsys, "--bag", d / "drives", "--image-topic", "/front/image_raw", "--label-topic",
                              "/front/labels", "--out", tmp_path / "data", "--val-fraction", "0.5")
    assert code == 0, err
    assert (summary["bags"], summary["images"], summary["labels"], summary["frames_in_bag"]) == (2, 6, 6, 6)
    assert summary["splits"] == {"train": 3, "val": 3}
    stamps = [stamp_name(s) for s in frame_stamps(3, 10.0)]
    for part, tag, (_, images, labels) in zip(("train", "val"), ("day1-drive", "day2-drive"), drives):
        assert sorted(p.name for p in (tmp_path / "data" / "images" / part).iterdir()) == \
            [f"{tag}_{s}.png" for s in stamps]
        assert sorted(p.name for p in (tmp_path / "data" / "labels" / part).iterdir()) == \
            [f"{tag}_{s}.png" for s in stamps]
        for stamp, image, label in zip(stamps, images, labels):
            written = cv2.imread(str(tmp_path / "data" / "images" / part / f"{tag}_{stamp}.png"))
            np.testing.assert_array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), image)
            np.testing.assert_array_equal(
                cv2.imread(str(tmp_path / "data" / "labels" / part / f"{tag}_{stamp}.png"), cv2.IMREAD_UNCHANGED),
                label)
    # the two drives differ frame by frame: a label paired with the other bag's image would show
    assert all(not np.array_equal(a, b) for a, b in zip(drives[0][2], drives[1][2]))


def test_a_bag_without_the_topic_is_an_error_naming_it(two_drives: tuple, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    d, _ = two_drives
    code, _, err = _run(capsys, "--bag", d / "drives" / "*" / "drive.mcap", "--bag", d / "left.mcap",
                        "--image-topic", "/front/image_raw", "--out", tmp_path / "data")
    assert code == 2
    assert err.splitlines() == [f"sfnet-extract: error: {d / 'left.mcap'}: image topic '/front/image_raw' not in "
                                "the bag; topics: /left/image_raw [sensor_msgs/msg/Image, 2 msgs]"]
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder
