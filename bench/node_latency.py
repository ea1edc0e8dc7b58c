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

Overhead (``--overhead``): what the node costs over the bare ``Segmenter`` of the same backend,
with labels, colour and class masks (road, car, person) subscribed::

    .venv/bin/python bench/node_latency.py --overhead [--backend openvino-int8 --frames 30 --threads 0]

Prepares the model file of ``--backend`` (torch: the checkpoint; onnxruntime / openvino: the
fixed-size fp32 ``.onnx``; int8 / openvino-int8: its int8 QDQ quantisation; default: the fastest,
openvino-int8 where the node offers OpenVINO, else int8), starts the node with it as the launch file
does (``input_size`` = the frame size) and loads the same file into a ``Segmenter`` in this
process. Per frame, one in flight, the order alternating: the bare ``segment`` call (uint8 frame
in, labels out), and the frame published to the node: latency = arrival of its last output
(labels, colour, every mask; subscribed raw, the arrival taken before deserializing) minus its
header stamp. Prints p50 / p99 and FPS of both, the node's steps (DDS in, queue, decode,
inference, render from its ``segmentation/timing``; out: rendered -> the last output's arrival,
of which send: handing them to DDS), the node's labels equal to
the bare ones, a stream phase (a camera at 1.5x the node's rate: FPS and p50 / p99), and the
check line ``node / Segmenter = <ratio>x ... target <= 1.05x``. ``--quick``: 64x128, 3 frames,
a 2 s stream. Last line: JSON.

The four benchmarks live in ``bench/node_bench/`` (``latency``, ``delivery``, ``backends``,
``overhead``, and ``common``: frames, checkpoint, the node started by
``sfnet_ros.launch_support.node_launch``).
"""
from __future__ import annotations

import argparse
import os
import sys

from node_bench.backends import BACKEND_ROWS, parse_backends, run_backends
from node_bench.common import profile_environment
from node_bench.delivery import parse_settings, parse_sizes, role_publisher, role_subscriber, run_delivery
from node_bench.latency import run_latency
from node_bench.overhead import OVERHEAD_BACKENDS, parse_backend, run_overhead

from sfnet_core.threads import prepare_process
from sfnet_ros.launch_support import PROFILE_VARIABLES, LaunchArgumentError
from sfnet_ros.ros_distro import apply_localhost_discovery

__all__ = ["main"]


def _apply_profile(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """This process's ROS environment: a domain of its own, localhost, and the Fast DDS profile
    the launch file gives the node (``--fastdds-profile``), for the nodes it starts and for its own
    participant alike (Fast DDS reads the variable when a process's first participant is created:
    nothing ROS ran before)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
    if "ROS_AUTOMATIC_DISCOVERY_RANGE" not in os.environ and "ROS_LOCALHOST_ONLY" not in os.environ:
        apply_localhost_discovery(os.environ)
    try:
        profiled = profile_environment(dict(os.environ), args.fastdds_profile)
    except LaunchArgumentError as exc:
        parser.error(f"--fastdds-profile: {exc}")
    for name in PROFILE_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(profiled)


def main(argv: list[str] | None = None) -> int:
    # As the node does before torch loads (its nodes inherit it): OpenMP's idle threads sleep.
    prepare_process()
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
    delivery.add_argument("--sizes", type=parse_sizes, default=parse_sizes("640x480@5,1920x1080@30,4000x3000@2"),
                          help="frame sizes and rates, WIDTHxHEIGHT@HZ, comma-separated "
                               "(default 640x480@5,1920x1080@30,4000x3000@2)")
    delivery.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    delivery.add_argument("--settings", type=parse_settings, default=["default", "profile"],
                          help="comma-separated, from: default (no profile), profile (whole stack, launch "
                               "file's variables), node-only (node but not camera), direct (no variable "
                               "exported: each process applies it itself); default: default,profile")
    delivery.add_argument("--burst-seconds", type=float, default=6.0,
                          help="length of one burst, in frames at the size's rate (default 6 s, at least 5 frames)")
    delivery.add_argument("--settle", type=float, default=1.5,
                          help="seconds both counts must hold still after a burst (default 1.5)")
    delivery.add_argument("--quick", action="store_true",
                          help="smoke run: 320x240@10, one round of 10 frames (--overhead: 64x128, 3 frames)")
    backends = parser.add_argument_group("backends (--backends)")
    backends.add_argument("--backends", type=parse_backends, default=None, metavar="NAMES",
                          help="instead of the latency run: one node per backend, comma-separated from "
                               f"{', '.join(BACKEND_ROWS)} (e.g. torch,onnxruntime,int8), the same frames "
                               "interleaved; --height/--width/--frames/--device as above")
    backends.add_argument("--threads", type=int, default=0,
                          help="CPU threads of each node (its threads parameter) and, with --overhead, of the "
                               "bare Segmenter; 0 = the default (the cores the process may run on)")
    backends.add_argument("--calibration-frames", type=int, default=4,
                          help="frames the int8 model is calibrated on (other frames than the timed ones)")
    overhead = parser.add_argument_group("overhead (--overhead)")
    overhead.add_argument("--overhead", action="store_true",
                          help="instead of the latency run: the node with labels, colour and masks subscribed "
                               "against the bare Segmenter of the same backend, interleaved; --height/--width/"
                               "--frames/--threads as above, --quick: 64x128, 3 frames")
    overhead.add_argument("--backend", type=parse_backend, default=None,
                          help=f"the overhead run's backend, from {', '.join(OVERHEAD_BACKENDS)} (default: the "
                               "fastest, openvino-int8 where the node offers OpenVINO, else int8)")
    overhead.add_argument("--stream-seconds", type=float, default=0.0,
                          help="the overhead run's stream at 1.5x the node's rate (default 12 frame times, "
                               "at least 5 s)")
    parser.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "publisher":
        return role_publisher(args.subscribers)
    if args.role == "subscriber":
        return role_subscriber()
    if args.backends:
        if args.frames < 1 or args.calibration_frames < 1:
            parser.error("--frames and --calibration-frames must be >= 1")
        _apply_profile(parser, args)
        return run_backends(args)
    if args.overhead:
        if args.quick:
            args.height, args.width, args.frames, args.stream_seconds = 64, 128, 3, 2.0
        if args.frames < 1 or args.threads < 0 or args.stream_seconds < 0:
            parser.error("--frames must be >= 1, --threads and --stream-seconds >= 0")
        _apply_profile(parser, args)
        return run_overhead(args)
    if args.delivery:
        if args.quick:
            args.sizes, args.rounds, args.burst_seconds = parse_sizes("320x240@10"), 1, 1.0
        if args.rounds < 1 or args.burst_seconds <= 0 or args.settle < 0:
            parser.error("--rounds must be >= 1, --burst-seconds > 0 and --settle >= 0")
        return run_delivery(args)

    _apply_profile(parser, args)
    return run_latency(args)


if __name__ == "__main__":
    sys.exit(main())
