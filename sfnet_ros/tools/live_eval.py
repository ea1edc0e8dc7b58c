"""``sfnet-live-eval``: play a bag into a running ``sfnet_node`` and measure what comes out.

    sfnet-live-eval --bag drive.mcap --image-topic /front/image_raw --label-topic /front/labels

Frames of ``--image-topic`` are published (restamped with the publish time, at recorded timing
scaled by ``--rate``) on ``--input-topic`` (default: the same name); the node's
``<namespace>/segmentation/labels`` are collected. Report (one JSON object on stdout):
``sent``, ``received``, ``dropped`` (sent - received: frames the node skipped or DDS lost),
``drop_reasons`` (each dropped frame's reason, from the node's /diagnostics counters: never
reached the node, replaced by a newer frame while the node was busy, refused, ...),
``latency_ms`` percentiles of *end-to-end* latency = arrival time of the labels - header stamp
(= publish time: DDS in, decode, inference, publish, DDS out), ``fps`` = received frames / time from
the first publish to the last arrival, and, against the bag's ground truth (matched through the
restamp map), ``miou`` and per-class IoU. ``--lockstep`` sends a frame only after the previous
one's labels arrived: no drops by design, accuracy over every frame, latency without queueing.

Ground-truth values must be train ids of ``--classes`` (or its ignore index), checked before
anything is played; with ``--label-topic``, no scored frame at all is an error naming the topics
and why. It writes no file; SIGINT exits 130 and SIGTERM 143, after its ROS entities are gone.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.cli.common import make_parser, positive_float, run_command
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import SFNetError
from sfnet_core.evaluation.report_text import percent
from sfnet_ros.conversions import ImageConversionError, image_to_numpy
from sfnet_ros.tools.bag_eval import output_namespace, percentiles
from sfnet_ros.tools.bag_io import (
    BagError,
    BagReader,
    decode_labels,
    header_stamp,
    read_label_classes,
    stamp_name,
)
from sfnet_ros.tools.bag_play import BagPlayer, SpinThread, qos_profile
from sfnet_ros.tools.ros_args import init_rclpy, split_ros_args


class _Collector:
    """Receives the node's labels and scores them (runs in the spin thread; a lock guards state)."""

    def __init__(self, ground_truth: dict[int, np.ndarray], metrics: Any) -> None:
        self.ground_truth = ground_truth
        self.metrics = metrics
        self.lock = threading.Lock()
        self.published: dict[int, int] = {}  # published stamp -> original stamp
        self.latencies: list[float] = []
        self.received = 0
        self.matched = 0
        self.unknown = 0
        self.duplicates = 0  # a second answer for a frame the player sent again (lockstep)
        self.answered: set[int] = set()  # original stamps with labels
        self.last_arrival = 0
        self.errors: list[str] = []
        # input topic -> the node's latest counters for it, and when they arrived (time_ns)
        self.node_counters: dict[str, dict[str, str]] = {}
        self._counters_at: dict[str, int] = {}
        self._diagnostics = threading.Condition(self.lock)

    def on_diagnostics(self, msg: Any) -> None:
        """Keep each camera's counters: a camera status is named "<node>: <input topic>"."""
        with self.lock:
            for status in msg.status:
                node_name, sep, topic = status.name.partition(": ")
                if sep and topic.startswith("/"):
                    self.node_counters[topic] = {kv.key: kv.value for kv in status.values}
                    self._counters_at[topic] = time.time_ns()
            self._diagnostics.notify_all()

    def wait_for_diagnostics(self, topic: str, after_ns: int, timeout: float) -> None:
        """Wait (bounded) for counters of ``topic`` that arrived after ``after_ns``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self._counters_at.get(topic, 0) <= after_ns and time.monotonic() < deadline:
                self._diagnostics.wait(0.1)

    def on_publish(self, _topic: str, original: int, published: int) -> None:
        with self.lock:
            self.published[published] = original

    def on_labels(self, msg: Any) -> None:
        arrival = time.time_ns()
        stamp = header_stamp(msg)
        with self.lock:
            original = None if stamp is None else self.published.get(stamp)
            if stamp is None or original is None:
                self.unknown += 1  # not ours (an earlier run, another player)
                return
            if original in self.answered:
                self.duplicates += 1
                return
            self.answered.add(original)
            self.received += 1
            self.last_arrival = arrival
            self.latencies.append((arrival - stamp) / 1e6)
            truth = self.ground_truth.get(original)
        if truth is None:
            return
        try:
            pred = np.asarray(image_to_numpy(msg))
        except ImageConversionError as exc:
            self.errors.append(f"labels at {stamp}: {exc}")
            return
        if pred.shape != truth.shape:
            self.errors.append(f"labels at {stamp} are {pred.shape}, ground truth {truth.shape}")
            return
        with self.lock:
            self.metrics.update(pred, truth)
            self.matched += 1


# The node's /diagnostics counters (since activation) that explain a frame sent but not answered.
NODE_DROP_COUNTERS = {
    "dropped_stale_total": "replaced by a newer frame while the node was busy (the node is slower than --rate)",
    "dropped_bad_input_total": "refused by the node as bad input (its last_bad_input says why)",
    "dropped_too_large_total": "larger than the node's max_input_pixels",
    "skipped_no_subscribers_total": "not processed: no subscriber on any output when it arrived",
}


def drop_reasons(sent: int, received: int, counters: dict[str, str] | None) -> dict[str, int]:
    """Why ``sent - received`` frames got no answer, from the node's per-camera counters (read off
    /diagnostics after the run; they count since activation, so a node that saw frames before this
    run overstates them): frames that never reached the node, dropped by it (by reason), published
    but not received here. Without the node's diagnostics the whole count is "unknown"."""
    dropped = sent - received
    if dropped <= 0:
        return {}
    if counters is None:
        return {"unknown (no /diagnostics from the node for this camera)": dropped}

    def count(key: str) -> int:
        try:
            return int(float(counters.get(key, "0")))
        except ValueError:
            return 0

    reasons = {text: count(key) for key, text in NODE_DROP_COUNTERS.items()}
    reasons["never reached the node (lost in transport: see docs/transport.md)"] = \
        max(sent - count("frames_received_total"), 0)
    reasons["published by the node but not received here"] = max(count("frames_published_total") - received, 0)
    return {text: n for text, n in reasons.items() if n > 0} or {"unknown (the node's counters show none)": dropped}


