"""``sfnet-bag-eval``: run a checkpoint over a recorded bag as fast as the device allows.

    sfnet-bag-eval --bag drive.mcap --image-topic /front/image_raw --label-topic /front/labels \\
        --checkpoint ck.pt --out drive_seg.mcap --mask-classes road,car

stdout: one JSON object (the report); stderr: progress bar and a human summary.
Labels are paired with images by header stamp; label values must be train ids of the
checkpoint's class table (or its ignore index), and at least one pair must match, else it is an
error (an mIoU over nothing, or over labels of another class table, is not a number to trust).
Latency is *model* latency per frame: the wall time of one ``Segmenter.segment(batch)`` call
(upload, normalise, forward, argmax, download) divided by the frames in that batch; bag reading,
decoding and writing are excluded. ``fps`` is end to end (frames / wall time of the whole loop,
reading and writing included), ``model_fps`` is frames / total model time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sfnet_core.cli.common import (
    add_overwrite,
    add_threads,
    device_spec,
    make_parser,
    positive_int,
    run_command,
    warn,
)
from sfnet_core.errors import SFNetError, require_model_file
from sfnet_core.evaluation.report_text import format_report, percent
from sfnet_core.io_utils import atomic_write, check_output
from sfnet_core.threads import apply_threads
from sfnet_core.viz import colorize, image_strip, overlay, render_outputs
from sfnet_ros.conversions import ImageConversionError, numpy_to_image
from sfnet_ros.tools.bag_io import (
    COMPRESSED,
    IMAGE,
    BagError,
    BagReader,
    BagWriter,
    check_bag_output,
    decode_image,
    decode_labels,
    image_topic_namespace,
    make_header,
    read_label_classes,
    required_stamp,
    ros2_class,
    stamp_name,
    write_png,
)


def output_namespace(image_topic: str, msgtype: str) -> str:
    """Namespace of the outputs: ``/front/image_raw[/compressed]`` -> ``/front``."""
    topic = image_topic.rstrip("/")
    if msgtype == COMPRESSED and topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]  # image_transport naming: <base>/compressed
    return image_topic_namespace(topic)


def percentiles(values_ms: Sequence[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


STRIPS_TOOL = "sfnet-bag-eval"  # the name in the --strips folder's manifest


@dataclass
class _Frame:
    timestamp: int
    stamp: int
    frame_id: str
    raw_cdr: bytes
    rgb: np.ndarray


@dataclass
class LabelMatcher:
    """Pairs predictions with ground truth by header stamp, in whichever order they arrive.

    Only unmatched items are held, so memory stays small when both topics are recorded in order.
    """

    metrics: Any
    preds: dict[int, np.ndarray] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    matched: int = 0
    label_topic: str = ""
    classes_source: str = "the checkpoint"
    first_image_stamp: int | None = None
    first_label_stamp: int | None = None
    images_seen: int = 0
    labels_seen: int = 0

    def check_values(self, stamp: int, label: np.ndarray) -> None:
        """BagError unless every value is a train id of the class table or the ignore index."""
        c, ignore = self.metrics.num_classes, self.metrics.ignore_index
        bad = label[(label >= c) & (label != ignore)]
        if bad.size:
            values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
            raise BagError(f"label topic {self.label_topic} at stamp {stamp_name(stamp)}: value(s) {values} are not "
                           f"train ids of {self.classes_source} ({c} classes: 0..{c - 1}, {ignore} = ignore); "
                           "are the labels and the checkpoint for the same class table? (labels holding other "
                           "ids, e.g. Cityscapes labelIds: --label-classes with a table whose id_map maps them)")

    def add_prediction(self, stamp: int, pred: np.ndarray) -> None:
        self.images_seen += 1
        if self.first_image_stamp is None:
            self.first_image_stamp = stamp
        label = self.labels.pop(stamp, None)
        if label is None:
            self.preds[stamp] = pred
        else:
            self._score(stamp, pred, label)

    def add_label(self, stamp: int, label: np.ndarray) -> None:
        self.check_values(stamp, label)
        self.labels_seen += 1
        if self.first_label_stamp is None:
            self.first_label_stamp = stamp
        pred = self.preds.pop(stamp, None)
        if pred is None:
            self.labels[stamp] = label
        else:
            self._score(stamp, pred, label)

    def _score(self, stamp: int, pred: np.ndarray, label: np.ndarray) -> None:
        if pred.shape != label.shape:
            raise BagError(f"label topic {self.label_topic} at stamp {stamp_name(stamp)}: the label is "
                           f"{label.shape[1]}x{label.shape[0]} but its image is {pred.shape[1]}x{pred.shape[0]}")
        self.metrics.update(pred, label)
        self.matched += 1

    def check_paired(self, image_topic: str) -> None:
        """BagError saying why when no image/label pair matched (the mIoU would be over nothing)."""
        if self.matched:
            return
        if self.first_label_stamp is None:
            why = f"the label topic {self.label_topic} delivered no message"
        elif self.first_image_stamp is None:
            why = f"the image topic {image_topic} delivered no frame"
        else:
            why = (f"no label header stamp equals an image header stamp (first image {image_topic} at "
                   f"{stamp_name(self.first_image_stamp)}, first label {self.label_topic} at "
                   f"{stamp_name(self.first_label_stamp)}; labels are paired by exact stamp)")
        raise BagError(f"no image/label pair: {why}")


def evaluate_bag(
    bag: str | Path,
    image_topic: str,
    checkpoint: str | Path,
    label_topic: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    mask_classes: Sequence[str] = (),
    progress: bool = True,
    segmenter: Any = None,
    overwrite: bool = False,
    backend: str = "auto",
    strips: str | Path | None = None,
    strip_range: tuple[float, float] = (0.0, math.inf),
    strip_every: int = 1,
    threads: int | None = None,
    label_classes: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate; returns the report dict (see module docstring). Raises SFNetError subclasses.

    ``threads``: CPU threads of the network (``sfnet_core.threads.apply_threads``: 0 or None = the
    cores this process may run on), applied to torch right before the model loads, after the
    checks of the input (they answer before torch is imported).

    ``out``: a new bag (``check_bag_output`` rules: an existing one only with ``overwrite``,
    never the input bag or the checkpoint, a folder only if it is a bag).
    ``strips``: a new folder of PNG strips (input | labels | overlay), one per ``strip_every``-th
    frame whose time since the first image lies in ``strip_range`` (seconds): the results looked
    at without Foxglove. Evaluation covers every frame either way.
    ``label_classes``: the labels' class table (``read_label_classes``): its ``id_map`` maps the
    label values to the checkpoint's train ids (its class names must be the checkpoint's)."""
    if out:  # before anything slow: a refused output costs nothing
        check_bag_output(out, inputs=[bag, checkpoint], overwrite=overwrite)
    if strips:
        check_output(strips, inputs=[bag, checkpoint, out], overwrite=overwrite, kind="dir", what="--strips",
                     tool=STRIPS_TOOL)
    with BagReader(bag) as reader:
        info = reader.check_topic(image_topic)
        if label_topic:
            reader.check_topic(label_topic, what="label topic")
        if segmenter is None:
            require_model_file(checkpoint)  # missing, or not a model file at all
        # lazy: torch is imported only now (seconds): the checks above answer bad input at once
        from sfnet_core.devices import resolve_device  # lazy: torch
        from sfnet_core.evaluation.metrics import ConfusionMatrix  # lazy: torch
        from sfnet_core.inference import Segmenter  # lazy: torch

        count = apply_threads(threads, lambda text: warn("sfnet-bag-eval", f"--threads: {text}"))
        if segmenter is None:
            resolve_device(device, "--device")  # names the option; Segmenter would say "Segmenter: device"
            segmenter = Segmenter.from_checkpoint(checkpoint, device=device, precision=precision, warmup=False,
                                                  backend=backend, threads=count)
        classes = segmenter.classes
        lut = read_label_classes(label_classes, classes.names)[1] if label_classes else None
        mask_ids = {name: classes.index(name) for name in mask_classes}  # ConfigError on unknown names
        palette = classes.palette()
        matcher = LabelMatcher(ConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index),
                               label_topic=label_topic or "",
                               classes_source=f"the checkpoint {checkpoint}" if checkpoint else "the checkpoint")
        if label_classes:
            matcher.classes_source += f" (label values mapped by --label-classes {label_classes})"
        ns = output_namespace(image_topic, info.msgtype)
        seg_ns = f"{ns}/segmentation"
        Image = ros2_class(IMAGE)
        writer = BagWriter(out, overwrite=overwrite) if out else None
        stack = contextlib.ExitStack()
        strip_dir = None
        if strips:
            strip_dir = stack.enter_context(atomic_write(strips, overwrite=overwrite, tool=STRIPS_TOOL,
                                                         what="--strips"))
            strip_dir.mkdir()
        strip_count = 0
        first_ts: int | None = None
        latencies: list[float] = []
        model_time = 0.0
        frames = 0
        warmed = False
        batch: list[_Frame] = []

        def run_batch() -> None:
            nonlocal model_time, frames, warmed
            images = [f.rgb for f in batch]
            if not warmed:
                # First call pays for allocator/kernel selection; keep it out of the latency numbers.
                segmenter.segment(images)
                warmed = True
            start = time.perf_counter()
            results = segmenter.segment(images)
            elapsed = time.perf_counter() - start
            model_time += elapsed
            latencies.extend([1000.0 * elapsed / len(batch)] * len(batch))
            for f, result in zip(batch, results):
                frames += 1
                if strip_dir is not None:
                    write_strip(f, result.labels, strip_dir)
                if label_topic:
                    matcher.add_prediction(f.stamp, result.labels)
                if writer is not None:
                    header = make_header(f.stamp, f.frame_id)
                    writer.write_raw(image_topic, info.msgtype, f.timestamp, f.raw_cdr)
                    for name, image in render_outputs(result.labels, palette, masks=mask_ids).items():
                        writer.write(f"{seg_ns}/{name}", f.timestamp, numpy_to_image(
                            image, "rgb8" if name == "color" else "mono8", header=header, msg_cls=Image))
            batch.clear()

        def write_strip(f: _Frame, labels: np.ndarray, strip_dir: Path) -> None:
            nonlocal first_ts, strip_count
            first_ts = f.timestamp if first_ts is None else first_ts
            seconds = (f.timestamp - first_ts) / 1e9
            if not strip_range[0] <= seconds <= strip_range[1] or (frames - 1) % strip_every:
                return
            color = colorize(labels, palette)
            picture = image_strip([f.rgb, color, overlay(f.rgb, color)],
                                  labels=["input", "labels", "overlay"])
            write_png(strip_dir / f"{frames - 1:06d}_{stamp_name(f.stamp)}.png", picture)
            strip_count += 1

        topics = [image_topic] + ([label_topic] if label_topic else [])
        wall_start = time.perf_counter()
        bar = tqdm(total=info.count, unit="frame", file=sys.stderr,
                   disable=True if not progress else None, desc="sfnet-bag-eval")  # None: no bar unless a terminal
        try:
            if writer is not None:
                writer.open()
            for topic, msgtype, timestamp, cdr, msg in reader.decoded_cdr_messages(topics):
                stamp = required_stamp(msg, topic, msgtype)
                try:
                    if topic == image_topic:
                        batch.append(_Frame(timestamp, stamp, msg.header.frame_id, cdr, decode_image(msg, msgtype)))
                        bar.update(1)
                        if len(batch) >= batch_size:
                            run_batch()
                    else:
                        label = decode_labels(msg, msgtype, topic)
                        matcher.add_label(stamp, label if lut is None else lut[label])
                        if writer is not None:
                            writer.write_raw(topic, msgtype, timestamp, cdr)
                except ImageConversionError as exc:
                    raise BagError(f"{bag}: {topic} message at {timestamp} ns: {exc}") from None
            if batch:
                run_batch()
            if label_topic:
                matcher.check_paired(image_topic)
            if strip_dir is not None and strip_count == 0:
                raise BagError(f"--strips: no frame between {strip_range[0]:g} s and {strip_range[1]:g} s of the "
                               f"bag's first image (the topic spans {info.count} frames)")
            if writer is not None:
                writer.close()
        except BaseException as exc:
            if writer is not None:
                writer.abort()
            stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            stack.close()  # publishes the strips folder
        finally:
            bar.close()
        wall = time.perf_counter() - wall_start

    report: dict[str, Any] = {
        "bag": str(bag),
        "image_topic": image_topic,
        "frames": frames,
        "batch_size": batch_size,
        "device": str(segmenter.device),
        "precision": segmenter.precision,
        "fps": round(frames / wall, 3) if wall > 0 else None,
        "model_fps": round(frames / model_time, 3) if model_time > 0 else None,
        "latency_ms": percentiles(latencies),
        "latency_definition": "model time per frame: Segmenter.segment(batch) wall time / batch size",
    }
    if label_topic:
        report.update({
            "label_topic": label_topic,
            "matched": matcher.matched,
            "unmatched_images": len(matcher.preds),
            "unmatched_labels": len(matcher.labels),
            **matcher.metrics.report(classes.names),
        })
    if writer is not None:
        report["out"] = str(out)
        report["out_topics"] = dict(sorted(writer.counts.items()))
    if strips:
        report["strips"] = {"folder": str(strips), "count": strip_count}
    return report


