"""Overhead: the node end to end with labels, colour and class masks subscribed, against the bare
``Segmenter`` of the same backend on the same frames (see bench/node_latency.py for what is
measured and how)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from node_bench.backends import BACKEND_MODELS, prepare_models
from node_bench.common import (
    BareSegmenter,
    bench_frames,
    node_argv,
    percentile,
    spin_in_thread,
    start_node,
    stop_node,
    wait_active,
    wait_for,
    write_checkpoint,
)
from sfnet_ros.conversions import image_to_numpy, numpy_to_image

TARGET_RATIO = 1.05
#: ``--backend`` names -> (model file prepare_models makes, the node's ``backend`` / the Segmenter's).
OVERHEAD_BACKENDS = BACKEND_MODELS
#: Classes that get a mask topic (Cityscapes names: the bench checkpoint's table).
MASK_CLASSES = ("road", "car", "person")
#: The timing message's steps, in order (``segmentation/timing``, outputs.timing_array).
STAGES = ("queue_ms", "decode_ms", "inference_ms", "render_ms")


def openvino_in_node() -> bool:
    """Whether the node's ``backend`` parameter takes ``openvino`` (sfnet_ros/node/params.py)."""
    from sfnet_ros.node.params import BACKENDS  # lazy: only to pick the default backend

    return "openvino" in BACKENDS


def default_backend() -> str:
    """The fastest path measured on the CPUs we know (docs/performance.md): OpenVINO on the int8
    ``.onnx`` where the node offers it, else ONNX Runtime int8."""
    return "openvino-int8" if openvino_in_node() else "int8"


def parse_backend(text: str) -> str:
    if text not in OVERHEAD_BACKENDS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(OVERHEAD_BACKENDS)}, got {text!r}")
    return text


def _stamp_of(raw: bytes) -> int:
    """The header stamp (ns) of a serialized sensor_msgs/Image: CDR, the 4-byte encapsulation,
    then ``int32 sec, uint32 nanosec`` in the encoding's byte order (byte 1: 1 = little endian)."""
    order = "<" if raw[1] == 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


def bare_segmenter(model: Path, backend: str, size: tuple[int, int], threads: int,
                   warmup: np.ndarray) -> BareSegmenter:
    """``Segmenter.segment`` of the node's backend, with the node's thread setup and count
    (``sfnet_core.threads``, as ``model_setup.load_model``; bench/node_latency.py bounds OpenMP's
    spinning, as the node), in the thread that runs segment."""
    def load():
        from sfnet_core.inference import Segmenter  # lazy: torch, not needed for --help
        from sfnet_core.threads import apply_threads  # lazy: torch (as above)

        count = apply_threads(threads)
        segmenter = Segmenter.from_checkpoint(model, device="cpu", input_size=size, backend=backend,
                                              threads=count, warmup=False)
        segmenter.segment(warmup)
        segmenter.segment(warmup)  # the second call: caches and allocators settled, as in the node
        return segmenter

    return BareSegmenter(load)


