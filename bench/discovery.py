"""How long a newly started process takes to discover a running ROS 2 node: the shipped Fast DDS
profile (``config/fastdds_large_frames.xml``, announcements every second) against the same file
with Fast DDS's default announcement period (3 s), side by side.

A stand-in for the node (a plain rclpy node: its parameter services are what ``sfnet-status``
calls first) runs per profile, each on its own ROS domain; then, alternating between the two,
``--trials`` fresh processes (what a tool, a status call or a restarted driver is) each create a
participant and time until the node's ``get_parameters`` service is ready. Only that interval
is timed, not the interpreter's start. ``--range`` is ``ROS_AUTOMATIC_DISCOVERY_RANGE`` for every
process (LOCALHOST: what the tests and a development machine use; SUBNET: the ROS default).

Usage: ``python bench/discovery.py [--trials 12] [--range LOCALHOST]``; prints a row per profile
(mean, median, 90th percentile, slowest, in seconds), the ratio of the means and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node_bench.common import stop_node

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "fastdds_large_frames.xml"
SERVICE = "/discovery_bench/get_parameters"

_SERVE = """
import rclpy
from rclpy.executors import ExternalShutdownException
rclpy.init()
node = rclpy.create_node("discovery_bench")
print("ready", flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):  # SIGINT: a quiet exit
    pass
"""

_PROBE = """
import time
import rclpy
from rcl_interfaces.srv import GetParameters
rclpy.init()
started = time.monotonic()
node = rclpy.create_node("discovery_probe")
client = node.create_client(GetParameters, {service!r})
while not client.service_is_ready():
    if time.monotonic() - started > 30:
        raise SystemExit("not discovered within 30 s")
    time.sleep(0.005)
print(time.monotonic() - started)
"""


def default_period_profile(folder: Path) -> Path:
    """The shipped profile without its ``<builtin>`` block (Fast DDS's 3 s announcements)."""
    text = SHIPPED.read_text()
    stripped = re.sub(r"\s*<builtin>.*?</builtin>", "", text, flags=re.S)
    if stripped == text:
        raise SystemExit("discovery.py: error: the shipped profile has no <builtin> block to compare against")
    path = folder / "fastdds_default_announcements.xml"
    path.write_text(stripped)
    return path


def environment(profile: Path, domain: int, discovery_range: str) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range,
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", FASTDDS_DEFAULT_PROFILES_FILE=str(profile),
               FASTRTPS_DEFAULT_PROFILES_FILE=str(profile), SFNET_FASTDDS_PROFILE=str(profile))
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _domain(text: str) -> int:
    if not text.isdigit() or int(text) > 231:  # the second domain is the next one; Fast DDS's ports end at 232
        raise argparse.ArgumentTypeError(f"expected a ROS domain id 0..231, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=_positive, default=12, help="new processes per profile")
    parser.add_argument("--range", dest="discovery_range", default="LOCALHOST", choices=["LOCALHOST", "SUBNET"],
                        help="ROS_AUTOMATIC_DISCOVERY_RANGE of every process")
    parser.add_argument("--domain", type=_domain, default=None,
                        help="first of the two ROS domains, 0..231 (default: from the pid)")
    args = parser.parse_args(argv)
    first = args.domain if args.domain is not None else 150 + os.getpid() % 50
    times: dict[str, list[float]] = {"shipped (1 s)": [], "Fast DDS default (3 s)": []}
    with tempfile.TemporaryDirectory(prefix="sfnet_discovery_") as tmp:
        profiles = {"shipped (1 s)": SHIPPED, "Fast DDS default (3 s)": default_period_profile(Path(tmp))}
        envs = {name: environment(path, first + i, args.discovery_range) for i, (name, path) in
                enumerate(profiles.items())}
        servers = {name: subprocess.Popen([sys.executable, "-c", _SERVE], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True) for name, env in envs.items()}
        try:
            for name, server in servers.items():
                if server.stdout is None or server.stdout.readline().strip() != "ready":
                    raise SystemExit(f"discovery.py: error: the {name} node did not start")
            time.sleep(1.0)  # past the servers' own first announcements
            for _ in range(args.trials):
                for name in times:  # interleaved: a load change hits both alike
                    probe = subprocess.run([sys.executable, "-c", _PROBE.format(service=SERVICE)], env=envs[name],
                                           capture_output=True, text=True, timeout=60, check=False)
                    if probe.returncode != 0:
                        raise SystemExit(f"discovery.py: error: {name}: {probe.stderr.strip().splitlines()[-1:]}")
                    times[name].append(float(probe.stdout.strip().splitlines()[-1]))
        finally:
            for name, server in servers.items():
                # bounded: a stand-in that does not stop (seen once on a loaded CI machine) is killed
                if stop_node(server, timeout=10) is None:
                    print(f"discovery.py: note: the {name} stand-in did not stop within 10 s of SIGINT: killed",
                          file=sys.stderr)
    print(f"discovery of a running node by a new process, ROS_AUTOMATIC_DISCOVERY_RANGE={args.discovery_range}, "
          f"{args.trials} process(es) per profile, interleaved (seconds)")
    print(f"{'profile':26s} {'mean':>7s} {'median':>7s} {'p90':>7s} {'slowest':>8s}")
    summary: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        ordered = sorted(values)
        row = {"mean_s": round(statistics.fmean(ordered), 3), "median_s": round(statistics.median(ordered), 3),
               "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
               "max_s": round(ordered[-1], 3)}
        summary[name] = row
        print(f"{name:26s} {row['mean_s']:7.2f} {row['median_s']:7.2f} {row['p90_s']:7.2f} {row['max_s']:8.2f}")
    # the mean: a discovery is either quick (the first answer) or waits for an announcement, so
    # the median of a few trials flips between the two; the mean weighs both
    shipped, default = (summary[name]["mean_s"] for name in times)
    ratio = default / shipped if shipped > 0 else float("nan")
    print(f"mean default / shipped: {ratio:.2f}x")
    print(json.dumps({"range": args.discovery_range, "trials": args.trials, "profiles": summary,
                      "mean_ratio_default_over_shipped": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the two nodes are stopped by main's finally
        print("discovery.py: interrupted", file=sys.stderr)
        sys.exit(130)
