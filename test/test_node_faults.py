"""sfnet_node under faults (issue 9), every case with the node as its own process over real DDS:

- SIGTERM / SIGINT while a forward pass runs (seconds, a large frame on one CPU thread): exit code
  0, the node leaving without waiting for the pass, no abort, no process left behind; repeated;
- deactivate during a long forward pass: the executor keeps serving, the results of the earlier
  activation are discarded, a re-activation never runs a second inference thread;
- a camera that never sends / stops sending: WARN, then ERROR on /diagnostics, OK again with frames;
  frames above ``max_input_pixels`` dropped with a counted reason;
- incompatible QoS (a best-effort camera into a reliable node, a reliable subscriber of a
  best-effort output): WARN with the offered and requested policies, cleared when the peer goes;
  frames received while no output has a subscriber are reported as such;
- the lifecycle services answer while autostart configures; a lifecycle shutdown ends the process
  (exit code 0) unless ``exit_on_shutdown`` is false.

The frames are 64x128 except where a long forward pass is the point. No timing threshold: waits
poll with deadlines; exit times after signals are printed (``-s``) for the record, not asserted.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from node_harness import (
    NodeProcess,
    RosClient,
    diagnostic_values,
    make_image,
    processes_on_domain,
    sample_image,
    wait_until,
)
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from sfnet_ros.node.diagnostics import CameraStats, StatsWindow, camera_status
from sfnet_ros.node.qos import incompatible_policies
from sfnet_ros.node.worker import InferenceWorker, LatestFrameMailbox

H, W = 64, 128
# A frame whose forward pass takes seconds on one CPU thread: 12 s of CPU time on this machine,
# 2.2 GB peak RSS in the node (long enough for a deactivate + activate over the services) ...
BIG_H, BIG_W = 1500, 2000
# ... and one that still takes several seconds (1.5 GB), for the many signal tries.
SIGNAL_H, SIGNAL_W = 1080, 1440
# Every node in this module runs PyTorch on one thread: the long forward passes stay long (and
# the machine stays usable for everybody else).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Rounds of the signal test, each one SIGTERM and one SIGINT try. The abort this test was written
# for struck 7 tries in 8: 2 rounds (4 tries) miss it with probability (1/8)**4 = 0.02%. Hunting a
# rarer fault: SFNET_SIGNAL_TRIES=8 (16 tries catch a one-in-8 fault with probability 88%).
SIGNAL_TRIES = int(os.environ.get("SFNET_SIGNAL_TRIES", "2"))

OK, WARN, ERROR = (int.from_bytes(level, "little") for level in
                   (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR))


def _env(ros_domain: dict[str, str]) -> dict[str, str]:
    return {**ros_domain, **ONE_THREAD}


def _best_effort(depth: int = 1) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def _reliable(depth: int = 1) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def _latest(diagnostics, name_contains: str, predicate=lambda v: True) -> dict[str, str] | None:
    """Values (plus _level, _message) of the newest status matching ``name_contains`` and ``predicate``."""
    for msg in reversed(diagnostics.messages):
        values = diagnostic_values(msg, name_contains)
        if values is not None and predicate(values):
            return values
    return None


def _wait_status(diagnostics, name_contains: str, predicate, what: str, timeout: float = 60) -> dict[str, str]:
    return wait_until(lambda: _latest(diagnostics, name_contains, predicate), timeout, what)


def _node_status(diagnostics, fqn: str, predicate, what: str, timeout: float = 60) -> dict[str, str]:
    """Values of the node's own status (its name is exactly the node's FQN)."""
    def find() -> dict[str, str] | None:
        for msg in reversed(diagnostics.messages):
            for status in msg.status:
                if status.name == fqn:
                    values = {kv.key: kv.value for kv in status.values}
                    if predicate(values):
                        return values
                    break
        return None
    return wait_until(find, timeout, what)


def _start_inference(ros: RosClient, diagnostics, node: NodeProcess, ns: str, stamp_ns: int,
                     height: int = BIG_H, width: int = BIG_W) -> None:
    """Send one large frame to the active node ``ns`` and return once its forward pass runs."""
    pub = ros.publisher(Image, f"{ns}/image", _reliable())
    labels = ros.collect(Image, f"{ns}/segmentation/labels", _reliable())
    try:
        ros.wait_for_subscribers(pub)
        # The node segments a frame only while an output has a subscriber: wait until it sees ours.
        _wait_status(diagnostics, f"{ns}/image", lambda v: int(v["output_subscribers"]) >= 1,
                     f"{ns}: the node to see the labels subscriber")
        pub.publish(make_image(sample_image(height, width, 0), "rgb8", stamp_ns))
        _node_status(diagnostics, node.fqn, lambda v: float(v["inference_busy_s"]) > 0,
                     f"{ns}: the forward pass of the large frame to start", timeout=120)
    finally:
        ros.node.destroy_publisher(pub)
        ros.node.destroy_subscription(labels.subscription)


# -- signals while a forward pass runs ----------------------------------------------------------


def test_signals_during_a_forward_pass_exit_0_without_waiting(ros_domain, checkpoint, tmp_path):
    env = _env(ros_domain)
    exit_s: dict[str, list[float]] = {"SIGTERM": [], "SIGINT": []}
    with RosClient() as ros:
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        for attempt in range(SIGNAL_TRIES):
            # One node per signal, both at once (each on one thread: the two cores are used, and
            # each try costs a process start).
            nodes = {sig: NodeProcess(env, tmp_path, namespace=f"/sig{attempt}_{sig.name.lower()}",
                                      log_name=f"sig{attempt}_{sig.name.lower()}", parameters={
                                          "checkpoint": str(checkpoint), "device": "cpu",
                                          "qos_reliability": "reliable", "diagnostics_period": 0.1})
                     for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                for node in nodes.values():
                    node.start()
                for sig, node in nodes.items():
                    node.wait_for_log("active:")
                    _start_inference(ros, diagnostics, node, node.fqn.rsplit("/", 1)[0], attempt + 1,
                                     SIGNAL_H, SIGNAL_W)
                    # Its own Fast DDS segments (ports may be shared with the other processes).
                    segments = [f for f in node.shm_files() if "_port" not in f.name]
                    sent = time.monotonic()
                    node.send_signal(sig)
                    code = node.wait(60)  # a hang guard, not a speed claim
                    exit_s[sig.name].append(time.monotonic() - sent)
                    log = node.log()
                    assert code == 0, f"{node.fqn}: exit code {code}\n{log}"
                    # Left with os._exit, but after releasing its participant: nothing in /dev/shm.
                    assert segments and not [f for f in segments if f.exists()], segments
                    assert "stop requested (SIGINT/SIGTERM): shutting down" in log, log
                    # The hard case was exercised: the pass was still running when the node left.
                    assert "inference still running (batch started" in log, log
                    assert "terminate called" not in log and "Traceback" not in log, log
            finally:
                for node in nodes.values():
                    node.stop()
    assert processes_on_domain(ros_domain["ROS_DOMAIN_ID"]) == []
    for name, times in exit_s.items():
        print(f"\n{name}: {len(times)} tries, exit after the signal in "
              f"{min(times):.2f}..{max(times):.2f} s (mean {sum(times) / len(times):.2f} s)")


# -- deactivate during a forward pass ------------------------------------------------------------


def test_deactivate_during_a_forward_pass_discards_its_results(ros_domain, checkpoint, tmp_path):
    ns = "/deact"
    node = NodeProcess(_env(ros_domain), tmp_path, namespace=ns, parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "qos_reliability": "reliable",
        "diagnostics_period": 0.1})
    with node, RosClient() as ros:
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        labels = ros.collect(Image, f"{ns}/segmentation/labels", _reliable(depth=10))
        node.wait_for_log("active:")
        big_stamp = 5
        _start_inference(ros, diagnostics, node, ns, big_stamp)

        # Deactivate while the pass runs: the service answers, and the executor goes on serving
        # (diagnostics of the inactive node come while the old batch is still in the network).
        assert ros.change_state(node.fqn, Transition.TRANSITION_DEACTIVATE)
        assert ros.get_state(node.fqn) == "inactive"
        _node_status(diagnostics, node.fqn,
                     lambda v: v["state"] == "inactive" and float(v["inference_busy_s"]) > 0,
                     "diagnostics from the inactive node while the old batch runs")

        # Re-activate while it still runs (or just after): new frames are served, one thread only.
        assert ros.change_state(node.fqn, Transition.TRANSITION_ACTIVATE)
        pub = ros.publisher(Image, f"{ns}/image", _reliable())
        ros.wait_for_subscribers(pub)
        stamps = iter(range(1_000, 2_000))

        def served() -> bool:
            stamp = next(stamps)
            pub.publish(make_image(sample_image(H, W, 1), "rgb8", stamp))
            try:
                labels.wait_for_stamp(stamp, timeout=20)
            except TimeoutError:
                return False
            return True
        wait_until(served, 300, "labels from the re-activated node")

        values = _node_status(diagnostics, node.fqn, lambda v: int(v["results_discarded_total"]) >= 1,
                              "the old batch to be discarded")
        assert int(values["results_discarded_total"]) == 1
        # No node status ever counted two inference threads (0 before the first activation).
        threads = {int(kv.value) for msg in diagnostics.messages for status in msg.status
                   if status.name == node.fqn for kv in status.values if kv.key == "inference_threads"}
        assert max(threads) == 1, threads
        assert not labels.has_stamp(big_stamp), "a result of the earlier activation was published"
        log = node.log()
        assert "discarding the results of 1 frame(s) of an earlier activation" in log, log
        for bad in ("inference failed", "InvalidHandle", "Traceback"):
            assert bad not in log, log
        assert node.stop(signal.SIGINT) == 0


# -- input timeouts and oversized frames ---------------------------------------------------------


def test_input_timeout_levels_and_too_large_frames(ros_domain, checkpoint, tmp_path):
    ns = "/timeouts"
    node = NodeProcess(_env(ros_domain), tmp_path, namespace=ns, parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "cameras": ["live", "silent"],
        "qos_reliability": "reliable", "diagnostics_period": 0.1,
        "input_timeout_warn": 0.5, "input_timeout_error": 1.5, "max_input_pixels": H * W - 1})
    with node, RosClient() as ros:
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        labels = ros.collect(Image, f"{ns}/live/segmentation/labels", _reliable(depth=10))
        pub = ros.publisher(Image, f"{ns}/live/image", _reliable())
        node.wait_for_log("active:")

        # A camera that never sent anything counts from activation: WARN, then ERROR.
        silent = f"{ns}/silent/image"
        warn = _wait_status(diagnostics, silent, lambda v: int(v["_level"]) == WARN and "since activation"
                            in v["_message"], "silent: WARN")
        assert "no frame received since activation" in warn["_message"], warn
        assert "input_timeout_warn 0.5 s" in warn["_message"], warn
        error = _wait_status(diagnostics, silent, lambda v: int(v["_level"]) == ERROR, "silent: ERROR")
        assert "input_timeout_error 1.5 s" in error["_message"], error
        assert float(error["seconds_since_last_frame"]) >= 1.5

        # Frames come: OK again (a small frame, within max_input_pixels, served).
        live = f"{ns}/live/image"
        ros.wait_for_subscribers(pub)
        _wait_status(diagnostics, live, lambda v: int(v["output_subscribers"]) >= 1, "live: our subscriber seen")
        small = sample_image(H // 2, W, 2)
        stamps = iter(range(100, 10_000))

        def ok_with_frames() -> dict[str, str] | None:
            stamp = next(stamps)
            pub.publish(make_image(small, "rgb8", stamp))
            values = _latest(diagnostics, live)
            return values if values is not None and int(values["_level"]) == OK and \
                int(values["frames_published_total"]) > 0 else None
        ok = wait_until(ok_with_frames, 60, "live: OK while frames come", poll=0.1)
        assert "Hz in" in ok["_message"], ok

        # A frame above max_input_pixels: dropped, counted, the reason on /diagnostics and in the log.
        big_stamp = next(stamps)
        pub.publish(make_image(sample_image(H, W, 3), "rgb8", big_stamp))
        dropped = _wait_status(diagnostics, live, lambda v: int(v["dropped_too_large_total"]) >= 1,
                               "live: the oversized frame counted")
        reason = f"{W}x{H} frame ({H * W} pixels) is larger than max_input_pixels {H * W - 1}"
        assert dropped["last_too_large"] == reason, dropped
        _wait_status(diagnostics, live, lambda v: int(v["dropped_too_large"]) >= 1 and int(v["_level"]) >= WARN
                     and reason in v["_message"], "live: WARN naming the oversized frame")
        assert f"dropping a frame from {live}: {reason}" in node.log()
        assert not labels.has_stamp(big_stamp)

        # The camera stops: WARN, then ERROR, counted from its last frame.
        error = _wait_status(diagnostics, live, lambda v: int(v["_level"]) == ERROR
                             and v["_message"].startswith("no frame for "), "live: ERROR after its frames stop")
        assert "input_timeout_error 1.5 s" in error["_message"], error
        # Each camera is judged on its own: frames on live never made silent OK.
        assert int(_latest(diagnostics, silent)["frames_received_total"]) == 0
        assert node.stop(signal.SIGTERM) == 0
        assert "Traceback" not in node.log()


# -- incompatible QoS ----------------------------------------------------------------------------


@pytest.mark.ros_api
def test_incompatible_qos_is_reported_with_both_policies(ros_domain, checkpoint, tmp_path):
    """Two nodes: /be publishes best effort (default), /rel subscribes reliable."""
    env = _env(ros_domain)
    be = NodeProcess(env, tmp_path, namespace="/be", log_name="be", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "diagnostics_period": 0.2, "input_timeout_warn": 0.0,
        "input_timeout_error": 0.0})
    rel = NodeProcess(env, tmp_path, namespace="/rel", log_name="rel", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "qos_reliability": "reliable",
        "diagnostics_period": 0.2, "input_timeout_warn": 0.0, "input_timeout_error": 0.0})
    with be, rel, RosClient("qos_peer") as ros:
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        be.wait_for_log("active:")
        rel.wait_for_log("active:")

        # A RELIABLE subscriber of a best-effort output; frames come from a compatible camera.
        reliable_sub = ros.collect(Image, "/be/segmentation/labels", _reliable())
        camera = ros.publisher(Image, "/be/image", _best_effort())
        ros.wait_for_subscribers(camera)
        stamps = iter(range(1, 100_000))

        def be_status(predicate):
            def check() -> dict[str, str] | None:
                camera.publish(make_image(sample_image(H, W, 0), "rgb8", next(stamps)))
                return _latest(diagnostics, "/be/image", predicate)
            return wait_until(check, 60, "a matching /be camera status", poll=0.2)

        # (The event names the peer's node once discovery knows it: "(node not yet known)" before.)
        expected = ("subscription /qos_peer on /be/segmentation/labels: "
                    "reliability offered BEST_EFFORT, requested RELIABLE")
        values = be_status(lambda v: expected in v["qos_incompatible"] and int(v["frames_received_total"]) > 0)
        assert int(values["_level"]) == WARN, values
        assert f"incompatible QoS: {expected}" in values["_message"], values
        assert int(values["qos_incompatible_events_total"]) >= 1
        # Frames arrive, but the only subscriber cannot match: the status says so.
        values = be_status(lambda v: "no output has a subscriber" in v["_message"])
        assert values["output_subscribers"] == "0", values
        assert reliable_sub.messages == []
        assert "incompatible QoS, that subscription receives nothing" in be.log()

        # A best-effort camera into the reliable node.
        be_camera = ros.publisher(Image, "/rel/image", _best_effort())
        expected = "publisher /qos_peer on /rel/image: reliability offered BEST_EFFORT, requested RELIABLE"
        values = _wait_status(diagnostics, "/rel/image", lambda v: expected in v["qos_incompatible"],
                              "the /rel input incompatibility")
        assert int(values["_level"]) == WARN, values
        assert "incompatible QoS, no frames will come from that publisher" in rel.log()

        # The incompatible peers go away: the statuses clear (OK, nothing incompatible). Only
        # statuses sent after that count.
        ros.node.destroy_subscription(reliable_sub.subscription)
        ros.node.destroy_publisher(be_camera)
        diagnostics.clear()
        be_status(lambda v: v["qos_incompatible"] == "" and int(v["_level"]) == OK)
        values = _wait_status(diagnostics, "/rel/image", lambda v: v["qos_incompatible"] == "",
                              "the /rel input incompatibility to clear")
        assert int(values["_level"]) == OK, values
        assert be.stop(signal.SIGINT) == 0 and rel.stop(signal.SIGINT) == 0


# -- lifecycle services during autostart, shutdown ends the process -----------------------------


def test_services_answer_during_autostart_and_shutdown_exits(ros_domain, checkpoint, tmp_path):
    env = _env(ros_domain)
    # A large warm-up (input_size) keeps configure busy for seconds on one thread.
    slow = NodeProcess(env, tmp_path, namespace="/slow", log_name="slow", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "input_size": [BIG_H, BIG_W]})
    exits = NodeProcess(env, tmp_path, namespace="/exits", log_name="exits", parameters={
        "checkpoint": str(checkpoint), "device": "cpu"})
    stays = NodeProcess(env, tmp_path, namespace="/stays", log_name="stays", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "exit_on_shutdown": False})
    with slow, exits, stays, RosClient() as ros:
        slow.wait_for_log("Segmenter: device")  # the model is built; the warm-up pass starts
        assert ros.get_state(slow.fqn) == "configuring"
        # The parameter services answer too, and refuse configure-time changes meanwhile.
        (result,) = ros.set_parameters(slow.fqn, {"checkpoint": "/elsewhere.pt"})
        assert not result.successful and "node is configuring" in result.reason, result.reason
        assert "configured in" not in slow.log(), "configure ended before the services answered"
        # its warm-up is not waited for: a signal ends the process mid-pass (as in the signal test above)
        assert slow.stop(signal.SIGTERM) == 0, slow.log()

        # shutdown from active: the transition succeeds and the process exits 0 by itself.
        exits.wait_for_log("active:")
        assert ros.change_state(exits.fqn, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        code = exits.wait(60)
        log = exits.log()
        assert code == 0, log
        assert "finalized: the process exits (exit_on_shutdown)" in log, log
        assert "lifecycle shutdown: exiting (exit_on_shutdown)" in log, log
        assert "Traceback" not in log, log

        # exit_on_shutdown false: the process stays, finalized, and still stops on a signal.
        stays.wait_for_log("active:")
        assert ros.change_state(stays.fqn, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert ros.get_state(stays.fqn) == "finalized"
        assert stays.running()
        assert "finalized: the process stays (exit_on_shutdown false)" in stays.log()
        assert stays.stop(signal.SIGTERM) == 0
    assert processes_on_domain(ros_domain["ROS_DOMAIN_ID"]) == []


# -- the pieces on their own (no ROS graph) ------------------------------------------------------


def _stats(**kwargs: Any):
    stats = CameraStats()
    for key, value in kwargs.items():
        setattr(stats, key, value)
    return stats


def test_camera_status_levels():
    def status(stats, window=None, active=True, subscribers=1, now=None):
        s = camera_status("cam", "cpu fp32", window or StatsWindow(seconds=1.0), stats, active,
                          input_timeout_warn=2.0, input_timeout_error=10.0, output_subscribers=subscribers,
                          now=now)
        level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
        return level, s.message, {kv.key: kv.value for kv in s.values}

    fresh = _stats()
    t0 = fresh.started
    assert status(fresh, now=t0 + 1.0)[:2] == (OK, "no frames received")
    level, message, values = status(fresh, now=t0 + 3.0)
    assert (level, message) == (WARN, "no frame received since activation for 3.0 s (input_timeout_warn 2 s)")
    assert values["seconds_since_last_frame"] == "3.00"
    assert status(fresh, now=t0 + 12.0)[:2] == (
        ERROR, "no frame received since activation for 12.0 s (input_timeout_error 10 s)")
    assert status(fresh, active=False, now=t0 + 12.0)[:2] == (WARN, "not active")

    running = _stats(last_received=t0 + 5.0)
    assert status(running, StatsWindow(seconds=1.0, received=10, published=10), now=t0 + 5.5)[:2] == (
        OK, "10.0 Hz in, 10.0 Hz out")
    assert status(running, now=t0 + 8.0)[:2] == (WARN, "no frame for 3.0 s (input_timeout_warn 2 s)")
    assert status(running, StatsWindow(seconds=1.0, received=5, skipped_no_subscribers=5), subscribers=0,
                  now=t0 + 5.5)[:2] == (OK, "5.0 Hz in, but no output has a subscriber: frames are not processed")

    dropping = _stats(last_received=t0 + 5.0, last_too_large="4000x3000 frame (12000000 pixels) is larger "
                      "than max_input_pixels 8294400")
    dropping.qos_event("input", "publisher /drv on /image: reliability offered BEST_EFFORT, requested RELIABLE")
    level, message, values = status(dropping, StatsWindow(seconds=1.0, received=2, dropped_too_large=2),
                                    now=t0 + 5.5)
    assert level == WARN
    assert message == ("incompatible QoS: publisher /drv on /image: reliability offered BEST_EFFORT, requested "
                       "RELIABLE; 2 frame(s) dropped: 4000x3000 frame (12000000 pixels) is larger than "
                       "max_input_pixels 8294400")
    assert values["qos_incompatible_events_total"] == "1"
    # The most severe cause comes first.
    level, message, _ = status(dropping, now=t0 + 20.0)
    assert level == ERROR and message.startswith("no frame for 15.0 s (input_timeout_error 10 s); incompatible QoS")


def test_incompatible_policies_follow_the_dds_rules():
    from rclpy.duration import Duration

    be, rel = _best_effort(), _reliable()
    assert incompatible_policies(be, rel) == ["reliability offered BEST_EFFORT, requested RELIABLE"]
    assert incompatible_policies(rel, be) == []
    assert incompatible_policies(be, be) == []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    assert incompatible_policies(rel, latched) == ["durability offered VOLATILE, requested TRANSIENT_LOCAL"]
    assert incompatible_policies(latched, rel) == []
    deadline = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, deadline=Duration(seconds=1))
    assert incompatible_policies(be, deadline) == ["deadline offered infinite, requested 1 s"]


def test_mailbox_generations_and_single_worker():
    import threading

    mailbox = LatestFrameMailbox(["cam"], generation=1)
    mailbox.put("cam", "a")
    assert [f.msg for f in mailbox.reset(["cam", "other"], generation=2)] == ["a"]  # not processed
    mailbox.put("other", "b")
    assert [f.msg for f in mailbox.reset(["cam"], 3)] == ["b"]
    with pytest.raises(KeyError):
        mailbox.put("other", "late")  # a late callback for a camera of an earlier activation
    mailbox.put("cam", "c")
    (frame,) = mailbox.take_all(timeout=0)
    assert (frame.msg, frame.generation) == ("c", 3)

    release, started, seen = threading.Event(), threading.Event(), []

    def process(frames):
        started.set()
        release.wait(10)
        seen.extend(f.msg for f in frames)
    worker = InferenceWorker(mailbox, process, lambda exc: None)
    assert worker.busy_for() is None
    worker.start()
    mailbox.put("cam", "d")
    assert started.wait(10)
    assert worker.busy_for() is not None and worker.busy_for() >= 0
    assert not worker.stop(timeout=0.05)  # busy: stop does not wait for the batch
    release.set()
    assert worker.join(10) and seen == ["d"]