def _load_ground_truth(bag: str | Path, image_topic: str, label_topic: str | None, num_classes: int = 19,
                       ignore_index: int = 255, classes_source: str = "the class table",
                       label_lut: np.ndarray | None = None) -> tuple[Any, dict[int, np.ndarray]]:
    """The image topic's info and {header stamp: label}; every label mapped to train ids
    (``label_lut``: the labels' class table's id_map), checked against the class table and paired
    with an image (by stamp) before anything is played."""
    with BagReader(bag) as reader:
        info = reader.check_topic(image_topic)
        truth: dict[int, np.ndarray] = {}
        if label_topic:
            reader.check_topic(label_topic, what="label topic")
            for m in reader.messages([label_topic]):
                stamp = m.header_ns()
                try:
                    label = decode_labels(m.msg, m.msgtype, label_topic)
                    if label_lut is not None:
                        label = label_lut[label]
                except ImageConversionError as exc:
                    raise BagError(f"{bag}: {exc}") from None
                bad = label[(label >= num_classes) & (label != ignore_index)]
                if bad.size:
                    values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
                    raise BagError(f"{bag}: label topic {label_topic} at stamp {stamp_name(stamp)}: value(s) "
                                   f"{values} are not train ids of {classes_source} ({num_classes} classes: "
                                   f"0..{num_classes - 1}, {ignore_index} = ignore); pass the labels' table "
                                   "with --classes, or one whose id_map maps them with --label-classes")
                truth[stamp] = label
            image_stamps = {m.header_ns() for m in reader.messages([image_topic])}
            if not image_stamps & set(truth):
                raise BagError(f"{bag}: no label of {label_topic} has the header stamp of an image of {image_topic} "
                               f"(first image at {stamp_name(min(image_stamps))}, first label at "
                               f"{stamp_name(min(truth))}; labels are paired by exact stamp)")
    return info, truth


