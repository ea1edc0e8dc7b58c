"""End-to-end latency of sfnet_node through DDS, against the bare network on the same frames.

    .venv/bin/python bench/node_latency.py [--height 512 --width 1024 --frames 20 --device auto]

1. Writes a random-weight sfnet_resnet18 checkpoint into a temporary folder.
2. Starts the node process (as the launch file does, with the Fast DDS profile of
   config/fastdds_large_frames.xml, which this process's publisher loads too: ``--fastdds-profile``)
   with reliable keep-last-1 QoS.
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

Delivery (``--delivery``): how many camera frames published best effort reach the node's image
callback, with and without the Fast DDS profile (config/fastdds_large_frames.xml, docs/transport.md)::

    .venv/bin/python bench/node_latency.py --delivery [--sizes 640x480@5,1920x1080@30,4000x3000@2 --rounds 3]

For each setting (``default``: no profile anywhere, every process's own application switched off
with ``SFNET_FASTDDS_PROFILE=off``; ``profile``: the profile exported for the whole stack, camera
publisher included, as the launch file sets it for the node; optionally ``node-only``: the node's
side only, a camera driver started without it; ``direct``: nothing exported, the node started
without launch, each process applying the profile itself as every process of this package does)
three processes share one ROS domain: the node, a camera publisher (rgb8, best effort,
keep last 5 like a camera driver's sensor-data QoS) and a plain subscriber with the node's input
QoS (best effort, keep last 1), for comparison. The settings run interleaved, burst by burst,
so background load hits both alike. Counted: frames the publisher offered; frames the node's
callback received (``frames_received_total`` on /diagnostics, before and after each burst); frames
the plain subscriber received. No timing enters a count; the load average is printed with them.
The last line is a JSON summary.

Backends (``--backends``): the node's latency per inference backend (the ``backend`` parameter,
issue 12), side by side::

    .venv/bin/python bench/node_latency.py --backends torch,onnxruntime,int8 [--height 512 --width 1024 --frames 20]

Writes the random-weight checkpoint, exports it as a fixed-size self-describing ``.onnx`` (fp32)
and quantises that to int8 (QDQ, calibrated on ``--calibration-frames`` frames that are not timed),
starts one node per backend (``/bench_<name>``, ``input_size`` = the frame size, so nothing is
resized), and sends every frame to each node in turn, one frame in flight, the order rotating
frame by frame. Per backend: end-to-end latency (publish -> labels arrival), the node's own
receive -> publish and inference times of each frame (from its ``segmentation/timing``), the
speed-up over torch and the share of labels equal to the torch node's. Last line: JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
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
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: sfnet_ros.transport_profile's switch (``off``: no process of the package applies the profile).
SWITCH_VARIABLE = "SFNET_FASTDDS_PROFILE"
DELIVERY_TARGET = 0.99


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
    classes = ClassTable.from_yaml(REPO_ROOT / "config" / "classes" / "cityscapes.yaml")
    save_checkpoint(path, model, "sfnet_resnet18", classes)
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
        with contextlib.suppress(Exception):  # ends with the context
            self.executor.spin()

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


# -- delivery: frames offered by a camera publisher vs frames reaching the node --------------------


def node_environment(base: dict[str, str], profile: str) -> dict[str, str]:
    """``base`` with the Fast DDS profile variables set as the launch file sets them (``auto``:
    this checkout's profile unless ``base`` names one; a path: that file), removed and the
    processes' own application switched off (``none``: Fast DDS's defaults), or removed with the
    switch left unset (``shell``: a shell that never heard of the profile; every process of the
    package then applies it itself, sfnet_ros.transport_profile)."""
    from sfnet_ros.launch_support import fastdds_profile_environment

    env = dict(base)
    if profile in ("none", "shell"):
        for name in (*PROFILE_VARIABLES, SWITCH_VARIABLE):
            env.pop(name, None)
        if profile == "none":
            env[SWITCH_VARIABLE] = "off"
        return env
    env.update(fastdds_profile_environment(profile, env, FASTDDS_PROFILE, env.get("ROS_DISTRO")))
    return env


def node_command(checkpoint: Path, device: str, namespace: str, extra: list[str],
                 image_topic: str | None = "/camera/image_raw") -> list[str]:
    """The command line launch/sfnet.launch.py amounts to for one camera on ``image_topic``
    (None: no remapping, the node's own ``<namespace>/image``)."""
    from sfnet_ros.launch_support import camera_plan

    command = [sys.executable, "-m", "sfnet_ros.node", "--ros-args",
               "--params-file", str(REPO_ROOT / "config" / "sfnet.yaml"),
               "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}", *extra]
    if image_topic is not None:
        for source, target in camera_plan("", "", image_topic).remappings:
            command += ["-r", f"{source}:={target}"]
    return command + ["-r", f"__ns:={namespace}"]


def _parse_sizes(text: str) -> list[tuple[int, int, float]]:
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


def _parse_settings(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--settings: expected distinct names from {', '.join(SETTINGS)}, got {text!r}")
    return names


class _LineProcess:
    """A helper process (publisher or subscriber role of this script) driven by stdin lines,
    answering on stdout; every wait is bounded."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, extra: list[str]) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra], env=env, cwd=REPO_ROOT,
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


def _role_publisher(subscribers: int) -> int:
    """stdin ``burst W H HZ N TAG`` -> publishes N rgb8 frames (frame_id TAG) at HZ, answers
    ``sent TAG N SECONDS``; ``ready`` once ``subscribers`` subscriptions have matched."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from sfnet_ros.conversions import numpy_to_image
    from sfnet_ros.tools.ros_args import init_rclpy

    init_rclpy("sfnet_bench_camera", [])  # as every tool: the profile unless switched off or the user's
    node = rclpy.create_node("sfnet_bench_camera")
    publisher = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    _wait(lambda: publisher.get_subscription_count() >= subscribers, 120, "the subscriptions")
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


def _role_subscriber() -> int:
    """Counts frames per frame_id with the node's input QoS; stdin ``count TAG`` -> ``count TAG N``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from sfnet_ros.tools.ros_args import init_rclpy

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


class _Diagnostics:
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
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends with the context
            self.executor.spin()

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
        _wait(lambda: self.arrivals > start, timeout, "fresh /diagnostics from the node")
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


class _Stack:
    """Node + camera publisher + plain subscriber in a ROS domain of their own, with or without
    the Fast DDS profile: ``profile`` = the whole stack alike, as docs/transport.md says to deploy
    it; ``node-only`` = only the node's side (the launch file's default with a camera driver
    started without the exported profile)."""

    def __init__(self, name: str, domain: int, checkpoint: Path, device: str, tmp: Path,
                 node_parameters: list[str]) -> None:
        self.name = name
        base = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                "ROS_LOCALHOST_ONLY": "1", "PYTHONUNBUFFERED": "1"}
        node_profile, camera_profile = SETTINGS[name]
        self.env = node_environment(base, node_profile)
        camera_env = node_environment(base, camera_profile)
        self.log_path = tmp / f"node_{name}.log"
        self.node = None
        self.publisher = self.subscriber = self.diagnostics = None
        with open(self.log_path, "wb") as log:
            self.node = subprocess.Popen(node_command(checkpoint, device, "/bench", node_parameters), env=self.env,
                                         cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.diagnostics = _Diagnostics(domain)
        self.subscriber = _LineProcess("subscriber", self.env, tmp / f"subscriber_{name}.log", [])
        self.publisher = _LineProcess("publisher", camera_env, tmp / f"publisher_{name}.log", ["--subscribers", "2"])

    def wait_ready(self, timeout: float) -> None:
        _wait(lambda: "active:" in self.log_path.read_text() or self.node.poll() is not None, timeout,
              f"the {self.name} node to activate")
        if self.node.poll() is not None:
            raise RuntimeError(f"the {self.name} node exited:\n{self.log_path.read_text()}")
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
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGINT)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(10)


def run_delivery(args: argparse.Namespace) -> int:
    """Interleaved bursts through the ``default`` and ``profile`` stacks; prints the table and a
    JSON summary (last line)."""
    sizes = args.sizes
    settings = args.settings
    # Small network input and frames over 8.3 MP dropped before inference (the node's own limit),
    # so the node's CPU use stays that of a real-time configuration; what is counted is delivery.
    node_parameters = ["-p", "input_size:=[128, 256]", "-p", "max_input_pixels:=8294400",
                       "-p", "diagnostics_period:=0.5"]
    totals = {(w, h, r, name): {"offered": 0, "node": 0, "plain": 0, "seconds": 0.0}
              for w, h, r in sizes for name in settings}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sfnet_delivery_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "sfnet_resnet18_random.pt")
        # this process's domain and the next ones (_apply_profile set it: the caller's, or from the pid)
        base_domain = int(os.environ["ROS_DOMAIN_ID"])
        stacks: list[_Stack] = []
        try:
            for index, name in enumerate(settings):
                stacks.append(_Stack(name, base_domain + index, checkpoint, args.device, tmp, node_parameters))
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


# -- backends: one node per inference backend, the same frames interleaved ------------------------

#: ``--backends`` names -> (what the row says, how the node is configured).
BACKEND_ROWS = {
    "torch": "torch eager fp32 (.pt)",
    "onnxruntime": "onnxruntime fp32 (.onnx)",
    "int8": "onnxruntime int8 (.onnx, QDQ)",
}


def _parse_backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKEND_ROWS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--backends: expected distinct names from {', '.join(BACKEND_ROWS)}, got {text!r}")
    return names


def prepare_models(checkpoint: Path, folder: Path, height: int, width: int, backends: list[str],
                   calibration: list[np.ndarray]) -> dict[str, Path]:
    """The model file each backend's node loads: the checkpoint for torch, a fixed-size fp32
    ``.onnx`` (sfnet-export's library call) and its int8 quantisation calibrated on
    ``calibration`` frames (normalised exactly as the Segmenter feeds the network)."""
    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.export import export_onnx, quantize_int8
    from sfnet_core.inference import Segmenter
    from sfnet_core.inference.predict import STRIDE

    models = {"torch": checkpoint}
    if not {"onnxruntime", "int8"} & set(backends):
        return models
    canvas = (-(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE)
    fp32 = export_onnx(load_checkpoint(checkpoint), folder / "model_fp32.onnx", height=canvas[0], width=canvas[1])
    models["onnxruntime"] = fp32
    if "int8" in backends:
        segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", input_size=(height, width),
                                              warmup=False)
        batches = [segmenter.preprocess(frame).numpy() for frame in calibration]
        models["int8"] = quantize_int8(fp32, folder / "model_int8.onnx", batches,
                                       calibration_source=f"{len(batches)} synthetic bench frames")
    return {name: models[name] for name in backends}


class BackendClient:
    """Publishers of frames to each backend's node and subscribers of its labels (reliable, keep
    last 1, as the nodes are told) and of its per-frame ``segmentation/timing``, spun in a thread."""

    def __init__(self, names: list[str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sfnet_backend_bench", context=self.context)
        self.clock = self.node.get_clock()
        self.lock = threading.Lock()
        self.arrivals: dict[tuple[str, int], tuple[int, np.ndarray]] = {}  # (backend, stamp) -> (ns, labels)
        self.timings: dict[tuple[str, int], dict[str, str]] = {}  # (backend, stamp) -> timing values
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {name: self.node.create_publisher(Image, f"/bench_{name}/image", qos) for name in names}
        for name in names:
            self.node.create_subscription(Image, f"/bench_{name}/segmentation/labels",
                                          lambda msg, name=name: self._on_labels(name, msg), qos)
            self.node.create_subscription(DiagnosticArray, f"/bench_{name}/segmentation/timing",
                                          lambda msg, name=name: self._on_timing(name, msg), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends with the context
            self.executor.spin()

    def _on_labels(self, name: str, msg) -> None:
        from sfnet_ros.conversions import image_to_numpy

        now = self.clock.now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        labels = np.array(image_to_numpy(msg))
        with self.lock:
            self.arrivals[(name, stamp)] = (now, labels)

    def _on_timing(self, name: str, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.timings[(name, stamp)] = {kv.key: kv.value for kv in msg.status[0].values}

    def serve(self, name: str, msg, timeout: float) -> tuple[float, np.ndarray, dict[str, str]] | None:
        """Publish ``msg`` to ``name``'s node now; (publish -> labels arrival ms, labels, the node's
        timing of that frame) or None when the labels did not come."""
        stamp = self.clock.now()
        key = (name, stamp.nanoseconds)
        msg.header.stamp = stamp.to_msg()
        self.publishers[name].publish(msg)
        try:
            _wait(lambda: key in self.arrivals, timeout, f"labels from {name}")
            # Published right after the labels, on a topic of its own.
            _wait(lambda: key in self.timings, 30, f"the timing of a frame from {name}")
        except TimeoutError:
            return None
        with self.lock:
            arrived, labels = self.arrivals.pop(key)
            timing = self.timings.pop(key)
        return (arrived - stamp.nanoseconds) / 1e6, labels, timing

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()


def run_backends(args: argparse.Namespace) -> int:
    """One node per backend (all started as the launch file starts them, at input_size = the frame
    size, stretch = no resize), the same frames sent to each in turn, one in flight at a time,
    the order rotating frame by frame; prints a row per backend and a JSON summary (last line)."""
    from sfnet_ros.conversions import numpy_to_image

    names = args.backends
    frames = _frames(args.frames + args.calibration_frames, args.height, args.width)
    frames, calibration = frames[: args.frames], frames[args.frames:]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sfnet_backends_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "sfnet_resnet18_random.pt")
        prepare_started = time.monotonic()
        models = prepare_models(checkpoint, tmp, args.height, args.width, names, calibration)
        prepare_s = time.monotonic() - prepare_started
        nodes: dict[str, subprocess.Popen] = {}
        logs = {name: tmp / f"node_{name}.log" for name in names}
        client = None
        try:
            for name in names:
                extra = ["-p", f"input_size:=[{args.height}, {args.width}]", "-p", "diagnostics_period:=1.0",
                         "-p", "qos_reliability:=reliable", "-p", "backend:=auto"]
                env = dict(os.environ)
                if args.threads:  # PyTorch's and (it follows torch's count) ONNX Runtime's intra-op threads
                    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
                with open(logs[name], "wb") as log:
                    nodes[name] = subprocess.Popen(
                        node_command(models[name], args.device, f"/bench_{name}", extra, image_topic=None),
                        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True)
            for name in names:
                _wait(lambda name=name: "active:" in logs[name].read_text() or nodes[name].poll() is not None, 600,
                      f"the {name} node to activate")
                if nodes[name].poll() is not None:
                    raise RuntimeError(f"the {name} node exited:\n{logs[name].read_text()}")
            described = {}
            for name in names:
                line = next(l for l in logs[name].read_text().splitlines() if "configured in" in l)
                described[name] = line.split(", backend ", 1)[1].split(", input size")[0]
            client = BackendClient(names)
            messages = [numpy_to_image(frame, "rgb8") for frame in frames]
            for name in names:  # discovery of our labels subscription: retry until served
                _wait(lambda name=name: client.serve(name, messages[0], 30) is not None, 300, f"{name}'s first labels")
            latencies: dict[str, list[float]] = {name: [] for name in names}
            in_node: dict[str, list[float]] = {name: [] for name in names}
            inference: dict[str, list[float]] = {name: [] for name in names}
            labels: dict[str, list[np.ndarray | None]] = {name: [] for name in names}
            for i, msg in enumerate(messages):
                order = names[i % len(names):] + names[: i % len(names)]
                got = {}
                for name in order:
                    got[name] = client.serve(name, msg, 600)
                for name in names:
                    if got[name] is not None:
                        latencies[name].append(got[name][0])
                        in_node[name].append(float(got[name][2]["receive_to_publish_ms"]))
                        inference[name].append(float(got[name][2]["inference_ms"]))
                    labels[name].append(None if got[name] is None else got[name][1])
        finally:
            if client is not None:
                client.close()
            codes = {}
            for name, process in nodes.items():
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
                try:
                    codes[name] = process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    codes[name] = process.wait()
    load_after = os.getloadavg()
    reference = "torch" if "torch" in names else names[0]
    rows = []
    threads = f"{args.threads} thread(s) per node" if args.threads else "the nodes' default threads"
    print(f"\nnode latency per backend, {args.height}x{args.width} rgb8 frames, {args.frames} frames per backend "
          f"interleaved (order rotating), device {args.device}, {threads}; {os.cpu_count()} CPU(s), load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; models prepared in {prepare_s:.0f} s")
    print("e2e = publish -> labels arrival over DDS; in node = receive -> publish and inference = the "
          "Segmenter call, both from the node's segmentation/timing of each frame (medians)")
    print(f"{'backend':32s} {'e2e':>9s} {'e2e p90':>9s} {'in node':>9s} {'inference':>10s} {'speed-up':>9s} "
          f"{'labels = ' + reference:>16s}")
    base = _percentile(latencies[reference], 50)
    for name in names:
        lat = latencies[name]
        median = _percentile(lat, 50)
        pairs = [(a, b) for a, b in zip(labels[name], labels[reference]) if a is not None and b is not None]
        agree = float(np.mean([np.mean(a == b) for a, b in pairs])) if pairs else float("nan")
        row = {"backend": name, "label": BACKEND_ROWS[name], "runs_in": described.get(name, ""),
               "frames": len(lat), "e2e_median_ms": round(median, 2), "e2e_p90_ms": round(_percentile(lat, 90), 2),
               "in_node_median_ms": round(_percentile(in_node[name], 50), 2),
               "inference_median_ms": round(_percentile(inference[name], 50), 2),
               "speedup_vs_" + reference: round(base / median, 3),
               "labels_equal_to_" + reference: round(agree, 5), "exit_code": codes.get(name)}
        rows.append(row)
        print(f"{BACKEND_ROWS[name]:32s} {median:7.1f}ms {row['e2e_p90_ms']:7.1f}ms {row['in_node_median_ms']:7.1f}ms "
              f"{row['inference_median_ms']:8.1f}ms {base / median:8.2f}x {agree:15.2%}")
    for row in rows:
        print(f"  {row['backend']}: {row['runs_in']}; node stopped with exit code {row['exit_code']}")
    print(json.dumps({"backends": rows, "height": args.height, "width": args.width, "frames": args.frames,
                      "threads": args.threads,
                      "cpus": os.cpu_count(), "load_before": round(load_before[0], 2),
                      "load_after": round(load_after[0], 2)}))
    return 0 if all(code == 0 for code in codes.values()) else 1


def _apply_profile(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """This process's ROS environment: a domain of its own, localhost, and the Fast DDS profile
    the launch file gives the node (``--fastdds-profile``), for the nodes it starts and for its own
    participant alike (Fast DDS reads the variable when a process's first participant is created:
    nothing ROS ran before)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    from sfnet_ros.launch_support import LaunchArgumentError

    try:
        profiled = node_environment(dict(os.environ), args.fastdds_profile)
    except LaunchArgumentError as exc:
        parser.error(f"--fastdds-profile: {exc}")
    for name in PROFILE_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(profiled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=20, help="frames for the bare and end-to-end runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overload", type=float, default=10.0, help="overload factor")
    parser.add_argument("--overload-seconds", type=float, default=0.0,
                        help="overload duration (default: 12 frame times, at least 5 s)")
    parser.add_argument("--fastdds-profile", default="auto",
                        help="latency run: Fast DDS profile of the node and of this process, as the launch "
                             "argument fastdds_profile: auto (config/fastdds_large_frames.xml unless one is "
                             "exported), none, or a path")
    delivery = parser.add_argument_group("delivery (--delivery)")
    delivery.add_argument("--delivery", action="store_true",
                          help="measure frame delivery to the node with and without the Fast DDS profile "
                               "instead of the latency")
    delivery.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("640x480@5,1920x1080@30,4000x3000@2"),
                          help="frame sizes and rates, WIDTHxHEIGHT@HZ, comma-separated "
                               "(default 640x480@5,1920x1080@30,4000x3000@2)")
    delivery.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    delivery.add_argument("--settings", type=_parse_settings, default=["default", "profile"],
                          help="comma-separated, from: default (no profile), profile (whole stack, launch "
                               "file's variables), node-only (node but not camera), direct (no variable "
                               "exported: each process applies it itself); default: default,profile")
    delivery.add_argument("--burst-seconds", type=float, default=6.0,
                          help="length of one burst, in frames at the size's rate (default 6 s, at least 5 frames)")
    delivery.add_argument("--settle", type=float, default=1.5,
                          help="seconds both counts must hold still after a burst (default 1.5)")
    delivery.add_argument("--quick", action="store_true",
                          help="smoke run: 320x240@10, one round of 10 frames")
    backends = parser.add_argument_group("backends (--backends)")
    backends.add_argument("--backends", type=_parse_backends, default=None, metavar="NAMES",
                          help="instead of the latency run: one node per backend, comma-separated from "
                               f"{', '.join(BACKEND_ROWS)} (e.g. torch,onnxruntime,int8), the same frames "
                               "interleaved; --height/--width/--frames/--device as above")
    backends.add_argument("--threads", type=int, default=0,
                          help="intra-op threads of each node (OMP_NUM_THREADS; ONNX Runtime follows); "
                               "0 = the node's default (one per core)")
    backends.add_argument("--calibration-frames", type=int, default=4,
                          help="frames the int8 model is calibrated on (other frames than the timed ones)")
    parser.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "publisher":
        return _role_publisher(args.subscribers)
    if args.role == "subscriber":
        return _role_subscriber()
    if args.backends:
        if args.frames < 1 or args.calibration_frames < 1:
            parser.error("--frames and --calibration-frames must be >= 1")
        _apply_profile(parser, args)
        return run_backends(args)
    if args.delivery:
        if args.quick:
            args.sizes, args.rounds, args.burst_seconds = _parse_sizes("320x240@10"), 1, 1.0
        if args.rounds < 1 or args.burst_seconds <= 0 or args.settle < 0:
            parser.error("--rounds must be >= 1, --burst-seconds > 0 and --settle >= 0")
        return run_delivery(args)

    _apply_profile(parser, args)
    from sfnet_ros.conversions import numpy_to_image

    frames = _frames(args.frames, args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="sfnet_bench_") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "sfnet_resnet18_random.pt")
        bare = BareSegmenter(checkpoint, args.device, frames[0])
        bare_ms = bare.time_ms(frames[0])  # a first estimate, for the time-outs below

        log_path = Path(tmp) / "node.log"
        command = node_command(checkpoint, args.device, "/bench",
                               ["-p", "diagnostics_period:=1.0", "-p", "qos_reliability:=reliable"])
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
