"""sfnet-fleet-eval / sfnet-fleet-merge on a generated fleet: 4 labelled drives x 2 cameras, one
drive without labels and one broken bag, through the real console scripts.

The reference for every total is computed here independently: each labelled frame read from the
bags, segmented by ``Segmenter`` and added to one ``ConfusionMatrix`` (everything as one set).
The A/B models are constant classifiers (every pixel "road", or every pixel "sky"), so the
expected IoUs follow from the ground truth's areas alone: the winner is known before the run.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
H, W, FRAMES = 64, 128, 4
CAMERAS = ("front", "left")


def _constant_checkpoint(path: Path, class_name: str) -> Path:
    """A checkpoint whose every pixel is ``class_name`` (classifier weights 0, its bias 10)."""
    import torch

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model

    classes = ClassTable.from_yaml(Path(__file__).resolve().parents[1] / "config" / "classes" / "cityscapes.yaml")
    torch.manual_seed(0)
    model = build_model("sfnet_shufflenetv2", classes.num_classes)
    with torch.no_grad():
        model.decoder.classifier.weight.zero_()
        model.decoder.classifier.bias.zero_()
        model.decoder.classifier.bias[classes.index(class_name)] = 10.0
    save_checkpoint(path, model, "sfnet_shufflenetv2", classes)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from node_harness import write_test_checkpoint

    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    d = tmp_path_factory.mktemp("fleet")
    for i in range(1, 5):
        write_synthetic_bag(d / "drives" / f"drive{i}.mcap", FRAMES, H, W, seed=10 * i, cameras=CAMERAS)
    write_synthetic_bag(d / "unlabelled" / "drive5.mcap", FRAMES, H, W, seed=50, cameras=CAMERAS, label_topic=None)
    (d / "broken").mkdir()
    (d / "broken" / "drive6.mcap").write_bytes(b"\x89MCAP0\r\n but then nothing a reader can use")
    (d / "bags.txt").write_text("# the drive without labels\nunlabelled/drive5.mcap\n")
    write_test_checkpoint(d / "model.pt", model_name="sfnet_shufflenetv2")
    _constant_checkpoint(d / "road.pt", "road")
    _constant_checkpoint(d / "sky.pt", "sky")
    return d


def _run(args: list[str], cwd: Path, tool: str = "sfnet-fleet-eval", timeout: float = 300,
         ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _reference(fleet: Path, checkpoint: str, bags: list[str]) -> np.ndarray:
    """Every labelled frame of ``bags`` as one set: one ConfusionMatrix, (C, C + 1)."""
    from sfnet_core.evaluation.metrics import ConfusionMatrix
    from sfnet_core.inference import Segmenter
    from sfnet_ros.tools.bag_io import BagReader, decode_image, decode_labels, required_stamp

    segmenter = Segmenter.from_checkpoint(fleet / checkpoint, device="cpu", precision="fp32", warmup=False,
                                          backend="torch")
    matrix = ConfusionMatrix(19)
    for bag in bags:
        images, labels = {}, {}
        with BagReader(fleet / bag) as reader:
            for topic, msgtype, _, _, msg in reader.decoded_cdr_messages():
                key = (topic.split("/")[1], required_stamp(msg, topic, msgtype))
                if topic.endswith("image_raw"):
                    images[key] = decode_image(msg, msgtype)
                else:
                    labels[key] = decode_labels(msg, msgtype, topic)
        for key, image in images.items():
            matrix.update(segmenter.segment([image])[0].labels, labels[key])
    return matrix.counts.numpy()


def _confusion(summary: dict) -> np.ndarray:
    return np.array(summary["confusion"], np.int64)


LABELLED = [f"drives/drive{i}.mcap" for i in range(1, 5)]
COMMON = ["--cameras", "front,left", "--threads", "1", "--no-progress", "--backend", "torch"]


@pytest.fixture(scope="module")
def whole_run(fleet: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """The fleet through a folder, a list file and a glob, on 2 workers, with a broken bag in it."""
    proc = _run(["--bag", "drives", "--bag-list", "bags.txt", "--bag", "broken/*.mcap", "--checkpoint", "model.pt",
                 "--out", "whole", "--workers", "2", *COMMON], fleet)
    summary = json.loads((fleet / "whole" / "summary.json").read_text()) if (fleet / "whole").is_dir() else {}
    return proc, summary


def test_totals_are_exactly_every_frame_as_one_set(fleet: Path, whole_run: tuple) -> None:
    proc, summary = whole_run
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3: a bag failed, the others are in the report
    assert "Traceback" not in proc.stderr
    assert [f["bag"] for f in summary["failed"]] == ["drive6.mcap"] and summary["failed"][0]["reason"]
    assert "drive6.mcap" in proc.stderr
    reference = _reference(fleet, "model.pt", LABELLED)
    assert np.array_equal(_confusion(summary), reference[:, :19])
    assert summary["overall"]["frames"] == 5 * 2 * FRAMES and summary["overall"]["labelled_frames"] == 4 * 2 * FRAMES
    from sfnet_core.evaluation.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(19)
    matrix.counts += __import__("torch").from_numpy(reference)
    expected = matrix.report([c["name"] for c in summary["classes"]])
    assert summary["overall"]["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    for name, iou in expected["per_class"].items():
        got = summary["overall"]["per_class_iou"][name]
        assert (got is None) == (iou is None or iou != iou) and (got is None or got == pytest.approx(iou, abs=1e-6))
    # groups: every bag x camera, every bag, every camera; frames add up
    kinds = {k: [g for g in summary["groups"] if g["kind"] == k] for k in ("bag_camera", "bag", "camera")}
    assert len(kinds["bag_camera"]) == 10 and len(kinds["bag"]) == 5 and len(kinds["camera"]) == 2
    assert sum(g["frames"] for g in kinds["camera"]) == 40
    unlabelled = [g for g in kinds["bag"] if g["bag"] == "drive5.mcap"][0]
    assert unlabelled["labelled_frames"] == 0 and unlabelled["miou"] is None and unlabelled["uncertainty"] is not None
    ranked = [f["uncertainty"] for f in summary["uncertain_frames"]]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == 40
    rows = list(csv.DictReader((fleet / "whole" / "frames.csv").open()))
    assert len(rows) == 40 and sum(r["labelled"] == "1" for r in rows) == 32
    assert summary["worst_frames"] and all(f["strip_png"] for f in summary["worst_frames"])
    html = (fleet / "whole" / "report.html").read_text()
    assert "drive6.mcap" in html and "<script src" not in html
    assert "| drive1.mcap |" in proc.stdout  # the Markdown summary, for CI logs
    assert len(list((fleet / "whole" / "partials").glob("*.npz"))) == 5
    assert not (fleet / ".whole.partial").exists()  # complete: the resume state is gone


def test_a_killed_run_resumes_without_redoing_finished_bags(fleet: Path, whole_run: tuple) -> None:
    args = ["--bag", "drives", "--bag-list", "bags.txt", "--checkpoint", "model.pt", "--out", "resumed",
            "--workers", "1", "--batch-size", "1", *COMMON]
    proc = subprocess.Popen([str(BIN / "sfnet-fleet-eval"), *args], cwd=fleet, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    partials = fleet / ".resumed.partial"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not list(partials.glob("*.npz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and not (fleet / "resumed").exists()
    kept = list(partials.glob("*.npz"))
    assert 1 <= len(kept) < 5, kept
    assert not [p for p in fleet.rglob("*") if p.name.endswith(".tmp")]
    again = _run(args, fleet)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((fleet / "resumed" / "summary.json").read_text())
    assert summary["speed"]["reused_bags"] == len(kept)
    assert np.array_equal(_confusion(summary), _confusion(whole_run[1]))
    assert not partials.exists()
    # an interrupted run with other settings leaves results the next complete run supersedes
    stale = fleet / ".resumed_again.partial"
    stale.mkdir()
    (stale / f"{kept[0].name.split('-')[0]}-0123456789abcdef.npz").write_bytes(b"other settings")
    assert _run([*args, "--out", "resumed_again"], fleet).returncode == 0 and not stale.exists()


def test_ab_comparison_finds_the_known_winner_and_gates(fleet: Path) -> None:
    from sfnet_ros.tools.bag_io import BagReader, decode_labels

    area = np.zeros(256, np.int64)
    for bag in LABELLED:
        with BagReader(fleet / bag) as reader:
            for topic, msgtype, _, _, msg in reader.decoded_cdr_messages([f"/{c}/labels" for c in CAMERAS]):
                area += np.bincount(decode_labels(msg, msgtype, topic).ravel(), minlength=256)
    valid = area[:19].sum()
    present = int((area[:19] > 0).sum())
    road, sky = area[0] / valid, area[10] / valid  # a constant classifier's IoU is its class's area share
    proc = _run(["--bag", "drives", "--checkpoint", "sky.pt", "--baseline", "road.pt", "--out", "ab",
                 "--gate-classes", "road", "--max-drop", "1", *COMMON], fleet)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the candidate (sky) loses road entirely
    summary = json.loads((fleet / "ab" / "summary.json").read_text())
    compare = summary["compare"]
    assert compare["gate"] == {"classes": ["road"], "max_drop": 0.01, "failed": ["road"], "passed": False}
    assert compare["delta_per_class"]["road"]["value"] == pytest.approx(-road, abs=1e-6)
    assert compare["delta_per_class"]["sky"]["value"] == pytest.approx(sky, abs=1e-6)
    delta = compare["delta_miou"]
    assert delta["value"] == pytest.approx((sky - road) / present, abs=1e-6)
    winner_sign = np.sign(sky - road)
    assert np.sign(delta["low"]) == np.sign(delta["high"]) == winner_sign  # the interval excludes 0
    assert len(compare["disagreements"]) == 8 and compare["disagreements"][0]["disagree_fraction"] == 1.0
    assert "Gate: **FAILED**" in proc.stdout
    # the same results as a gate on sky: passes (merge re-gates without evaluating again)
    merged = _run(["ab", "--out", "ab_sky", "--gate-classes", "sky", "--max-drop", "1", "--resample", "drives"],
                  fleet, "sfnet-fleet-merge")
    assert merged.returncode == 0, merged.stderr[-3000:]
    by_drives = json.loads((fleet / "ab_sky" / "summary.json").read_text())["compare"]
    assert by_drives["gate"]["passed"] is True and by_drives["resampled"] == "drives"
    assert by_drives["delta_miou"]["value"] == delta["value"]  # the same point value, another interval
    assert by_drives["delta_miou"]["high"] - by_drives["delta_miou"]["low"] > 0


def test_merging_partial_results_equals_one_run(fleet: Path, whole_run: tuple) -> None:
    parts = sorted((fleet / "whole" / "partials").glob("*.npz"))
    for i, part in enumerate(parts):
        folder = fleet / f"machine{i % 2}"
        folder.mkdir(exist_ok=True)
        (folder / part.name).write_bytes(part.read_bytes())
    proc = _run(["machine0", "machine1", "whole", "--out", "merged"], fleet, "sfnet-fleet-merge")
    assert proc.returncode == 3, proc.stderr[-3000:]  # the broken bag of "whole" is still listed
    assert proc.stderr.count("counted once") == 5  # "whole" repeats every bag: never counted twice
    summary = json.loads((fleet / "merged" / "summary.json").read_text())
    assert np.array_equal(_confusion(summary), _confusion(whole_run[1]))
    assert summary["overall"] == whole_run[1]["overall"]


def test_label_ids_mapped_by_the_class_tables_id_map(fleet: Path) -> None:
    """A bag whose labels are Cityscapes label ids (not train ids): --label-classes with the
    class table's id_map gives exactly the numbers of the train-id bag; without it, exit 2."""
    from node_harness import write_label_id_bag

    write_label_id_bag(fleet / LABELLED[0], fleet / "label_ids.mcap")
    args = ["--bag", "label_ids.mcap", "--checkpoint", "model.pt", *COMMON]
    mapped = _run([*args, "--out", "label_ids", "--label-classes",
                   str(Path(__file__).resolve().parents[1] / "config" / "classes" / "cityscapes.yaml")], fleet)
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    summary = json.loads((fleet / "label_ids" / "summary.json").read_text())
    assert np.array_equal(_confusion(summary), _reference(fleet, "model.pt", LABELLED[:1])[:, :19])
    unmapped = _run([*args, "--out", "label_ids_raw"], fleet)
    assert unmapped.returncode == 2 and "give --label-classes" in unmapped.stderr, unmapped.stderr[-2000:]


