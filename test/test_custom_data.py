"""docs/custom-data.md, the custom-data walkthrough, runs exactly as written.

The page's fenced blocks are taken in order, in one folder holding the repository's
``training/`` and ``config/`` (as the page asks) and, in place of the download the page starts
from, a file in the released checkpoint format with random weights under the same name
(``sfnet_r18_cityscapes.pth``, as ``test/released_reference.py`` builds it):

* a ``bash`` block runs with bash (``doc_commands.run_block``: venv scripts first on PATH, the
  first failing command fails the test);
* a ``bash`` block whose command is ``sfnet_node ...`` is the node: its line runs as written (by
  bash, in that folder) as a real process the test holds (``node_harness.NodeProcess``), waited
  for until it is active; it stays up while the next blocks run (the page's "second terminal"),
  and the test checks what it published: labels of the new class count, the new class table;
* a ``bash`` block whose command is ``ros2 launch ...`` cannot run here (no launch): its arguments
  go through the launch file's own logic (``sfnet_ros.launch_support.camera_plan``) and must be
  arguments the launch file declares, and its checkpoint must be the file the walkthrough wrote;
* a ``yaml`` block headed ``# FILE`` is the reader writing FILE: a new file is written as shown;
  an existing one (the copied template) gets the block's keys set, everything else kept.

Then the results are checked: the classifier really changed size (19 -> 7 outputs), the log says
what ``init_from`` did, the mIoU reports and the export's verification exist, the output bag
holds the new masks. The walkthrough's wall time and mIoU are printed (``-s`` shows them).
"""
from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from doc_commands import (
    check_launch_command,
    commands,
    doc_environment,
    fenced_blocks,
    run_block,
    write_released_stand_in,
)
from node_harness import REPO_ROOT, NodeProcess, RosClient, image_array, stamp_ns_of, wait_until

DOC = REPO_ROOT / "docs" / "custom-data.md"
RELEASED_FILE = "sfnet_r18_cityscapes.pth"
BLOCK_TIMEOUT_S = 600  # generous: the machine may be shared; the budget is the whole walkthrough's time
ACTIVE_TIMEOUT_S = 180


def deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def write_yaml_block(body: str, folder: Path) -> Path:
    """The reader's edit: ``# FILE`` on the first line names the file (see the module docstring)."""
    match = re.match(r"#\s*([\w./-]+\.yaml)\b", body)
    assert match, f"a yaml block of {DOC.name} does not name its file on its first line:\n{body}"
    path = folder / match.group(1)
    if path.exists():
        data = yaml.safe_load(path.read_text())
        deep_update(data, yaml.safe_load(body))
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(body)
    return path


class DocNode(NodeProcess):
    """The page's ``sfnet_node`` line run by bash as written, in the walkthrough's folder (so
    ``$PWD`` and ``config/sfnet.yaml`` mean what they mean to the reader), in the reader's
    environment (no launch file here, so no Fast DDS profile either)."""

    def __init__(self, line: str, folder: Path, env: dict[str, str], log_dir: Path) -> None:
        words = shlex.split(line)
        namespace = next((w.split(":=", 1)[1] for w in words if w.startswith("__ns:=")), None)
        super().__init__(env, log_dir, namespace=namespace)
        self.command = ["bash", "-c", f"cd {shlex.quote(str(folder))} && exec {line}"]
        self.env = dict(env)
        self.remaps = dict(w.split(":=", 1) for w, prev in zip(words[1:], words) if prev == "-r")


def best_effort_qos(depth: int = 50) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)


def latched_qos() -> Any:
    from node_harness import reliable_qos

    return reliable_qos(depth=1, transient_local=True)


def segmented_labels(bag: Path, topic: str) -> dict[int, np.ndarray]:
    """stamp -> labels of ``topic`` in a bag written by sfnet-bag-eval."""
    from sfnet_ros.tools.bag_io import BagReader, decode_labels

    with BagReader(bag) as reader:
        return {m.stamp: decode_labels(m.msg, m.msgtype, topic) for m in reader.messages([topic])}


