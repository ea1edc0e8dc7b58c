"""Backends: the node's latency per inference backend (the ``backend`` parameter), side by side
(see bench/node_latency.py for what is measured and how)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from node_bench.common import (
    bench_frames,
    distinct_names,
    node_argv,
    percentile,
    start_node,
    stop_node,
    wait_active,
    wait_for,
    write_checkpoint,
)
from sfnet_ros.conversions import image_to_numpy, numpy_to_image

#: ``--backends`` names -> what the row says.
BACKEND_ROWS = {
    "torch": "torch eager fp32 (.pt)",
    "onnxruntime": "onnxruntime fp32 (.onnx)",
    "int8": "onnxruntime int8 (.onnx, QDQ)",
    "openvino": "openvino fp32 (.onnx)",
    "openvino-int8": "openvino int8 (.onnx, QDQ)",
}
#: ``--backends`` names -> (the model file ``prepare_models`` makes, the node's ``backend``): named,
#: never ``auto``, which picks the fastest path of the machine whatever the file.
BACKEND_MODELS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "int8": ("int8", "onnxruntime"),
    "openvino": ("onnxruntime", "openvino"),
    "openvino-int8": ("int8", "openvino"),
}


def parse_backends(text: str) -> list[str]:
    return distinct_names(text, BACKEND_ROWS)


def prepare_models(checkpoint: Path, folder: Path, height: int, width: int, backends: list[str],
                   calibration: list[np.ndarray]) -> dict[str, Path]:
    """The model files of ``backends`` (kinds, ``BACKEND_MODELS``' first column): ``torch`` the
    checkpoint, ``onnxruntime`` a fixed-size fp32 ``.onnx`` (sfnet-export's library call), ``int8``
    its int8 quantisation calibrated on ``calibration`` frames (normalised exactly as the
    Segmenter feeds the network)."""
    from sfnet_core.checkpoint import STRIDE, load_checkpoint  # lazy: torch, not needed for --help
    from sfnet_core.inference import Segmenter  # lazy: torch (as above)
    from sfnet_core.onnx.export import export_onnx  # lazy: torch, onnx (as above)
    from sfnet_core.onnx.quantize import quantize_int8  # lazy: onnxruntime (as above)

    models = {"torch": checkpoint}
    if not {"onnxruntime", "int8"} & set(backends):
        return models
    canvas = (-(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE)
    fp32 = export_onnx(load_checkpoint(checkpoint), folder / "model_fp32.onnx", height=canvas[0], width=canvas[1])
    models["onnxruntime"] = fp32
    if "int8" in backends:
        segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", input_size=(height, width),
                                              warmup=False, backend="torch")
        batches = [segmenter.preprocess(frame).numpy() for frame in calibration]
        models["int8"] = quantize_int8(fp32, folder / "model_int8.onnx", batches,
                                       calibration_source=f"{len(batches)} synthetic bench frames")
    return {name: models[name] for name in backends}


def _ns(name: str) -> str:
    """A ROS name part for a backend name ("openvino-int8" -> "openvino_int8": no dashes in names)."""
    return name.replace("-", "_")


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
        self.publishers = {name: self.node.create_publisher(Image, f"/bench_{_ns(name)}/image", qos) for name in names}
        self.subscriptions = {name: (
            self.node.create_subscription(Image, f"/bench_{_ns(name)}/segmentation/labels",
                                          lambda msg, name=name: self._on_labels(name, msg), qos),
            self.node.create_subscription(DiagnosticArray, f"/bench_{_ns(name)}/segmentation/timing",
                                          lambda msg, name=name: self._on_timing(name, msg), qos))
            for name in names}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends with the context
            self.executor.spin()

    def _on_labels(self, name: str, msg) -> None:
        now = self.clock.now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        labels = np.array(image_to_numpy(msg))
        with self.lock:
            self.arrivals[(name, stamp)] = (now, labels)

    def _on_timing(self, name: str, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.timings[(name, stamp)] = {kv.key: kv.value for kv in msg.status[0].values}

    def matched(self, name: str) -> bool:
        """Whether ``name``'s node has matched our image publisher and we its labels and timing."""
        return self.publishers[name].get_subscription_count() >= 1 and all(
            sub.get_publisher_count() >= 1 for sub in self.subscriptions[name])

    def serve(self, name: str, msg, timeout: float) -> tuple[float, np.ndarray, dict[str, str]] | None:
        """Publish ``msg`` to ``name``'s node now; (publish -> labels arrival ms, labels, the node's
        timing of that frame) or None when the labels did not come."""
        stamp = self.clock.now()
        key = (name, stamp.nanoseconds)
        msg.header.stamp = stamp.to_msg()
        self.publishers[name].publish(msg)
        try:
            wait_for(lambda: key in self.arrivals, timeout, f"labels from {name}")
            # Published right after the labels, on a topic of its own.
            wait_for(lambda: key in self.timings, 30, f"the timing of a frame from {name}")
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
    names = args.backends
    frames = bench_frames(args.frames + args.calibration_frames, args.height, args.width)
    frames, calibration = frames[: args.frames], frames[args.frames:]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sfnet_backends_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "sfnet_resnet18_random.pt")
        prepare_started = time.monotonic()
        kinds = sorted({BACKEND_MODELS[name][0] for name in names})
        files = prepare_models(checkpoint, tmp, args.height, args.width, kinds, calibration)
        models = {name: files[BACKEND_MODELS[name][0]] for name in names}
        prepare_s = time.monotonic() - prepare_started
        nodes: dict[str, subprocess.Popen] = {}
        logs = {name: tmp / f"node_{name}.log" for name in names}
        client = None
        try:
            for name in names:
                # threads: the node's one setting (0 = the cores it may run on); OMP_NUM_THREADS
                # no longer decides it.
                parameters = {"input_size": [args.height, args.width], "diagnostics_period": 1.0,
                              "qos_reliability": "reliable", "backend": BACKEND_MODELS[name][1],
                              "threads": args.threads}
                nodes[name] = start_node(node_argv(models[name], args.device, f"/bench_{_ns(name)}", parameters,
                                                   image_topic=None), logs[name])
            for name in names:
                wait_active(nodes[name], logs[name], 600, f"the {name} node")
            described = {}
            for name in names:
                line = next(l for l in logs[name].read_text().splitlines() if "configured in" in l)
                described[name] = line.split(", backend ", 1)[1].split(", input size")[0]
            client = BackendClient(names)
            messages = [numpy_to_image(frame, "rgb8") for frame in frames]
            for name in names:
                # discovery first (a frame sent before the labels' publisher matched our subscription
                # would wait out the timeout), then retry until served
                wait_for(lambda name=name: client.matched(name), 300, f"discovery of {name}'s topics")
                wait_for(lambda name=name: client.serve(name, messages[0], 30) is not None, 300,
                         f"{name}'s first labels")
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
            codes = {name: stop_node(process) for name, process in nodes.items()}
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
    base = percentile(latencies[reference], 50)
    for name in names:
        lat = latencies[name]
        median = percentile(lat, 50)
        pairs = [(a, b) for a, b in zip(labels[name], labels[reference]) if a is not None and b is not None]
        agree = float(np.mean([np.mean(a == b) for a, b in pairs])) if pairs else float("nan")
        row = {"backend": name, "label": BACKEND_ROWS[name], "runs_in": described.get(name, ""),
               "frames": len(lat), "e2e_median_ms": round(median, 2), "e2e_p90_ms": round(percentile(lat, 90), 2),
               "in_node_median_ms": round(percentile(in_node[name], 50), 2),
               "inference_median_ms": round(percentile(inference[name], 50), 2),
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
