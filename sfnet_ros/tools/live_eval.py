"""``sfnet-live-eval``: play a bag into a running ``sfnet_node`` and measure what comes out.

    sfnet-live-eval --bag drive.mcap --image-topic /front/image_raw --label-topic /front/labels

Frames of ``--image-topic`` are published (restamped with the publish time, at recorded timing
scaled by ``--rate``) on ``--input-topic`` (default: the same name); the node's
``<namespace>/segmentation/labels`` are collected. Report (one JSON object on stdout):
``sent``, ``received``, ``dropped`` (sent - received: frames the node skipped or DDS lost),
``latency_ms`` percentiles of *end-to-end* latency = arrival time of the labels - header stamp
(= publish time: DDS in, decode, inference, publish, DDS out), ``fps`` = received frames / time from
the first publish to the last arrival, and, against the bag's ground truth (matched through the
restamp map), ``miou`` and per-class IoU. ``--lockstep`` sends a frame only after the previous
one's labels arrived: no drops by design, accuracy over every frame, latency without queueing.
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

from sfnet_core.cli.common import run_command
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.bag_eval import json_float, output_namespace, percentiles
from sfnet_ros.tools.bag_io import BagReader, decode_labels, header_stamp
from sfnet_ros.tools.bag_play import BagPlayer, SpinThread, qos_profile
from sfnet_ros.conversions import ImageConversionError, image_to_numpy


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
        self.last_arrival = 0
        self.errors: list[str] = []

    def on_publish(self, _topic: str, original: int, published: int) -> None:
        with self.lock:
            self.published[published] = original

    def on_labels(self, msg: Any) -> None:
        arrival = time.time_ns()
        stamp = header_stamp(msg)
        with self.lock:
            original = self.published.get(stamp)
            if original is None:
                self.unknown += 1  # not ours (an earlier run, another player)
                return
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


def _load_ground_truth(bag: str | Path, image_topic: str, label_topic: str | None) -> tuple[Any, dict[int, np.ndarray]]:
    with BagReader(bag) as reader:
        info = reader.check_topic(image_topic)
        truth: dict[int, np.ndarray] = {}
        if label_topic:
            reader.check_topic(label_topic, what="label topic")
            for m in reader.messages([label_topic]):
                try:
                    truth[m.stamp] = decode_labels(m.msg, m.msgtype, label_topic)
                except ImageConversionError as exc:
                    raise SFNetError(f"{bag}: {exc}") from None
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
) -> dict[str, Any]:
    """Run one live evaluation (own rclpy context; ROS_DOMAIN_ID from the environment)."""
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    from sfnet_core.evaluation.metrics import ConfusionMatrix

    info, truth = _load_ground_truth(bag, image_topic, label_topic)
    ns = output_namespace(image_topic, info.msgtype) if namespace is None else namespace.rstrip("/")
    labels_topic = labels_topic or f"{ns}/segmentation/labels"
    input_topic = input_topic or image_topic
    collector = _Collector(truth, ConfusionMatrix(num_classes, ignore_index=ignore_index))
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("sfnet_live_eval", context=context)
    spinner: SpinThread | None = None
    try:
        subscription = node.create_subscription(Image, labels_topic, collector.on_labels, qos_profile("best_effort"))
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
        sent = stats.published[image_topic]
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
    finally:
        if spinner is not None:
            spinner.stop()
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
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sfnet-live-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--bag", required=True)
    p.add_argument("--image-topic", required=True, help="image topic in the bag")
    p.add_argument("--label-topic", help="mono8 train-id topic in the bag (ground truth)")
    p.add_argument("--input-topic", help="publish the frames here (default: --image-topic)")
    p.add_argument("--namespace", help="namespace of the node's outputs (default: that of --image-topic)")
    p.add_argument("--labels-topic", help="node output to collect (default: <namespace>/segmentation/labels)")
    p.add_argument("--classes", help="class YAML for per-class names and count (default: Cityscapes)")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--lockstep", action="store_true", help="send each frame after the previous one's labels")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    p.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait for the node")
    p.add_argument("--drain-timeout", type=float, default=5.0,
                   help="after the last frame, stop waiting once no output arrived for this long")
    args = p.parse_args(argv)

    def run() -> int:
        from sfnet_core.data.classes import ClassTable

        table = ClassTable.from_yaml(args.classes) if args.classes else ClassTable.cityscapes()
        if args.rate <= 0:
            raise SFNetError(f"--rate must be > 0, got {args.rate}")
        report = live_evaluate(args.bag, args.image_topic, args.label_topic, args.input_topic, args.namespace,
                               args.labels_topic, table.num_classes, table.names, table.ignore_index, args.rate,
                               args.lockstep, args.wait_timeout, args.drain_timeout, args.qos)
        lat = report["latency_ms"]
        summary = (f"sent {report['sent']}, received {report['received']}, dropped {report['dropped']}, "
                   f"{report['fps']} fps, latency p50 {lat['p50']} ms p99 {lat['p99']} ms")
        if "miou" in report:
            summary += f", mIoU {report['miou']} over {report['matched']} frames"
        print(summary, file=sys.stderr)
        print(json.dumps(report))
        return 0

    return run_command("sfnet-live-eval", run)


if __name__ == "__main__":
    sys.exit(main())
