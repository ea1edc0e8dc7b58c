"""sfnet-bag-eval on real bags (MCAP, sqlite3, ROS 1; raw and compressed) against offline Segmenter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sfnet_core.checkpoint import save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.evaluation.metrics import ConfusionMatrix
from sfnet_core.inference import Segmenter
from sfnet_core.models import build_model
from sfnet_ros.conversions import rgb_to_compressed
from sfnet_ros.tools import bag_eval
from sfnet_ros.tools.bag_io import COMPRESSED, IMAGE, BagReader, BagWriter, decode_labels, make_header, ros2_class
from sfnet_ros.tools.synthetic_bag import frame_stamps, write_synthetic_bag

H, W, N, BATCH = 64, 128, 5, 2  # 5 frames in batches of 2: exercises the short last batch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model("sfnet_shufflenetv2", 19), "sfnet_shufflenetv2", ClassTable.cityscapes())
    return path


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    code = bag_eval.main(["--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    report = json.loads(captured.out) if code == 0 else None
    return code, report, captured.err


@pytest.mark.parametrize("storage,name,compressed", [
    ("mcap", "drive", False), ("sqlite3", "drive_sqlite", True), ("ros1", "drive.bag", False),
])
def test_eval_matches_offline_segmenter(tmp_path: Path, capsys: pytest.CaptureFixture, checkpoint: Path,
                                        storage: str, name: str, compressed: bool) -> None:
    bag, images, labels = write_synthetic_bag(tmp_path / name, N, H, W, seed=1, compressed=compressed,
                                              storage=storage)
    out = tmp_path / "seg.mcap"
    code, report, err = _run(capsys, "--bag", bag, "--image-topic", "/front/image_raw", "--label-topic",
                             "/front/labels", "--checkpoint", checkpoint, "--out", out, "--batch-size", BATCH,
                             "--mask-classes", "road,car")
    assert code == 0, err
    assert report["frames"] == N and report["matched"] == N
    assert report["unmatched_images"] == 0 and report["unmatched_labels"] == 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    assert report["fps"] > 0 and report["latency_ms"]["p50"] > 0

    # offline reference: same checkpoint, same batches
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False)
    expected = [r.labels for i in range(0, N, BATCH) for r in segmenter.segment(images[i:i + BATCH])]
    matrix = ConfusionMatrix(19, ignore_index=255)
    for pred, label in zip(expected, labels):
        matrix.update(pred, label)
    metrics = matrix.compute()
    assert report["miou"] == pytest.approx(float(metrics.miou), abs=1e-6)
    assert set(report["per_class"]) == set(ClassTable.cityscapes().names)

    # the output bag: inputs + labels/color/masks with the input headers
    with BagReader(out) as reader:
        counts = {name: info.count for name, info in reader.topics.items()}
        assert counts == {
            "/front/image_raw": N, "/front/labels": N, "/front/segmentation/labels": N,
            "/front/segmentation/color": N, "/front/segmentation/mask/road": N,
            "/front/segmentation/mask/car": N,
        }
        assert reader.topics["/front/image_raw"].msgtype == (COMPRESSED if compressed else IMAGE)
        seg = list(reader.messages(["/front/segmentation/labels"]))
        assert [m.stamp for m in seg] == frame_stamps(N, 10.0)
        assert all(m.msg.header.frame_id == "front_camera" and m.msg.encoding == "mono8" for m in seg)
        for m, want in zip(seg, expected):
            np.testing.assert_array_equal(decode_labels(m.msg, m.msgtype), want)
        color = next(reader.messages(["/front/segmentation/color"])).msg
        assert (color.encoding, color.height, color.width) == ("rgb8", H, W)
        road = [decode_labels(m.msg, m.msgtype) for m in reader.messages(["/front/segmentation/mask/road"])]
        np.testing.assert_array_equal(road[0], np.where(expected[0] == 0, 255, 0).astype(np.uint8))


def test_existing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture, checkpoint: Path) -> None:
    """An existing --out is refused without --overwrite; with it, a previous bag is replaced, but a
    folder that is not a bag never is (the 81-file data set of issue 9 stays)."""
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 1, H, W)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"somebody's frame")
    base = ("--bag", bag, "--image-topic", "/front/image_raw", "--checkpoint", checkpoint)
    assert "exists (folder)" in _error(capsys, *base, "--out", data)
    assert "never replaced" in _error(capsys, *base, "--out", data, "--overwrite")
    assert "is the input" in _error(capsys, *base, "--out", bag, "--overwrite")
    assert sorted(p.name for p in data.iterdir()) == ["0.png", "1.png", "2.png"]
    out = tmp_path / "seg"  # a rosbag2 folder
    assert _run(capsys, *base, "--out", out)[0] == 0
    assert "exists (folder)" in _error(capsys, *base, "--out", out)
    code, report, err = _run(capsys, *base, "--out", out, "--overwrite", "--mask-classes", "road")
    assert code == 0, err
    assert "/front/segmentation/mask/road" in report["out_topics"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "drive.mcap", "seg"]


def test_sigterm_mid_run_leaves_no_staging(tmp_path: Path, checkpoint: Path) -> None:
    """SIGTERM while the output bag is being written: exit 143, one line, no staging folder left."""
    import subprocess
    import sys

    from node_harness import REPO_ROOT
    from test_extract import _repeated_frame_bag, _terminate_when_staging_appears

    bag = tmp_path / "long.mcap"
    _repeated_frame_bag(bag, frames=300, height=H, width=W)
    proc = subprocess.Popen([sys.executable, "-m", "sfnet_ros.tools.bag_eval", "--bag", str(bag), "--image-topic",
                             "/cam/image_raw", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "seg.mcap"),
                             "--batch-size", "1", "--threads", "1", "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _terminate_when_staging_appears(proc, tmp_path, ".seg.mcap.")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["sfnet-bag-eval: terminated (SIGTERM); no output written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mcap"]


def test_compressed_topic_namespace_and_no_labels(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  checkpoint: Path) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "c.mcap", 2, H, W, compressed=True, label_topic=None,
                                    image_topic="/rear/image_raw/compressed")
    out = tmp_path / "out_dir"
    code, report, err = _run(capsys, "--bag", bag, "--image-topic", "/rear/image_raw/compressed",
                             "--checkpoint", checkpoint, "--out", out)
    assert code == 0, err
    assert "miou" not in report and report["frames"] == 2
    assert (out / "metadata.yaml").exists() and (out / "out_dir.mcap").exists()
    with BagReader(out) as reader:
        assert set(reader.topics) == {"/rear/image_raw/compressed", "/rear/segmentation/labels",
                                      "/rear/segmentation/color"}


def _error(capsys: pytest.CaptureFixture, *args: object) -> str:
    code, _, err = _run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfnet-bag-eval: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_clear_errors_and_no_partial_output(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            checkpoint: Path) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "good.mcap", 2, H, W)
    out = tmp_path / "never.mcap"
    common = ("--checkpoint", checkpoint, "--out", out)
    assert "no such bag" in _error(capsys, "--bag", tmp_path / "missing.mcap", "--image-topic", "/x", *common)
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not a bag at all" * 10)
    assert "cannot read bag" in _error(capsys, "--bag", garbage, "--image-topic", "/x", *common)
    message = _error(capsys, "--bag", bag, "--image-topic", "/nope", *common)
    assert "'/nope' not in the bag" in message and "/front/image_raw" in message and "/front/labels" in message

    odd = tmp_path / "odd.mcap"
    with BagWriter(odd) as writer:
        writer.write("/chatter", 1, ros2_class("std_msgs/msg/String")(data="hello"))
        writer.add_topic("/silent/image_raw", IMAGE)
        # two good frames, then one whose JPEG bytes are garbage: fails after outputs were written
        for i in range(3):
            msg = rgb_to_compressed(np.zeros((H, W, 3), np.uint8), header=make_header(10 + i),
                                    msg_cls=ros2_class(COMPRESSED))
            if i == 2:
                msg.data = np.frombuffer(b"garbage", np.uint8).copy()
            writer.write("/bad/image_raw/compressed", 10 + i, msg)
    assert "has type std_msgs/msg/String" in _error(capsys, "--bag", odd, "--image-topic", "/chatter", *common)
    assert "has no messages" in _error(capsys, "--bag", odd, "--image-topic", "/silent/image_raw", *common)
    assert "/bad/image_raw/compressed" in _error(capsys, "--bag", odd, "--image-topic", "/bad/image_raw/compressed",
                                                 "--batch-size", "1", *common)
    assert "label topic '/chatter'" in _error(capsys, "--bag", bag, "--image-topic", "/front/image_raw",
                                              "--label-topic", "/chatter", *common)

    assert "missing.pt" in _error(capsys, "--bag", bag, "--image-topic", "/front/image_raw",
                                  "--checkpoint", tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert "corrupt.pt" in _error(capsys, "--bag", bag, "--image-topic", "/front/image_raw", *common[:1],
                                  corrupt, "--out", out)
    assert "unknown class name 'sky_lantern'" in _error(capsys, "--bag", bag, "--image-topic", "/front/image_raw",
                                                        *common, "--mask-classes", "sky_lantern")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "garbage.mcap", "good.mcap", "odd.mcap"]


def test_strips_show_a_time_range_without_foxglove(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   checkpoint: Path) -> None:
    """--strips DIR: input | labels | overlay PNGs for the frames of a time range (10 Hz drive:
    0.1-0.3 s = frames 1..3), every frame still evaluated; the folder follows the output rules."""
    import cv2

    from sfnet_core.viz import colorize

    bag, images, _ = write_synthetic_bag(tmp_path / "drive.mcap", N, H, W, seed=4)
    strips = tmp_path / "strips"
    args = ["--bag", bag, "--image-topic", "/front/image_raw", "--checkpoint", checkpoint, "--batch-size", BATCH,
            "--strips", strips, "--strip-range", "0.1", "0.3"]
    code, report, err = _run(capsys, *args)
    assert code == 0, err
    assert report["frames"] == N and report["strips"] == {"folder": str(strips), "count": 3}
    names = sorted(p.name for p in strips.iterdir() if not p.name.startswith("."))
    assert [n.split("_")[0] for n in names] == ["000001", "000002", "000003"], names
    strip = cv2.imread(str(strips / names[0]))[..., ::-1]  # RGB
    labels = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False).segment(images[1]).labels
    palette = ClassTable.cityscapes().palette()
    assert strip.shape == (strip.shape[0], 3 * W, 3) and strip.shape[0] > H  # three panels under captions
    assert (strip[-H:, :W] == images[1]).all()
    assert (strip[-H:, W:2 * W] == colorize(labels, palette)).mean() > 0.999
    # a range without frames is an error and writes nothing; an existing folder is refused
    code, _, err = _run(capsys, *args[:-3], "--strips", tmp_path / "none", "--strip-range", "5", "6")
    assert code == 2 and "--strips: no frame between 5 s and 6 s" in err and not (tmp_path / "none").exists()
    code, _, err = _run(capsys, *args)
    assert code == 2 and "exists" in err
    (strips / "my_notes.txt").write_text("frame 2: the kerb is wrong")
    code, _, err = _run(capsys, *args, "--overwrite")
    assert code == 2 and "my_notes.txt" in err and (strips / "my_notes.txt").exists()
