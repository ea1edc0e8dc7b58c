"""``sfnet-extract``: turn a recorded bag into a folder dataset ready for labelling and ``sfnet-train``.

    sfnet-extract --bag drive.mcap --image-topic /front/image_raw --out my_data --rate 2

writes ``my_data/images/<sec>_<nanosec>.png`` (names from header stamps, so they sort in time),
an empty ``my_data/labels/`` for the labelling tool (or, with ``--label-topic``, the bag's mono8
train-id labels), and ``my_data/classes.yaml``: the class table the labels must use (train ids,
no id_map). The folder appears only when complete; an existing non-empty folder is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from sfnet_core.data.classes import ClassTable
from sfnet_core.cli.common import run_command
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.bag_io import BagError, BagReader, decode_image, decode_labels, stamp_name
from sfnet_ros.conversions import ImageConversionError


def class_template(table: ClassTable, source: str) -> str:
    """YAML class table for labelling: train ids only (an id_map would remap the label PNGs)."""
    data = table.to_dict()
    data.pop("id_map", None)
    header = (f"# Class table for this dataset (from {source}).\n"
              f"# Label PNGs hold train ids 0..{table.num_classes - 1}; {table.ignore_index} = ignore.\n")
    body = yaml.safe_dump({"ignore_index": data["ignore_index"]}, sort_keys=False)
    body += "classes:\n" + "".join(
        f"  - {{id: {c['id']}, name: {c['name']}, color: [{', '.join(map(str, c['color']))}]}}\n"
        for c in data["classes"])
    return header + body


def _write_png(path: Path, array: np.ndarray) -> None:
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def extract(
    bag: str | os.PathLike,
    image_topic: str,
    out: str | os.PathLike,
    every: int = 1,
    rate_hz: float | None = None,
    classes: str | os.PathLike | None = None,
    label_topic: str | None = None,
    progress: bool = True,
) -> dict:
    """Extract; returns a summary dict. Raises SFNetError subclasses on bad input."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BagError(f"{out}: exists and is not an empty folder; choose a new --out")
    table = ClassTable.from_yaml(classes) if classes else ClassTable.cityscapes()
    source = str(classes) if classes else "the Cityscapes train ids"
    min_gap_ns = int(1e9 / rate_hz) if rate_hz else 0
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    kept: dict[int, str] = {}  # header stamp -> file name
    pending_labels: dict[int, np.ndarray] = {}
    seen = duplicates = labels_written = 0
    last_kept: int | None = None
    try:
        with BagReader(bag) as reader:
            info = reader.check_topic(image_topic)
            if label_topic:
                reader.check_topic(label_topic, what="label topic")
            (staging / "images").mkdir(parents=True)
            (staging / "labels").mkdir()
            topics = [image_topic] + ([label_topic] if label_topic else [])
            bar = tqdm(total=info.count, unit="frame", file=sys.stderr, disable=not progress, desc="sfnet-extract")
            for m in reader.messages(topics):
                if m.stamp is None:
                    raise BagError(f"{bag}: {m.topic} messages have no header stamp")
                try:
                    if m.topic == image_topic:
                        bar.update(1)
                        index, seen = seen, seen + 1
                        if index % every or (last_kept is not None and m.stamp - last_kept < min_gap_ns):
                            continue
                        name = stamp_name(m.stamp)
                        if m.stamp in kept:
                            duplicates += 1  # two frames with one stamp: keep the first
                            continue
                        _write_png(staging / "images" / f"{name}.png", decode_image(m.msg, m.msgtype))
                        kept[m.stamp] = name
                        last_kept = m.stamp
                        label = pending_labels.pop(m.stamp, None)
                    else:
                        label = decode_labels(m.msg, m.msgtype, m.topic)
                        if m.stamp not in kept:
                            pending_labels[m.stamp] = label  # image not seen yet (or skipped)
                            continue
                        name = kept[m.stamp]
                    if label is not None:
                        _write_png(staging / "labels" / f"{name}.png", label)
                        labels_written += 1
                except ImageConversionError as exc:
                    raise BagError(f"{bag}: {m.topic} message at {m.timestamp} ns: {exc}") from None
            bar.close()
        (staging / "classes.yaml").write_text(class_template(table, source), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot rename onto it otherwise
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out), "images": len(kept), "labels": labels_written, "frames_in_bag": seen,
            "duplicate_stamps": duplicates, "classes": str(out / "classes.yaml")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sfnet-extract",
        description="Dump a bag's image topic into the folder-dataset layout (images/, labels/, classes.yaml).")
    parser.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file, or ROS 1 .bag")
    parser.add_argument("--image-topic", required=True)
    parser.add_argument("--out", required=True, help="new (or empty) folder")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--every", type=int, default=1, help="keep every N-th frame (default 1: all)")
    pick.add_argument("--rate", type=float, help="keep at most this many frames per second of header time")
    parser.add_argument("--classes", help="class YAML to copy as classes.yaml (default: Cityscapes train ids)")
    parser.add_argument("--label-topic", help="also write mono8 train-id labels from this topic (matched by stamp)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.every < 1 or (args.rate is not None and args.rate <= 0):
        print("sfnet-extract: error: --every must be >= 1 and --rate > 0", file=sys.stderr)
        return 2

    def run() -> int:
        summary = extract(args.bag, args.image_topic, args.out, args.every, args.rate, args.classes,
                          args.label_topic, progress=not args.no_progress)
        print(f"wrote {summary['images']} images and {summary['labels']} labels to {summary['out']}",
              file=sys.stderr)
        print(json.dumps(summary))
        return 0

    return run_command("sfnet-extract", run, (SFNetError, OSError))


if __name__ == "__main__":
    sys.exit(main())