def test_ray_tasks_give_the_same_totals(fleet: Path) -> None:
    pytest.importorskip("ray")
    proc = _run(["--bag", "drives", "--checkpoint", "model.pt", "--out", "on_ray", "--ray", "local", *COMMON],
                fleet, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((fleet / "on_ray" / "summary.json").read_text())
    assert summary["speed"]["executor"] == "ray"
    assert np.array_equal(_confusion(summary), _reference(fleet, "model.pt", LABELLED)[:, :19])


def test_numpy_iou_is_confusion_matrix_compute() -> None:
    import torch

    from sfnet_core.evaluation.metrics import ConfusionMatrix
    from sfnet_ros.tools.fleet.results import iou_per_class, mean_iou

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(5, 6)).astype(np.int64)
    counts[2] = 0  # a class absent from the labels
    counts[:, 2] = 0  # ... and from the predictions: no IoU
    matrix = ConfusionMatrix(5)
    matrix.counts = torch.from_numpy(counts)
    computed = matrix.compute()
    np.testing.assert_allclose(iou_per_class(counts), computed.iou, equal_nan=True)
    assert float(mean_iou(counts)) == pytest.approx(computed.miou)


def test_sources_resolve_folders_globs_lists_and_cameras(tmp_path: Path) -> None:
    from sfnet_ros.tools.bag_io import BagError
    from sfnet_ros.tools.fleet.sources import (
        camera_from_pair,
        cameras_from_names,
        check_cameras,
        display_name,
        resolve_bags,
    )

    for rel in ("a/x.mcap", "a/deep/y.db3", "b/x.mcap", "b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "rosbag2").mkdir()
    (tmp_path / "rosbag2" / "metadata.yaml").write_text("")
    (tmp_path / "list.txt").write_text("b/x.mcap  # again\nrosbag2\n")
    bags = resolve_bags([str(tmp_path / "a"), str(tmp_path / "*/x.mcap")], [str(tmp_path / "list.txt")])
    assert [b.relative_to(tmp_path).as_posix() for b in bags] == ["a/x.mcap", "a/deep/y.db3", "b/x.mcap", "rosbag2"]
    assert [display_name(b, bags) for b in bags] == ["a/x.mcap", "y.db3", "b/x.mcap", "rosbag2"]
    for bad, message in (([str(tmp_path / "none.mcap")], "no such file"), ([str(tmp_path / "*.zip")], "matches no"),
                         ([str(tmp_path / "b" / "notes.txt")], "is not a bag")):
        with pytest.raises(BagError, match=message):
            resolve_bags(bad)
    front = camera_from_pair("/front/image_raw/compressed:/front/labels")
    assert (front.name, front.label_topic, front.label_required) == ("front", "/front/labels", True)
    named = cameras_from_names(["front", "left"], "image", None)
    assert [c.image_topic for c in named] == ["/front/image", "/left/image"]
    with pytest.raises(BagError, match="given twice"):
        check_cameras([front, camera_from_pair("/front/image_raw")])
    with pytest.raises(BagError, match="not a ROS topic"):
        camera_from_pair("/front//image")
