"""A synthetic driving bag: camera images plus a ground-truth label topic, written with rosbags.

Used by the demo and the tests so that every bag tool can run on a fresh machine with nothing
downloaded. Frames come from ``sfnet_core.data.synthetic_scenes.render.render_sequence`` (coherent motion);
labels are Cityscapes train ids as mono8 Images with the same header as their image.

    python -m sfnet_ros.tools.synthetic_bag --out drive.mcap --frames 20 --size 64x128
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.cli.common import add_overwrite, make_parser, positive_float, positive_int, run_command
from sfnet_core.data.synthetic_scenes.arguments import parse_size
from sfnet_core.data.synthetic_scenes.render import render_sequence
from sfnet_core.io_utils import atomic_write, check_output
from sfnet_ros.conversions import numpy_to_image, rgb_to_compressed
from sfnet_ros.tools.bag_io import COMPRESSED, IMAGE, BagError, BagWriter, check_bag_output, make_header, ros2_class

START_NS = 1_700_000_000 * 1_000_000_000  # a fixed epoch so bags (and file names) are reproducible
TRANSPORT_DELAY_NS = 2_000_000  # bag receive time lags the header stamp, as on a real vehicle


def frame_stamps(num_frames: int, rate_hz: float) -> list[int]:
    period = int(round(1e9 / rate_hz))
    return [START_NS + i * period for i in range(num_frames)]


def write_synthetic_bag(
    path: str | os.PathLike,
    num_frames: int = 8,
    height: int = 64,
    width: int = 128,
    seed: int = 0,
    image_topic: str = "/front/image_raw",
    label_topic: str | None = "/front/labels",
    compressed: bool = False,
    storage: str = "mcap",
    rate_hz: float = 10.0,
    frame_id: str = "front_camera",
    overwrite: bool = False,
    cameras: Sequence[str] = (),
) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """Write the bag; returns (path, images RGB (H,W,3) uint8, labels (H,W) uint8) as written.

    ``cameras`` (e.g. ``("front", "left")``): instead of ``image_topic`` / ``label_topic``, one
    ``/<camera>/image_raw`` and ``/<camera>/labels`` pair per camera (frame id ``<camera>_camera``),
    each its own scene (seed ``seed + index``), frames interleaved in time as a recorder writes
    them; the returned lists hold every camera's frames in that order.

    ``storage``: "mcap" | "sqlite3" (rosbag2) or "ros1" (a ROS 1 .bag file). ``compressed`` stores
    the images as PNG CompressedImage (lossless, so decoded frames equal the returned images).
    An existing ``path`` is an error unless ``overwrite`` (a folder only if it is a bag).
    """
    if cameras:
        return _write_cameras(path, num_frames, height, width, seed, cameras, label_topic is not None, compressed,
                              storage, rate_hz, overwrite)
    frames = list(render_sequence(seed, num_frames, height, width))
    images = [np.ascontiguousarray(img) for img, _ in frames]
    labels = [np.ascontiguousarray(lab) for _, lab in frames]
    stamps = frame_stamps(num_frames, rate_hz)
    if storage == "ros1":
        if Path(path).exists() and not overwrite:
            raise BagError(f"{path}: exists; pass --overwrite to replace it, or choose another path")
        _write_ros1(Path(path), images, labels, stamps, image_topic, label_topic, compressed, frame_id)
        return Path(path), images, labels
    with BagWriter(path, storage=storage, overwrite=overwrite) as writer:
        for image, label, stamp in zip(images, labels, stamps):
            header = make_header(stamp, frame_id)
            msg = _image_msg(image, header, compressed, ros2_class(IMAGE), ros2_class(COMPRESSED))
            writer.write(image_topic, stamp + TRANSPORT_DELAY_NS, msg)
            if label_topic:
                label_msg = numpy_to_image(label, "mono8", header=header, msg_cls=ros2_class(IMAGE))
                writer.write(label_topic, stamp + TRANSPORT_DELAY_NS, label_msg)
    return Path(path), images, labels


def _write_cameras(path: str | os.PathLike, num_frames: int, height: int, width: int, seed: int,
                   cameras: Sequence[str], with_labels: bool, compressed: bool, storage: str, rate_hz: float,
                   overwrite: bool) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    if storage == "ros1":
        raise BagError("several cameras are written to rosbag2 (mcap or sqlite3) bags only")
    scenes = [list(render_sequence(seed + i, num_frames, height, width)) for i in range(len(cameras))]
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with BagWriter(path, storage=storage, overwrite=overwrite) as writer:
        for f, stamp in enumerate(frame_stamps(num_frames, rate_hz)):
            for camera, frames in zip(cameras, scenes):
                image, label = (np.ascontiguousarray(a) for a in frames[f])
                header = make_header(stamp, f"{camera}_camera")
                msg = _image_msg(image, header, compressed, ros2_class(IMAGE), ros2_class(COMPRESSED))
                writer.write(f"/{camera}/image_raw", stamp + TRANSPORT_DELAY_NS, msg)
                if with_labels:
                    writer.write(f"/{camera}/labels", stamp + TRANSPORT_DELAY_NS,
                                 numpy_to_image(label, "mono8", header=header, msg_cls=ros2_class(IMAGE)))
                images.append(image)
                labels.append(label)
    return Path(path), images, labels


def _image_msg(image: np.ndarray, header: Any, compressed: bool, image_cls: type, compressed_cls: type) -> Any:
    if compressed:
        return rgb_to_compressed(image, fmt="png", header=header, msg_cls=compressed_cls)
    return numpy_to_image(image, "rgb8", header=header, msg_cls=image_cls)


def _write_ros1(path: Path, images: list[np.ndarray], labels: list[np.ndarray], stamps: list[int],
                image_topic: str, label_topic: str | None, compressed: bool, frame_id: str) -> None:
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    image_cls = store.types[IMAGE]
    compressed_cls = store.types[COMPRESSED]
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    with atomic_write(path) as tmp, Writer(tmp) as writer:
        image_type = COMPRESSED if compressed else IMAGE
        image_conn = writer.add_connection(image_topic, image_type, typestore=store)
        label_conn = writer.add_connection(label_topic, IMAGE, typestore=store) if label_topic else None
        for seq, (image, label, stamp) in enumerate(zip(images, labels, stamps)):
            header = Header(seq=seq, stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                            frame_id=frame_id)
            msg = _image_msg(image, header, compressed, image_cls, compressed_cls)
            writer.write(image_conn, stamp + TRANSPORT_DELAY_NS, store.serialize_ros1(msg, image_type))
            if label_conn is not None:
                label_msg = numpy_to_image(label, "mono8", header=header, msg_cls=image_cls)
                writer.write(label_conn, stamp + TRANSPORT_DELAY_NS, store.serialize_ros1(label_msg, IMAGE))


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("sfnet-synthetic-bag",
                         "Write a synthetic driving bag with ground-truth labels (an existing --out is refused "
                         "unless --overwrite).")
    parser.add_argument("--out", required=True, help="bag path: directory, .mcap file, or .bag for ROS 1")
    parser.add_argument("--frames", type=positive_int, default=20, help="number of frames")
    parser.add_argument("--size", type=parse_size, default=(64, 128), help="HEIGHTxWIDTH")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument("--rate", type=positive_float, default=10.0, help="frame rate in Hz")
    parser.add_argument("--image-topic", default="/front/image_raw", help="image topic")
    parser.add_argument("--label-topic", default="/front/labels", help="mono8 train-id label topic")
    parser.add_argument("--cameras", default="", metavar="NAME,...",
                        help="several cameras, e.g. front,left: /<name>/image_raw and /<name>/labels each, "
                             "instead of --image-topic / --label-topic")
    parser.add_argument("--no-labels", action="store_true", help="no label topic (a drive without ground truth)")
    parser.add_argument("--compressed", action="store_true", help="PNG CompressedImage instead of rgb8 Image")
    parser.add_argument("--storage", choices=("mcap", "sqlite3", "ros1"), default=None,
                        help="default: ros1 for a .bag path, else mcap")
    add_overwrite(parser, "an existing --out bag")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        storage = args.storage or ("ros1" if args.out.endswith(".bag") else "mcap")
        if storage == "ros1":
            check_output(args.out, overwrite=args.overwrite)
        else:
            check_bag_output(args.out, overwrite=args.overwrite, storage=storage)
        h, w = args.size
        cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
        path, _, _ = write_synthetic_bag(args.out, args.frames, h, w, args.seed, args.image_topic,
                                         None if args.no_labels else args.label_topic, args.compressed, storage,
                                         args.rate, overwrite=args.overwrite, cameras=cameras)
        print(path)
        return 0

    return run_command("sfnet-synthetic-bag", run)


if __name__ == "__main__":
    sys.exit(main())