DESCRIPTION = """Segment every frame of an image topic in a bag (rosbag2 MCAP or sqlite3, a bare
.mcap/.db3 file, or a ROS 1 .bag) as fast as the device allows; report speed and, with
--label-topic, mIoU as one JSON object on stdout.

  sfnet-bag-eval --bag drive.mcap --image-topic /front/image_raw --label-topic /front/labels \\
      --checkpoint last.pt --out drive_segmented.mcap --mask-classes road,car

--out is refused if it exists (unless --overwrite; a folder only if it is a bag), if it is the
input bag or lies inside it. It appears only when complete: an error, Ctrl-C or SIGTERM leaves
nothing behind."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("sfnet-bag-eval", DESCRIPTION)
    parser.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file, or ROS 1 .bag")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--label-topic", help="mono8 train-id Image topic, matched to images by header stamp "
                                              "(default: none, no mIoU)")
    parser.add_argument("--label-classes", metavar="YAML",
                        help="the labels' class table: its id_map maps the label values (e.g. Cityscapes labelIds) "
                             "to the checkpoint's train ids (default: the labels hold train ids)")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint: .pt, or a self-describing .onnx (sfnet-export)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                        help="auto: the fastest path here (on the CPU a .onnx in OpenVINO, else ONNX "
                        "Runtime; a .pt in OpenVINO bf16 where the CPU has native bf16, else PyTorch; "
                        "on a GPU PyTorch / ONNX Runtime); onnxruntime and openvino run a .pt through the export cache")
    parser.add_argument("--out", help="write a bag with the inputs and <ns>/segmentation/* topics "
                                      "(name ending .mcap: one MCAP file; otherwise a rosbag2 MCAP directory; "
                                      "default: no output bag)")
    parser.add_argument("--mask-classes", default="",
                        help="comma-separated class names for <ns>/segmentation/mask/<class>")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="frames per forward pass")
    parser.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="auto: bf16/fp16 on CUDA, fp32 on the CPU")
    add_threads(parser)
    parser.add_argument("--strips", metavar="DIR",
                        help="also write PNG strips (input | labels | overlay) into the new folder DIR, to look "
                             "at the results without Foxglove")
    parser.add_argument("--strip-range", type=float, nargs=2, metavar=("FROM", "TO"), default=None,
                        help="--strips: only frames from FROM to TO seconds after the first image (default: all)")
    parser.add_argument("--strip-every", type=positive_int, default=1, metavar="N",
                        help="--strips: every N-th frame")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_overwrite(parser, "an existing --out bag")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mask_classes = [c.strip() for c in args.mask_classes.split(",") if c.strip()]

    strip_range = (0.0, math.inf)
    if args.strip_range is not None:
        start, end = args.strip_range
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
            build_parser().error(f"--strip-range: expected 0 <= FROM <= TO seconds, got {start:g} {end:g}")
        strip_range = (start, end)
    if args.strip_range is not None and not args.strips:
        build_parser().error("--strip-range needs --strips DIR")
    if args.label_classes and not args.label_topic:
        build_parser().error("--label-classes maps the labels of --label-topic: give --label-topic")

    def run() -> int:
        report = evaluate_bag(
            args.bag, args.image_topic, args.checkpoint, label_topic=args.label_topic, out=args.out,
            batch_size=args.batch_size, device=args.device, precision=args.precision,
            mask_classes=mask_classes, progress=not args.no_progress, overwrite=args.overwrite,
            backend=args.backend, strips=args.strips, strip_range=strip_range, strip_every=args.strip_every,
            threads=args.threads, label_classes=args.label_classes,
        )
        if "miou" in report:
            print(format_report(report), file=sys.stderr)
        print(_summary(report), file=sys.stderr)
        print(json.dumps(report))
        return 0

    return run_command("sfnet-bag-eval", run, (SFNetError, ImageConversionError, OSError),
                       interrupted="interrupted; no output written")


def _summary(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    text = (f"{report['frames']} frames, {report['fps']} fps end to end, {report['model_fps']} fps model, "
            f"latency p50 {lat['p50']} ms p99 {lat['p99']} ms ({report['device']}, {report['precision']})")
    if "miou" in report:
        text += (f"; mIoU {percent(report['miou'])} over {report['matched']} labelled frames "
                 f"({report['unmatched_images']} images and {report['unmatched_labels']} labels unmatched)")
    if "out" in report:
        text += f"; wrote {report['out']}"
    if "strips" in report:
        text += f"; {report['strips']['count']} strips in {report['strips']['folder']}"
    return text


if __name__ == "__main__":
    sys.exit(main())