def live_evaluate(
    bag: str | Path,
    image_topic: str,
    label_topic: str | None = None,
    input_topic: str | None = None,
    namespace: str | None = None,
    labels_topic: str | None = None,
    num_classes: int = 19,
    class_names: tuple[str, ...] | None = None,
    ignore_index: int = 255,
    rate: float = 1.0,
    lockstep: bool = False,
    wait_timeout: float = 60.0,
    drain_timeout: float = 5.0,
    qos: str = "reliable",
    ros_args: tuple[str, ...] = (),
    classes_source: str = "the class table",
    label_lut: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run one live evaluation (own rclpy context, without rclpy's signal handlers; ROS_DOMAIN_ID
    from the environment). Raises SFNetError subclasses on bad input and when nothing was scored.
    ``label_lut``: label value -> train id (the labels' class table's id_map; None: train ids)."""
    info, truth = _load_ground_truth(bag, image_topic, label_topic, num_classes, ignore_index, classes_source,
                                     label_lut)
    # imported after the checks above: torch and rclpy take seconds to load
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    from sfnet_core.evaluation.metrics import ConfusionMatrix  # lazy: torch

    ns = output_namespace(image_topic, info.msgtype) if namespace is None else namespace.rstrip("/")
    labels_topic = labels_topic or f"{ns}/segmentation/labels"
    input_topic = input_topic or image_topic
    collector = _Collector(truth, ConfusionMatrix(num_classes, ignore_index=ignore_index))
    context = Context()
    init_rclpy("sfnet-live-eval", ros_args, context=context)
    node = None
    spinner: SpinThread | None = None
    try:
        node = rclpy.create_node("sfnet_live_eval", context=context)
        try:
            subscription = node.create_subscription(Image, labels_topic, collector.on_labels,
                                                    qos_profile("best_effort"))
        except Exception as exc:  # InvalidTopicNameException
            raise SFNetError(f"--labels-topic: {labels_topic!r} is not a valid topic name "
                             f"({str(exc).splitlines()[0]})") from None
        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, "/diagnostics", collector.on_diagnostics, 10)
        player = BagPlayer(node, bag, [image_topic], rate=rate, qos=qos, restamp=True,
                           remap={image_topic: input_topic},
                           lockstep=(image_topic, labels_topic) if lockstep else None,
                           on_publish=collector.on_publish)
        spinner = SpinThread(node)
        print(f"sfnet-live-eval: waiting for the node ({input_topic} -> {labels_topic})", file=sys.stderr, flush=True)
        if not player.wait_for_subscribers(1, wait_timeout):
            raise SFNetError(f"no subscriber on {input_topic} after {wait_timeout} s: is sfnet_node running, "
                             "with its image input remapped there?")
        deadline = time.monotonic() + wait_timeout
        while subscription.get_publisher_count() < 1:
            if time.monotonic() > deadline:
                raise SFNetError(f"no publisher of {labels_topic} after {wait_timeout} s (wrong --namespace?)")
            time.sleep(0.05)
        start = time.time_ns()
        stats = player.play()
        sent = stats.published[image_topic] - stats.lockstep_resent
        # Drain: wait for outputs still in flight, until all arrived or none came for drain_timeout.
        last_count, idle_since = -1, time.monotonic()
        while True:
            with collector.lock:
                count = collector.received
            if count >= sent:
                break
            if count != last_count:
                last_count, idle_since = count, time.monotonic()
            elif time.monotonic() - idle_since > drain_timeout:
                break
            time.sleep(0.02)
        if collector.received < sent:  # the node's counters after the last frame, to say why
            collector.wait_for_diagnostics(input_topic, after_ns=time.time_ns(), timeout=drain_timeout)
    finally:
        if spinner is not None:
            spinner.stop()
        if node is not None:
            node.destroy_node()
        context.try_shutdown()

    with collector.lock:
        received = collector.received
        span_s = (collector.last_arrival - start) / 1e9 if received else 0.0
        report: dict[str, Any] = {
            "bag": str(bag),
            "image_topic": image_topic,
            "input_topic": input_topic,
            "labels_topic": labels_topic,
            "rate": rate,
            "lockstep": lockstep,
            "sent": sent,
            "received": received,
            "dropped": sent - received,
            "drop_reasons": drop_reasons(sent, received, collector.node_counters.get(input_topic)),
            "resent": stats.lockstep_resent,  # lockstep: frames sent again after a lost answer
            "fps": round(received / span_s, 3) if span_s > 0 else None,
            "latency_ms": percentiles(collector.latencies),
            "latency_definition": "labels arrival time - header stamp (stamp = publish time, restamped)",
        }
        if label_topic:
            names = class_names or tuple(str(i) for i in range(num_classes))
            report.update({
                "label_topic": label_topic,
                "matched": collector.matched,
                **collector.metrics.report(names),
            })
        if collector.errors:
            report["errors"] = collector.errors[:10]
    if label_topic and collector.matched == 0:
        if received == 0:
            why = f"no labels arrived on {labels_topic} for the {sent} frame(s) sent to {input_topic}"
        else:
            why = "; ".join(collector.errors[:2]) or "none of the received labels has a ground-truth label"
        raise SFNetError(f"no frame scored against {label_topic}: {why}")
    return report


DESCRIPTION = """Play a bag's image topic into a running sfnet_node and measure what comes out:
sent, received, dropped, end-to-end FPS and latency, and mIoU against the bag's labels, as one
JSON object on stdout.

  sfnet-live-eval --bag drive.mcap --image-topic /front/image_raw --label-topic /front/labels --lockstep

ROS arguments go after --ros-args. It writes no file."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-live-eval", DESCRIPTION)
    p.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file, or ROS 1 .bag")
    p.add_argument("--image-topic", required=True, help="image topic in the bag")
    p.add_argument("--label-topic", help="mono8 train-id topic in the bag (ground truth; default: no mIoU)")
    p.add_argument("--input-topic", help="publish the frames here (default: --image-topic)")
    p.add_argument("--namespace", help="namespace of the node's outputs (default: that of --image-topic)")
    p.add_argument("--labels-topic", help="node output to collect (default: <namespace>/segmentation/labels)")
    tables = p.add_mutually_exclusive_group()
    tables.add_argument("--classes", help="class YAML of the labels, which hold its train ids (default: Cityscapes)")
    tables.add_argument("--label-classes", metavar="YAML",
                        help="class YAML whose id_map maps the label values (e.g. Cityscapes labelIds) to train ids")
    p.add_argument("--rate", type=positive_float, default=1.0, help="playback speed factor")
    p.add_argument("--lockstep", action="store_true", help="send each frame after the previous one's labels")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable", help="publisher reliability")
    p.add_argument("--wait-timeout", type=positive_float, default=60.0, help="seconds to wait for the node")
    p.add_argument("--drain-timeout", type=positive_float, default=5.0,
                   help="after the last frame, stop waiting once no output arrived for this long (s)")
    return p


