"""Delivery: how many camera frames published best effort reach the node's image callback, with
and without the Fast DDS profile (see bench/node_latency.py for the settings and what is counted).

The camera publisher and the plain subscriber are helper processes: ``bench/node_latency.py --role
publisher|subscriber``, driven by stdin lines (``role_publisher``, ``role_subscriber``).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from node_bench.common import (
    REPO_ROOT,
    distinct_names,
    node_argv,
    profile_environment,
    spin_in_thread,
    start_node,
    stop_node,
    wait_active,
    wait_for,
    write_checkpoint,
)
from sfnet_ros.conversions import numpy_to_image
from sfnet_ros.ros_distro import apply_localhost_discovery
from sfnet_ros.tools.ros_args import init_rclpy

DELIVERY_TARGET = 0.99
#: The script the helper processes run (with --role).
SCRIPT = REPO_ROOT / "bench" / "node_latency.py"


def parse_sizes(text: str) -> list[tuple[int, int, float]]:
    """``"1920x1080@30,640x480@5"`` -> [(1920, 1080, 30.0), (640, 480, 5.0)] (width x height @ Hz)."""
    sizes = []
    for item in text.split(","):
        try:
            geometry, rate = item.strip().split("@")
            width, height = (int(v) for v in geometry.lower().split("x"))
            sizes.append((width, height, float(rate)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sizes: expected WIDTHxHEIGHT@HZ items, got {item!r}") from None
        if width <= 0 or height <= 0 or sizes[-1][2] <= 0:
            raise argparse.ArgumentTypeError(f"--sizes: {item!r} must be positive")
    return sizes


def parse_settings(text: str) -> list[str]:
    return distinct_names(text, SETTINGS)


class LineProcess:
    """A helper process (publisher or subscriber role of this script) driven by stdin lines,
    answering on stdout; every wait is bounded."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, extra: list[str]) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--role", role, *extra], env=env, cwd=REPO_ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            start_new_session=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, prefix: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError(f"helper process exited with code {self.process.returncode} "
                                       f"before answering {prefix!r}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {prefix!r} from the helper within {timeout:.0f} s") from None
                continue
            if line.startswith(prefix):
                return line.split()[1:]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def role_publisher(subscribers: int) -> int:
    """stdin ``burst W H HZ N TAG`` -> publishes N rgb8 frames (frame_id TAG) at HZ, answers
    ``sent TAG N SECONDS``; ``ready`` once ``subscribers`` subscriptions have matched."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    init_rclpy("sfnet_bench_camera", [])  # as every tool: the profile unless switched off or the user's
    node = rclpy.create_node("sfnet_bench_camera")
    publisher = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: publisher.get_subscription_count() >= subscribers, 120, "the subscriptions")
    print("ready", flush=True)
    messages: dict[tuple[int, int], object] = {}
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        width, height, rate, count, tag = int(words[1]), int(words[2]), float(words[3]), int(words[4]), words[5]
        if (width, height) not in messages:
            noise = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
            messages[(width, height)] = numpy_to_image(noise, "rgb8")
        msg = messages[(width, height)]
        msg.header.frame_id = tag
        start = next_time = time.monotonic()
        for i in range(count):
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1, i  # only the count matters
            publisher.publish(msg)
            next_time += 1.0 / rate
            time.sleep(max(0.0, next_time - time.monotonic()))
        print(f"sent {tag} {count} {time.monotonic() - start:.3f}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def role_subscriber() -> int:
    """Counts frames per frame_id with the node's input QoS; stdin ``count TAG`` -> ``count TAG N``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    init_rclpy("sfnet_bench_plain_subscriber", [])
    node = rclpy.create_node("sfnet_bench_plain_subscriber")
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def on_image(msg) -> None:
        with lock:
            counts[msg.header.frame_id] = counts.get(msg.header.frame_id, 0) + 1

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(Image, "/camera/image_raw", on_image, qos)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        with lock:
            print(f"count {words[1]} {counts.get(words[1], 0)}", flush=True)
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