def test_walkthrough_runs_as_written(tmp_path: Path, ros_domain: dict[str, str]) -> None:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.data.classes import ClassTable

    folder = tmp_path / "work"
    folder.mkdir()
    for name in ("training", "config"):
        (folder / name).symlink_to(REPO_ROOT / name)
    write_released_stand_in(folder / RELEASED_FILE)
    env = doc_environment(ros_domain, OMP_NUM_THREADS="1")

    blocks = fenced_blocks(DOC.read_text(encoding="utf-8"))
    kinds = [language for language, _ in blocks]
    assert kinds.count("bash") >= 8 and kinds.count("yaml") == 2
    run: list[str] = []
    node: DocNode | None = None
    ros: RosClient | None = None
    labels = classes = None
    launch_remaps = None
    timings: list[tuple[str, float]] = []  # (first command of the block, seconds)
    start = time.monotonic()
    try:
        for language, body in blocks:
            if language == "yaml":
                write_yaml_block(body, folder)
                continue
            if language != "bash":
                continue
            lines = commands(body)
            run += lines
            block_start = time.monotonic()
            if lines[0].startswith("ros2 launch"):
                assert len(lines) == 1, body
                launch_remaps = check_launch_command(lines[0], folder)
            elif lines[0].startswith("sfnet_node"):
                assert len(lines) == 1 and node is None, body
                node = DocNode(lines[0], folder, env, tmp_path)
                node.start()
                node.wait_for_log("active:", timeout=ACTIVE_TIMEOUT_S)
                ros = RosClient()
                out = f"{node.fqn.rsplit('/', 1)[0]}/segmentation/"
                labels = ros.collect(Image, out + "labels", best_effort_qos())
                classes = ros.collect(String, out + "classes", latched_qos())
                classes.wait_for()  # matched with the node's endpoints before any frame is played
                ros.wait_for_publishers(out + "labels")
            else:
                run_block(body, folder, env, BLOCK_TIMEOUT_S)
            timings.append((" ".join(lines[0].split()[:3 if lines[0].startswith("python -m") else 1]),
                            time.monotonic() - block_start))
        assert node is not None and labels is not None, "the page starts the node"
        # Labels from the played drive (best effort, one-deep input queue: the node may skip
        # frames while busy, never all of them).
        wait_until(lambda: labels.messages, 60, "labels from the node")
        node_labels = {stamp_ns_of(m): image_array(m) for m in labels.messages}
        table = json.loads(classes.messages[0].data)
        # what the page says the node logs once the model is loaded
        assert "active: /front/image_raw -> /front/segmentation/labels" in node.log()
        assert node.stop() == 0, node.log()
        elapsed = time.monotonic() - start
    finally:
        if ros is not None:
            ros.close()
        if node is not None:
            node.stop()

    expected = ClassTable.from_yaml(folder / "my_classes.yaml")
    assert expected.num_classes == 7
    # The classifier really changed size, and the log says what init_from did.
    imported = load_checkpoint(folder / "weights" / "sfnet_r18.pt")
    best = load_checkpoint(folder / "runs" / "my_run" / "best.pt")
    assert imported.num_classes == 19 and best.num_classes == 7
    assert best.state_dict["decoder.classifier.weight"].shape[0] == 7
    assert best.classes.names == expected.names
    log = (folder / "runs" / "my_run" / "train.log").read_text()
    assert "re-initialised for the new class table: decoder.classifier.weight, decoder.classifier.bias; " \
           "rows carried over by class name: road, sidewalk, sky, person" in log
    assert re.search(r"model\.init_from \S+/weights/sfnet_r18\.pt: loaded 219 tensors", log), log[:2000]
    # Evaluation on the validation split and on the unseen drive, in the new class table.
    val = json.loads((folder / "runs" / "my_run" / "val.json").read_text())
    drive2 = json.loads((folder / "runs" / "my_run" / "drive2.json").read_text())
    assert val["images"] == 10 and drive2["images"] == 16
    assert list(val["per_class"]) == list(expected.names) == list(drive2["per_class"])
    assert val["miou"] > 0.4, val  # it learnt (0.580 measured; a model that did not learn: < 0.1)
    assert (folder / "runs" / "my_run" / "model.onnx").stat().st_size > 1_000_000
    # The offline run over the bag and the node: seven classes, the same labels.
    offline = segmented_labels(folder / "drive2_segmented.mcap", "/front/segmentation/labels")
    assert len(offline) == 16
    assert segmented_labels(folder / "drive2_segmented.mcap", "/front/segmentation/mask/vehicle")
    assert [c["name"] for c in table["classes"]] == list(expected.names)
    assert node_labels and set(node_labels) <= set(offline)
    for stamp, array in node_labels.items():
        assert array.max() < 7
        # the node and sfnet-bag-eval run the same checkpoint (batch 1 vs 4): argmax agrees
        assert (array == offline[stamp]).mean() > 0.98
    # The launch line feeds the node's input from the topic the walkthrough's node used.
    assert launch_remaps is not None and launch_remaps["image"] == node.remaps["image"]
    assert any(line.startswith("sfnet-export") and "--verify" in line for line in run)
    # Step 10: the 4 most uncertain frames of the unseen drive, drafted in the new class table, to
    # CVAT and Label Studio and back
    ranked = (folder / "to_label" / "selection.csv").read_text().splitlines()
    assert len(ranked) == 5 and ranked[0].startswith("rank,file,bag")
    assert len(list((folder / "to_label" / "labels").glob("*.png"))) == 4
    assert ClassTable.from_yaml(folder / "to_label" / "classes.yaml").names == expected.names
    assert "vehicle:0,0,142::" in (folder / "to_label_cvat" / "labelmap.txt").read_text()
    assert len(json.loads((folder / "to_label_ls" / "tasks.json").read_text())) == 4
    # Step 11: the labelled frames merged into the training set in the new table, the model
    # fine-tuned on both, the two compared on a drive neither saw
    merged = folder / "my_data7"
    assert ClassTable.from_yaml(merged / "classes.yaml").names == expected.names
    assert len(list((merged / "labels" / "train").glob("*.png"))) == 30 + 4
    assert len(list((merged / "images" / "train").glob("*.png"))) == 30 + 4
    values = {int(v) for p in (merged / "labels").rglob("*.png") for v in np.unique(cv2.imread(str(p), -1))}
    assert values <= set(range(7)) | {255} and 13 not in values, values  # mapped: no Cityscapes "car" (13) left
    tuned = load_checkpoint(folder / "runs" / "my_run2" / "best.pt")
    assert tuned.classes.names == expected.names
    assert re.search(r"model\.init_from \S+/runs/my_run/best\.pt: loaded \d+ tensors",
                     (folder / "runs" / "my_run2" / "train.log").read_text())
    compared = json.loads((folder / "compare" / "summary.json").read_text())
    assert compared["compare"]["delta_miou"] is not None and compared["overall"]["frames"] == 8, compared
    assert list(compared["overall"]["per_class_iou"]) == list(expected.names)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no staging left over
    print(f"\ncustom-data walkthrough: {elapsed:.0f} s; mIoU {val['miou']:.3f} on the validation split, "
          f"{drive2['miou']:.3f} on the unseen drive; node published {len(node_labels)} of 16 frames")
    print("  " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings))