class OutputsClient:
    """Publisher of frames; raw subscribers of labels, colour and every mask (the arrival is taken
    before anything is deserialized), and of the per-frame ``segmentation/timing``."""

    def __init__(self, namespace: str, masks: list[str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sfnet_overhead_bench", context=self.context)
        self.clock = self.node.get_clock()
        self.lock = threading.Lock()
        # signalled on every arrival: the bench waits on it instead of polling, so its own process
        # wakes once per message rather than every few ms while the node's network runs
        self.arrived = threading.Condition(self.lock)
        self.topics = ["labels", "color", *(f"mask/{name}" for name in masks)]
        self.arrivals: dict[int, dict[str, int]] = {}  # stamp -> {topic: arrival ns}
        self.labels: dict[int, bytes] = {}             # stamp -> the serialized labels message
        self.timings: dict[int, dict[str, str]] = {}
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, f"{namespace}/image", qos)
        self.subscriptions = [
            self.node.create_subscription(Image, f"{namespace}/segmentation/{topic}",
                                          lambda raw, topic=topic: self._on_output(topic, raw), qos, raw=True)
            for topic in self.topics]
        self.subscriptions.append(
            self.node.create_subscription(DiagnosticArray, f"{namespace}/segmentation/timing", self._on_timing, qos))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        spin_in_thread(self.executor)

    def _on_output(self, topic: str, raw: bytes) -> None:
        now = self.clock.now().nanoseconds
        stamp = _stamp_of(raw)
        with self.lock:
            self.arrivals.setdefault(stamp, {})[topic] = now
            if topic == "labels":
                self.labels[stamp] = raw
            self.arrived.notify_all()

    def _on_timing(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.timings[stamp] = {kv.key: kv.value for kv in msg.status[0].values}
            self.arrived.notify_all()

    def matched(self) -> bool:
        """Whether the node's image subscription and every output's publisher are matched with ours."""
        return self.publisher.get_subscription_count() >= 1 and all(
            sub.get_publisher_count() >= 1 for sub in self.subscriptions)

    def publish(self, msg: Any) -> int:
        stamp = self.clock.now()
        msg.header.stamp = stamp.to_msg()
        self.publisher.publish(msg)
        return stamp.nanoseconds

    def _complete(self, stamp: int) -> bool:  # with the lock held
        return len(self.arrivals.get(stamp, {})) == len(self.topics) and stamp in self.timings

    def complete(self, stamp: int) -> bool:
        with self.lock:
            return self._complete(stamp)

    def wait_complete(self, stamp: int, timeout: float) -> bool:
        """Sleep until every output of ``stamp`` and its timing came (False after ``timeout`` s)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: self._complete(stamp), timeout)

    def take(self, stamp: int) -> tuple[dict[str, int], dict[str, str], np.ndarray]:
        """The arrivals, the node's timing and the labels of a complete frame (forgotten here)."""
        from rclpy.serialization import deserialize_message  # lazy: rclpy is loaded by now
        from sensor_msgs.msg import Image

        with self.lock:
            arrivals, timing, raw = self.arrivals.pop(stamp), self.timings.pop(stamp), self.labels.pop(stamp)
        return arrivals, timing, np.array(image_to_numpy(deserialize_message(raw, Image)))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()


def _served(client: OutputsClient, msg: Any, timeout: float) -> tuple[int, dict[str, int], dict[str, str],
                                                                        np.ndarray] | None:
    """Publish ``msg`` and wait for every subscribed output of it; None when one did not come."""
    stamp = client.publish(msg)
    if not client.wait_complete(stamp, timeout):
        return None
    return (stamp, *client.take(stamp))


def _stream(client: OutputsClient, messages: list[Any], rate_hz: float, seconds: float,
            timeout: float) -> tuple[int, float, list[float]]:
    """Publish at ``rate_hz`` for ``seconds`` (a camera faster than the node: the mailbox keeps the
    newest frame); (frames sent, complete frames per second, their stamp -> last output ms)."""
    sent: list[int] = []
    deadline = time.monotonic() + seconds
    next_time = time.monotonic()
    while time.monotonic() < deadline:
        sent.append(client.publish(messages[len(sent) % len(messages)]))
        next_time += 1.0 / rate_hz
        time.sleep(max(0.0, next_time - time.monotonic()))
    with contextlib.suppress(TimeoutError):  # the frame in the network when publishing stopped
        wait_for(lambda: any(client.complete(s) for s in sent[-2:]), timeout, "the last outputs")
    time.sleep(0.2)  # its timing message, published right after the images
    done = [(s, max(client.take(s)[0].values())) for s in sent if client.complete(s)]
    if len(done) < 2:
        return len(sent), float("nan"), [(end - s) / 1e6 for s, end in done]
    fps = (len(done) - 1) / ((done[-1][1] - done[0][1]) / 1e9)
    return len(sent), fps, [(end - s) / 1e6 for s, end in done]


def _node_parameters(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    return {"input_size": [args.height, args.width], "diagnostics_period": 1.0, "qos_reliability": "reliable",
            "backend": backend, "mask_classes": list(MASK_CLASSES), "publish_color": True,
            "color_overlay": False, "publish_timing": True, "threads": args.threads}


def run_overhead(args: argparse.Namespace) -> int:
    """Bare ``Segmenter`` and the node, interleaved frame by frame (one in flight), then a stream at
    1.5x the node's rate; prints the report, the check line and a JSON summary (last line)."""
    name = args.backend or default_backend()
    model_kind, backend = OVERHEAD_BACKENDS[name]
    if backend == "openvino" and not openvino_in_node():
        print(f"node_latency.py: error: --backend {name}: the node's backend parameter has no openvino here")
        return 2
    frames = bench_frames(args.frames + 1, args.height, args.width)
    frames, calibration = frames[: args.frames], frames[args.frames:]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sfnet_overhead_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "sfnet_resnet18_random.pt")
        model = prepare_models(checkpoint, tmp, args.height, args.width, [model_kind], calibration)[model_kind]
        log_path = tmp / "node.log"
        node = start_node(node_argv(model, "cpu", "/bench", _node_parameters(args, backend), image_topic=None),
                          log_path)
        bare = bare_segmenter(model, backend, (args.height, args.width), args.threads, frames[0])
        client, code = None, None
        try:
            wait_active(node, log_path, 600)
            runs_in = next((line.split(", backend ", 1)[1].split(", input size")[0]
                            for line in log_path.read_text().splitlines() if "configured in" in line), backend)
            client = OutputsClient("/bench", list(MASK_CLASSES))
            messages = [numpy_to_image(frame, "rgb8") for frame in frames]
            bare_ms0 = bare.run(frames[0])[0]
            timeout = 30 + 10 * bare_ms0 / 1e3
            # Discovery first: a frame published before every output's publisher matched our
            # subscription would wait the whole timeout for an output that never comes. Then retry
            # until a frame comes back complete (the rare frame lost to a match seen on one side only).
            wait_for(client.matched, 300, "discovery of the node's topics")
            wait_for(lambda: _served(client, messages[0], timeout) is not None, 300, "the node's first outputs")
            rows = _interleaved(client, bare, frames, messages, timeout)
            if not rows:
                raise RuntimeError(f"no frame came back with every output:\n{log_path.read_text()}")
            node_ms = percentile([r["node_ms"] for r in rows], 50)
            stream = _stream(client, messages, 1.5 * 1e3 / node_ms, args.stream_seconds or max(5.0, 12 * node_ms / 1e3),
                             timeout)
        finally:
            if client is not None:
                client.close()
            bare.close()
            code = stop_node(node)
    load_after = os.getloadavg()
    summary = _report(args, name, runs_in, rows, stream, (load_before[0], load_after[0]), code)
    print(json.dumps(summary))
    return 0 if code == 0 and len(rows) == args.frames else 1


def _interleaved(client: OutputsClient, bare: BareSegmenter, frames: list[np.ndarray], messages: list[Any],
                 timeout: float) -> list[dict[str, Any]]:
    """Per frame, bare and node one after the other (the order alternating): the bare time, the
    node's stamp -> labels and stamp -> last output, its timing steps, DDS out, labels equality."""
    rows = []
    for i, (frame, msg) in enumerate(zip(frames, messages)):
        if i % 2:
            got, (bare_ms, bare_result) = _served(client, msg, timeout), bare.run(frame)
        else:
            (bare_ms, bare_result), got = bare.run(frame), _served(client, msg, timeout)
        if got is None:
            continue
        stamp, arrivals, timing, labels = got
        bare_labels = bare_result.labels
        last = max(arrivals.values())
        # The instant rendering ended, on the ROS clock; the node reads its clock for publish_time
        # after its last publish, which a subscriber may already have received by then.
        rendered = _ros_ns(timing["publish_time"]) - round(float(timing["send_ms"]) * 1e6)
        rows.append({"bare_ms": bare_ms, "node_ms": (last - stamp) / 1e6,
                     "labels_ms": (arrivals["labels"] - stamp) / 1e6,
                     **{k: float(timing[k]) for k in STAGES if k in timing},
                     "dds_in_ms": float(timing["stamp_to_receive_ms"]), "out_ms": (last - rendered) / 1e6,
                     "send_ms": float(timing["send_ms"]),
                     "equal": float(np.mean(labels == bare_labels)) if labels.shape == bare_labels.shape else 0.0})
    return rows


def _ros_ns(text: str) -> int:
    sec, _, nsec = text.partition(".")
    return int(sec) * 1_000_000_000 + int(nsec)


def _report(args: argparse.Namespace, name: str, runs_in: str, rows: list[dict[str, Any]],
            stream: tuple[int, float, list[float]], load: tuple[float, float], code: int | None) -> dict[str, Any]:
    """Print the tables; the JSON summary's content."""
    def med(key: str) -> float:
        return percentile([r[key] for r in rows if key in r], 50)

    bare_ms, node_ms = med("bare_ms"), med("node_ms")
    ratio = node_ms / bare_ms
    node_lat = [r["node_ms"] for r in rows]
    sent, fps, stream_lat = stream
    threads = f"{args.threads} thread(s)" if args.threads else "default threads (the available cores)"
    print(f"\nnode overhead, {args.height}x{args.width} rgb8 frames, backend {name} ({runs_in}), {threads}, "
          f"labels + colour + masks {','.join(MASK_CLASSES)} subscribed; {len(rows)}/{args.frames} frames, "
          f"bare and node interleaved (order alternating), one in flight; {os.cpu_count()} CPU(s), load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after")
    print(f"{'':34s} {'p50':>9s} {'p99':>9s} {'FPS':>7s}")
    print(f"{'bare Segmenter.segment':34s} {bare_ms:7.1f}ms {percentile([r['bare_ms'] for r in rows], 99):7.1f}ms "
          f"{1e3 / bare_ms:7.2f}")
    print(f"{'node, stamp -> last output':34s} {node_ms:7.1f}ms {percentile(node_lat, 99):7.1f}ms {1e3 / node_ms:7.2f}")
    labels_p99 = percentile([r["labels_ms"] for r in rows], 99)
    print(f"{'node, stamp -> labels':34s} {med('labels_ms'):7.1f}ms {labels_p99:7.1f}ms")
    print(f"{'node, camera at 1.5x its rate':34s} {percentile(stream_lat, 50):7.1f}ms "
          f"{percentile(stream_lat, 99):7.1f}ms {fps:7.2f}  ({len(stream_lat)} of {sent} frames answered)")
    print("node's steps (medians; from its segmentation/timing; out = rendered -> last output arrival: handing "
          "the outputs to DDS (send), transport, the subscriber's callback):")
    stages = ["dds_in_ms", *STAGES, "out_ms"]
    print("  " + "  ".join(f"{k.removesuffix('_ms')} {med(k):.2f} ms ({med(k) / node_ms:.1%})" for k in stages)
          + f"; of which send {med('send_ms'):.2f} ms")
    equal = float(np.mean([r["equal"] for r in rows])) if rows else float("nan")
    print(f"labels equal to the bare Segmenter's: {equal:.4%}")
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"check: node / Segmenter = {ratio:.3f}x (median stamp -> last output / median bare; target <= "
          f"{TARGET_RATIO}x): {verdict}")
    print(f"node stopped with exit code {code}")
    return {"overhead": {"backend": name, "runs_in": runs_in, "frames": len(rows), "bare_p50_ms": round(bare_ms, 2),
                         "node_p50_ms": round(node_ms, 2), "node_p99_ms": round(percentile(node_lat, 99), 2),
                         "ratio": round(ratio, 4), "stream_fps": round(fps, 3),
                         "stream_p50_ms": round(percentile(stream_lat, 50), 2),
                         "stream_p99_ms": round(percentile(stream_lat, 99), 2), "stream_sent": sent,
                         "stream_answered": len(stream_lat), "labels_equal": round(equal, 6),
                         "stages_ms": {k: round(med(k), 3) for k in stages}, "send_ms": round(med("send_ms"), 3),
                         "exit_code": code,
                         "per_frame_bare_node_ms": [[round(r["bare_ms"], 1), round(r["node_ms"], 1)] for r in rows]},
            "height": args.height, "width": args.width, "threads": args.threads, "cpus": os.cpu_count(),
            "load_before": round(load[0], 2), "load_after": round(load[1], 2)}
