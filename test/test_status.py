"""``sfnet-status`` against a real sfnet_node over DDS: the snapshot, every lifecycle transition,
parameters read and written, and the one-line refusals (a transition the state does not offer,
an unknown or refused parameter, no node on the domain)."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from node_harness import NodeProcess, RosClient, make_image, sample_image
from sensor_msgs.msg import Image

BIN = Path(sys.executable).parent
NS = "/statusdemo"
TIMEOUT = 60.0


def status(env: dict[str, str], *args: str, timeout: float = 20.0, process: bool = False,
           ) -> subprocess.CompletedProcess:
    """``sfnet-status ARGS``: the console script in its own process (``process=True``), else its
    ``main`` in this process (the same code over the same DDS, without seconds of process start;
    the environment it changes, e.g. the transport profile, is put back)."""
    argv = [*args, "--timeout", str(timeout)]
    if process:
        return subprocess.run([str(BIN / "sfnet-status"), *argv], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    from sfnet_ros.tools.status import main

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["sfnet-status", *argv], code, out.getvalue(), err.getvalue())


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfnet-status: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.ros_api
def test_status_client_drives_a_real_node(ros_domain, checkpoint, tmp_path):
    env = ros_domain
    refused(status(env, "--once", "--node", "/nobody_here", timeout=1), "/nobody_here", "no /diagnostics")

    node = NodeProcess(env, tmp_path, namespace=NS, parameters={
        "checkpoint": str(checkpoint), "autostart": False, "device": "cpu", "qos_reliability": "reliable",
        "diagnostics_period": 0.5})
    fqn = f"{NS}/sfnet_node"
    with node:
        shown = status(env, "--once", "--node", fqn, process=True)
        assert shown.returncode == 0, shown
        assert shown.stdout.splitlines()[0] == f"{fqn}: unconfigured", shown.stdout

        refused(status(env, "activate", "--node", fqn), "cannot activate from state 'unconfigured'",
                "possible: configure, shutdown")
        for step, state in (("configure", "inactive"), ("activate", "active")):
            done = status(env, step, "--node", fqn, process=step == "configure")
            assert done.returncode == 0 and done.stdout.strip() == f"{fqn}: {step} -> {state}", done

        # A frame through the node, then the snapshot shows the camera with its counts.
        with RosClient() as ros:
            labels = ros.collect(Image, f"{NS}/segmentation/labels")  # outputs nobody reads are not computed
            ros.wait_for_publishers(f"{NS}/segmentation/labels")
            pub = ros.publisher(Image, f"{NS}/image")
            ros.wait_for_subscribers(pub)
            pub.publish(make_image(sample_image(), "rgb8", 1_000))

            labels.wait_for_stamp(1_000)

        # Live (the console script): a snapshot per diagnostics period until Ctrl-C, which ends it
        # with exit 0; the snapshots show the camera with the frame's counts.
        live = subprocess.Popen([str(BIN / "sfnet-status"), "--node", fqn, "--period", "0.2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            heads: list[str] = []
            screens: list[str] = []
            deadline = time.monotonic() + TIMEOUT  # a screen comes every 0.2 s: checked per line
            for line in iter(live.stdout.readline, ""):
                if time.monotonic() > deadline:
                    break
                if line.startswith(f"{fqn}: "):
                    heads.append(line.strip())
                    screens.append("")
                if screens:
                    screens[-1] += line
                if len(heads) >= 2 and "frames_published_total=1" in screens[-1]:
                    break
            live.send_signal(signal.SIGINT)
            _, err = live.communicate(timeout=TIMEOUT)
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
        assert set(heads) == {f"{fqn}: active"} and live.returncode == 0 and "Traceback" not in err, (heads, err)
        assert f"] {NS}/image:" in screens[-1] and "frames_received_total=1" in screens[-1], screens[-1]

        got = status(env, "get", "input_timeout_warn", "checkpoint", "--node", fqn)
        assert got.returncode == 0, got
        warn_before = float(got.stdout.splitlines()[0].split(": ")[1])
        assert got.stdout.splitlines()[1] == f"checkpoint: {str(checkpoint)!r}"
        new_value = warn_before + 3  # given as an int for a double parameter: meant as a float
        # refused while active (a configure-time parameter), with the node's reason
        refused(status(env, "set", f"input_timeout_warn:={int(new_value)}", "--node", fqn),
                "not set: input_timeout_warn", "applied at configure")
        refused(status(env, "get", "no_such_parameter", "--node", fqn), "no parameter no_such_parameter")
        refused(status(env, "set", "input_timeout_warn", "--node", fqn), "expected NAME:=VALUE")

        for step, state in (("deactivate", "inactive"), ("cleanup", "unconfigured")):
            done = status(env, step, "--node", fqn)
            assert done.returncode == 0 and done.stdout.strip() == f"{fqn}: {step} -> {state}", done
        assert status(env, "set", f"input_timeout_warn:={int(new_value)}", "--node", fqn).returncode == 0
        got = status(env, "get", "input_timeout_warn", "--node", fqn)
        assert np.isclose(float(got.stdout.split(": ")[1]), new_value), got
        refused(status(env, "set", "input_timeout_warn:=fast", "--node", fqn), "not set: input_timeout_warn")
        done = status(env, "shutdown", "--node", fqn)
        assert done.returncode == 0 and "shutdown -> finalized" in done.stdout, done
        assert node.wait(30) == 0  # lifecycle shutdown ends the process (exit_on_shutdown)


@pytest.mark.ros_api
def test_status_usage_errors_are_one_line(ros_domain):
    for args in (["get"], ["activate", "extra"], ["dance"]):
        result = status(ros_domain, *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