def main(argv: list[str] | None = None) -> int:
    own, ros_args = split_ros_args(argv)
    args = build_parser().parse_args(own)

    def run() -> int:
        lut = None
        if args.label_classes:
            table, lut = read_label_classes(args.label_classes)
        else:
            table = ClassTable.from_yaml(args.classes) if args.classes else ClassTable.cityscapes()
        report = live_evaluate(args.bag, args.image_topic, args.label_topic, args.input_topic, args.namespace,
                               args.labels_topic, table.num_classes, table.names, table.ignore_index, args.rate,
                               args.lockstep, args.wait_timeout, args.drain_timeout, args.qos, tuple(ros_args),
                               classes_source=str(args.classes or args.label_classes or "the Cityscapes class table"),
                               label_lut=lut)
        lat = report["latency_ms"]
        summary = (f"sent {report['sent']}, received {report['received']}, dropped {report['dropped']}, "
                   f"{report['fps']} fps, latency p50 {lat['p50']} ms p99 {lat['p99']} ms")
        if "miou" in report:
            summary += f", mIoU {percent(report['miou'])} over {report['matched']} frames"
        print(summary, file=sys.stderr)
        for reason, count in report["drop_reasons"].items():
            print(f"  dropped {count}: {reason}", file=sys.stderr)
        print(json.dumps(report))
        return 0

    return run_command("sfnet-live-eval", run)


if __name__ == "__main__":
    sys.exit(main())
