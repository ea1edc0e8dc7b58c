"""Latency: the node end to end through DDS, against the bare network on the same frames, then
under overload (see bench/node_latency.py for what is measured and how)."""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

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
from sfnet_ros.conversions import numpy_to_image

TARGET_RATIO = 1.15


def bare_segmenter(checkpoint: Path, device: str, warmup_frame: np.ndarray) -> BareSegmenter:
    """The bare ``Segmenter`` of the node's defaults, warmed up at the benchmark size."""
    def load():
        from sfnet_core.inference import Segmenter  # lazy: torch, not needed for --help

        segmenter = Segmenter.from_checkpoint(checkpoint, device=device, input_size=None, warmup=False)
        segmenter.segment(warmup_frame)
        return segmenter

    return BareSegmenter(load)


class LatencyClient:
    """Publisher of frames and subscriber of labels and /diagnostics, spun in a thread."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sfnet_latency_bench", context=self.context)
        self.clock = self.node.get_clock()
        self.arrivals: dict[int, int] = {}  # stamp ns -> arrival ns (ROS clock)
        self.diagnostics: list = []
        self.lock = threading.Lock()
        # Reliable, keep last 1 (the node is told the same): Fast DDS loses best-effort messages of
        # a few MB between processes (fragments) on a busy machine, which would measure DDS, not us.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, "/camera/image_raw", qos)
        self.node.create_subscription(Image, "/bench/segmentation/labels", self._on_labels, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        spin_in_thread(self.executor)

    def _on_labels(self, msg) -> None:
        now = self.clock.now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.arrivals[stamp] = now

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            self.diagnostics.append(msg)

    def publish(self, msg) -> int:
        stamp = self.clock.now()
        msg.header.stamp = stamp.to_msg()
        self.publisher.publish(msg)
        return stamp.nanoseconds

    def arrival(self, stamp: int) -> int | None:
        with self.lock:
            return self.arrivals.get(stamp)

    def camera_values(self) -> dict[str, str] | None:
        with self.lock:
            for msg in reversed(self.diagnostics):
                for status in msg.status:
                    if status.name.endswith("/camera/image_raw"):
                        return {kv.key: kv.value for kv in status.values}
        return None

    def node_latency_ms(self, since: int) -> float:
        """Median of the node's own receive -> publish window means in /diagnostics since ``since``
        (a count of diagnostics messages): the share of the end-to-end time spent in the node."""
        means = []
        with self.lock:
            for msg in self.diagnostics[since:]:
                for status in msg.status:
                    if status.name.endswith("/camera/image_raw"):
                        value = {kv.key: kv.value for kv in status.values}["latency_receive_to_publish_ms_mean"]
                        if value != "nan":
                            means.append(float(value))
        return float(np.median(means)) if means else float("nan")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()


def run_latency(args: argparse.Namespace) -> int:
    """Steady state (bare and end to end, interleaved frame by frame), then overload; prints the
    report."""
    frames = bench_frames(args.frames, args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="sfnet_bench_") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "sfnet_resnet18_random.pt")
        bare = bare_segmenter(checkpoint, args.device, frames[0])
        runs_on = f"{bare.segmenter.device} {bare.segmenter.precision}"
        bare_ms = bare.run(frames[0])[0]  # a first estimate, for the time-outs below

        log_path = Path(tmp) / "node.log"
        node = start_node(node_argv(checkpoint, args.device, "/bench",
                                    {"diagnostics_period": 1.0, "qos_reliability": "reliable"}), log_path)
        client = None
        try:
            wait_active(node, log_path, 300)
            client = LatencyClient()
            wait_for(lambda: client.publisher.get_subscription_count() > 0, 60, "the node's subscription")
            messages = [numpy_to_image(f, "rgb8") for f in frames]

            # Steady state: one frame in flight at a time.
            def served(msg, timeout: float) -> float | None:
                stamp = client.publish(msg)
                try:
                    arrived = wait_for(lambda: client.arrival(stamp), timeout, "labels")
                except TimeoutError:
                    return None
                return (arrived - stamp) / 1e6
            # The first frames also wait for discovery of our labels subscription (best effort:
            # a frame published before it is simply lost, so retry).
            wait_for(lambda: served(messages[0], 5 + 3 * bare_ms / 1e3) is not None, 120, "the first labels")
            diagnostics_mark = len(client.diagnostics)
            bare_times, latencies = [], []
            for frame, msg in zip(frames, messages):
                bare_times.append(bare.run(frame)[0])
                if (lat := served(msg, 30 + 10 * bare_ms / 1e3)) is not None:
                    latencies.append(lat)
            bare.close()
            bare_ms = float(np.median(bare_times))
            e2e_ms = float(np.median(latencies))
            ratio = e2e_ms / bare_ms
            print(f"bare Segmenter.segment {args.height}x{args.width} on {runs_on}: median "
                  f"{bare_ms:.1f} ms over {len(bare_times)} frames, interleaved with the end-to-end runs")
            print(f"end-to-end (publish -> labels arrival) over DDS: median {e2e_ms:.1f} ms over "
                  f"{len(latencies)}/{len(messages)} frames, max {max(latencies):.1f} ms")
            print(f"  of which inside the node (receive -> publish, from /diagnostics): median "
                  f"{client.node_latency_ms(diagnostics_mark):.1f} ms; the rest is DDS transport both ways")
            verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
            print(f"overhead ratio end-to-end / bare = {ratio:.3f} (target <= {TARGET_RATIO}): {verdict}")

            # Overload: 10x the achieved rate.
            before = client.camera_values() or {}
            period = e2e_ms / 1e3 / args.overload
            duration = args.overload_seconds or max(5.0, 12 * e2e_ms / 1e3)
            sent: list[int] = []
            deadline = time.monotonic() + duration
            next_time = time.monotonic()
            i = 0
            while time.monotonic() < deadline:
                sent.append(client.publish(messages[i % len(messages)]))
                i += 1
                next_time += period
                time.sleep(max(0.0, next_time - time.monotonic()))
            # Let the last frame come through, then read the counters.
            wait_for(lambda: any(client.arrival(s) for s in sent[-3:]), 30 + 10 * bare_ms / 1e3, "the last labels")
            lat = [(client.arrival(s) - s) / 1e6 for s in sent if client.arrival(s)]
            wait_for(lambda: (v := client.camera_values()) and int(v["frames_received_total"]) > int(
                before.get("frames_received_total", 0)), 10, "fresh diagnostics")
            after = client.camera_values() or {}
            stale = int(after.get("dropped_stale_total", 0)) - int(before.get("dropped_stale_total", 0))
            received = int(after.get("frames_received_total", 0)) - int(before.get("frames_received_total", 0))
            print(f"overload x{args.overload:g}: sent {len(sent)} frames at {1 / period:.1f} Hz for {duration:.1f} s; "
                  f"node received {received}, dropped stale {stale} (from /diagnostics), "
                  f"labels for {len(lat)}")
            bound = 3 * e2e_ms
            print(f"overload latency: p50 {percentile(lat, 50):.1f} ms, p95 {percentile(lat, 95):.1f} ms, "
                  f"max {max(lat):.1f} ms (bounded if max <= 3 x steady median = {bound:.0f} ms: "
                  f"{'PASS' if max(lat) <= bound else 'FAIL'})")
        finally:
            if client is not None:
                client.close()
            if node.poll() is None:
                code = stop_node(node)
                print("node did not stop on SIGINT within 30 s: killed" if code is None
                      else f"node stopped with exit code {code}")
    return 0