class DiagnosticsReader:
    """/diagnostics of one domain, read in this process: the node's ``frames_received_total``."""

    def __init__(self, domain: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(f"sfnet_bench_diagnostics_{domain}", context=self.context)
        self.lock = threading.Lock()
        self.latest: dict[str, str] = {}
        self.arrivals = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        spin_in_thread(self.executor)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "frames_received_total" in values:
                with self.lock:
                    self.latest = values
                    self.arrivals += 1

    def next_received_total(self, timeout: float) -> int:
        """``frames_received_total`` of the next /diagnostics message to arrive from now on (so it
        was published after this call: it counts every frame the node received before)."""
        with self.lock:
            start = self.arrivals
        wait_for(lambda: self.arrivals > start, timeout, "fresh /diagnostics from the node")
        with self.lock:
            return int(self.latest["frames_received_total"])

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()


#: Delivery settings: name -> (environment of the node and the plain subscriber, of the camera), see
#: node_environment: ``default`` = no profile anywhere (switched off); ``profile`` = the launch file's
#: variables, exported for the whole stack; ``node-only`` = the node's side only; ``direct`` = the node
#: started without launch and every process from a shell without any profile variable (each applies
#: the profile itself).
SETTINGS = {"default": ("none", "none"), "profile": ("auto", "auto"), "node-only": ("auto", "none"),
            "direct": ("shell", "shell")}


class Stack:
    """Node + camera publisher + plain subscriber in a ROS domain of their own, with or without
    the Fast DDS profile: ``profile`` = the whole stack alike, as docs/transport.md says to deploy
    it; ``node-only`` = only the node's side (the launch file's default with a camera driver
    started without the exported profile)."""

    def __init__(self, name: str, domain: int, checkpoint: Path, device: str, tmp: Path,
                 node_parameters: dict[str, object]) -> None:
        self.name = name
        base = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
        apply_localhost_discovery(base)
        node_profile, camera_profile = SETTINGS[name]
        self.env = profile_environment(base, node_profile)
        camera_env = profile_environment(base, camera_profile)
        self.log_path = tmp / f"node_{name}.log"
        self.node: subprocess.Popen | None = None
        self.publisher = self.subscriber = self.diagnostics = None
        self.node = start_node(node_argv(checkpoint, device, "/bench", node_parameters), self.log_path, self.env)
        self.diagnostics = DiagnosticsReader(domain)
        self.subscriber = LineProcess("subscriber", self.env, tmp / f"subscriber_{name}.log", [])
        self.publisher = LineProcess("publisher", camera_env, tmp / f"publisher_{name}.log", ["--subscribers", "2"])

    def wait_ready(self, timeout: float) -> None:
        wait_active(self.node, self.log_path, timeout, f"the {self.name} node")
        self.subscriber.expect("ready", timeout)
        self.publisher.expect("ready", timeout)

    def burst(self, width: int, height: int, rate: float, count: int, tag: str,
              settle: float) -> dict[str, float]:
        """Publish ``count`` frames; returns offered / node / plain subscriber counts."""
        before = self.diagnostics.next_received_total(60)
        self.publisher.send(f"burst {width} {height} {rate} {count} {tag}")
        _, sent, seconds = self.publisher.expect(f"sent {tag}", 60 + 4 * count / rate)
        # Frames still in flight: read both counts until they hold still for ``settle`` seconds.
        readings: list[tuple[int, int, float]] = []
        deadline = time.monotonic() + 120
        while True:
            after = self.diagnostics.next_received_total(60)
            self.subscriber.send(f"count {tag}")
            plain = int(self.subscriber.expect(f"count {tag}", 30)[1])
            now = time.monotonic()
            readings.append((after, plain, now))
            if readings[0][:2] != (after, plain):
                readings = [readings[-1]]
            elif now - readings[0][2] >= settle or now > deadline:
                break
        return {"offered": int(sent), "node": after - before, "plain": plain, "seconds": float(seconds)}

    def close(self) -> None:
        for helper in (self.publisher, self.subscriber):
            if helper is not None:
                helper.close()
        if self.diagnostics is not None:
            self.diagnostics.close()
        if self.node is not None:
            stop_node(self.node)


def run_delivery(args: argparse.Namespace) -> int:
    """Interleaved bursts through the ``default`` and ``profile`` stacks; prints the table and a
    JSON summary (last line)."""
    sizes = args.sizes
    settings = args.settings
    # Small network input and frames over 8.3 MP dropped before inference (the node's own limit),
    # so the node's CPU use stays that of a real-time configuration; what is counted is delivery.
    node_parameters: dict[str, object] = {"input_size": [128, 256], "max_input_pixels": 8294400,
                                          "diagnostics_period": 0.5}
    totals = {(w, h, r, name): {"offered": 0, "node": 0, "plain": 0, "seconds": 0.0}
              for w, h, r in sizes for name in settings}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sfnet_delivery_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "sfnet_resnet18_random.pt")
        # this process's domain and the next ones (_apply_profile set it: the caller's, or from the pid)
        base_domain = int(os.environ["ROS_DOMAIN_ID"])
        stacks: list[Stack] = []
        try:
            for index, name in enumerate(settings):
                stacks.append(Stack(name, base_domain + index, checkpoint, args.device, tmp, node_parameters))
            for stack in stacks:
                stack.wait_ready(300)
            for round_index in range(args.rounds):
                for width, height, rate in sizes:
                    count = max(5, round(rate * args.burst_seconds))
                    # Alternate the order each round, so neither setting always goes first.
                    for stack in stacks if round_index % 2 == 0 else stacks[::-1]:
                        tag = f"r{round_index}_{width}x{height}_{stack.name}"
                        result = stack.burst(width, height, rate, count, tag, args.settle)
                        total = totals[(width, height, rate, stack.name)]
                        for key in total:
                            total[key] += result[key]
                        print(f"round {round_index + 1}/{args.rounds} {width}x{height}@{rate:g} {stack.name:8s}: "
                              f"offered {result['offered']}, node {result['node']}, plain {result['plain']}",
                              flush=True)
        finally:
            for stack in stacks:
                stack.close()
    load_after = os.getloadavg()
    print(f"\ndelivery, best effort, {args.rounds} interleaved round(s); load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPU(s)")
    print(f"{'frame':>18s}  {'setting':8s}  {'offered':>7s}  {'node':>13s}  {'plain sub':>13s}")
    summary = []
    for (width, height, rate, name), total in totals.items():
        offered = max(total["offered"], 1)
        node_share, plain_share = total["node"] / offered, total["plain"] / offered
        print(f"{f'{width}x{height}@{rate:g}Hz':>18s}  {name:8s}  {total['offered']:7d}  "
              f"{total['node']:6d} ({node_share:4.0%})  {total['plain']:6d} ({plain_share:4.0%})")
        summary.append({"width": width, "height": height, "rate_hz": rate, "setting": name,
                        "offered": total["offered"], "node": total["node"], "plain": total["plain"],
                        "publish_seconds": round(total["seconds"], 2)})
    for width, height, rate in sizes if "profile" in settings else []:
        result = totals[(width, height, rate, "profile")]
        share = result["node"] / max(result["offered"], 1)
        print(f"{width}x{height}@{rate:g}Hz with the profile: {share:.1%} of the offered frames reached the node "
              f"(target >= {DELIVERY_TARGET:.0%}): {'PASS' if share >= DELIVERY_TARGET else 'FAIL'}")
    print(json.dumps({"delivery": summary, "rounds": args.rounds, "cpus": os.cpu_count(),
                      "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2)}))
    return 0
