"""End-to-end latency of sfnet_node through DDS, against the bare network on the same frames.

    .venv/bin/python bench/node_latency.py [--height 512 --width 1024 --frames 20 --device auto]

1. Writes a random-weight sfnet_resnet18 checkpoint into a temporary folder.
2. Starts the node process (as the launch file does) with reliable keep-last-1 QoS.
3. For each benchmark frame, side by side: the bare ``Segmenter.segment`` in this process (the
   node idle meanwhile), then the same frame published as sensor_msgs/Image rgb8 to the node,
   waiting for its labels: end-to-end latency = arrival of ``segmentation/labels`` minus the
   frame's header stamp. Interleaving frame by frame makes background load hit both alike.
   Overhead ratio = median end-to-end / median bare (target <= 1.15).
4. Overload: publishes at 10x the rate the node achieved for a while; reports the latency of the
   labels that arrive (p50/p95/max: bounded, because only the newest frame per camera is kept)
   and the drops the node counted, read from /diagnostics.

Only the labels topic is subscribed, so the node builds no colour/confidence images: the
comparison is like for like. Numbers depend on the machine; run it on a quiet one.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.15


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _frames(count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        base = np.stack([(x // 4 + 40 * i) % 256, (y // 3) % 256, ((x + y) // 5) % 256], axis=-1)
        frames.append(((base + rng.integers(0, 30, size=base.shape)) % 256).astype(np.uint8))
    return frames


def write_checkpoint(path: Path) -> Path:
    import torch

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model

    torch.manual_seed(0)
    model = build_model("sfnet_resnet18", 19)
    save_checkpoint(path, model, "sfnet_resnet18", ClassTable.from_yaml(REPO_ROOT / "config" / "classes" / "cityscapes.yaml"))
    return path


class BareSegmenter:
    """``Segmenter.segment`` timed in one worker thread of this process, as the node runs it
    (on a busy CPU, PyTorch's intra-op thread pool behaves very differently when driven from the
    main thread, which would skew the comparison)."""

    def __init__(self, checkpoint: Path, device: str, warmup_frame: np.ndarray) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare_segmenter")
        self.segmenter = self._pool.submit(self._load, checkpoint, device, warmup_frame).result()
        self.description = f"{self.segmenter.device} {self.segmenter.precision}"

    @staticmethod
    def _load(checkpoint: Path, device: str, warmup_frame: np.ndarray):
        from sfnet_core.inference import Segmenter

        segmenter = Segmenter.from_checkpoint(checkpoint, device=device, input_size=None, warmup=False)
        segmenter.segment(warmup_frame)  # warm-up at the benchmark size
        return segmenter

    def time_ms(self, frame: np.ndarray) -> float:
        return self._pool.submit(self._timed, frame).result()

    def _timed(self, frame: np.ndarray) -> float:
        start = time.perf_counter()
        self.segmenter.segment(frame)
        if self.segmenter.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        self._pool.submit(self._release).result()
        self._pool.shutdown()

    def _release(self) -> None:
        del self.segmenter


class Client:
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
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001, S110 - ends with the context
            pass

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


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=20, help="frames for the bare and end-to-end runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overload", type=float, default=10.0, help="overload factor")
    parser.add_argument("--overload-seconds", type=float, default=0.0,
                        help="overload duration (default: 12 frame times, at least 5 s)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    from sfnet_ros.conversions import numpy_to_image

    frames = _frames(args.frames, args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="sfnet_bench_") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "sfnet_resnet18_random.pt")
        bare = BareSegmenter(checkpoint, args.device, frames[0])
        bare_ms = bare.time_ms(frames[0])  # a first estimate, for the time-outs below

        log_path = Path(tmp) / "node.log"
        command = [sys.executable, "-m", "sfnet_ros.node", "--ros-args",
                   "--params-file", str(REPO_ROOT / "config" / "sfnet.yaml"),
                   "-p", f"checkpoint:={checkpoint}", "-p", f"device:={args.device}",
                   "-p", "diagnostics_period:=1.0", "-p", "qos_reliability:=reliable", "-r", "image:=/camera/image_raw", "-r", "__ns:=/bench"]
        with open(log_path, "wb") as log:
            node = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        client = None
        try:
            _wait(lambda: "active:" in log_path.read_text() or node.poll() is not None, 300, "the node to activate")
            if node.poll() is not None:
                raise RuntimeError(f"node exited:\n{log_path.read_text()}")
            client = Client()
            _wait(lambda: client.publisher.get_subscription_count() > 0, 60, "the node's subscription")
            messages = [numpy_to_image(f, "rgb8") for f in frames]

            # Steady state: one frame in flight at a time.
            def served(msg, timeout: float) -> float | None:
                stamp = client.publish(msg)
                try:
                    arrived = _wait(lambda: client.arrival(stamp), timeout, "labels")
                except TimeoutError:
                    return None
                return (arrived - stamp) / 1e6
            # The first frames also wait for discovery of our labels subscription (best effort:
            # a frame published before it is simply lost, so retry).
            _wait(lambda: served(messages[0], 5 + 3 * bare_ms / 1e3) is not None, 120, "the first labels")
            diagnostics_mark = len(client.diagnostics)
            bare_times, latencies = [], []
            for frame, msg in zip(frames, messages):
                bare_times.append(bare.time_ms(frame))
                if (lat := served(msg, 30 + 10 * bare_ms / 1e3)) is not None:
                    latencies.append(lat)
            bare.close()
            bare_ms = float(np.median(bare_times))
            e2e_ms = float(np.median(latencies))
            ratio = e2e_ms / bare_ms
            print(f"bare Segmenter.segment {args.height}x{args.width} on {bare.description}: median "
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
            _wait(lambda: any(client.arrival(s) for s in sent[-3:]), 30 + 10 * bare_ms / 1e3, "the last labels")
            lat = [(client.arrival(s) - s) / 1e6 for s in sent if client.arrival(s)]
            _wait(lambda: (v := client.camera_values()) and int(v["frames_received_total"]) > int(
                before.get("frames_received_total", 0)), 10, "fresh diagnostics")
            after = client.camera_values() or {}
            stale = int(after.get("dropped_stale_total", 0)) - int(before.get("dropped_stale_total", 0))
            received = int(after.get("frames_received_total", 0)) - int(before.get("frames_received_total", 0))
            print(f"overload x{args.overload:g}: sent {len(sent)} frames at {1 / period:.1f} Hz for {duration:.1f} s; "
                  f"node received {received}, dropped stale {stale} (from /diagnostics), "
                  f"labels for {len(lat)}")
            bound = 3 * e2e_ms
            print(f"overload latency: p50 {_percentile(lat, 50):.1f} ms, p95 {_percentile(lat, 95):.1f} ms, "
                  f"max {max(lat):.1f} ms (bounded if max <= 3 x steady median = {bound:.0f} ms: "
                  f"{'PASS' if max(lat) <= bound else 'FAIL'})")
        finally:
            if client is not None:
                client.close()
            if node.poll() is None:
                node.send_signal(signal.SIGINT)
                try:
                    code = node.wait(30)
                    print(f"node stopped with exit code {code}")
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
                    print("node did not stop on SIGINT within 30 s: killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
