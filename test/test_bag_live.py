"""Bags over real DDS: sfnet-bag-play -> sfnet_node -> sfnet-bag-record (three processes), and
sfnet-live-eval against the same node. Every wait polls with a deadline; every process is stopped."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import REPO_ROOT, NodeProcess, wait_until, write_test_checkpoint

from sfnet_core.evaluation.metrics import ConfusionMatrix
from sfnet_ros.tools.bag_io import BagReader, decode_labels
from sfnet_ros.tools.synthetic_bag import frame_stamps, write_synthetic_bag

H, W, N = 64, 128, 4
LABELS = "/front/segmentation/labels"
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def env(ros_domain_module: dict[str, str]) -> dict[str, str]:
    return ros_domain_module


@pytest.fixture(scope="module")
def node(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module (a model load per start is slow), as the launch file starts it."""
    tmp = tmp_path_factory.mktemp("node")
    ckpt = write_test_checkpoint(tmp / "model.pt", model_name="sfnet_shufflenetv2")
    with NodeProcess(env, tmp, parameters={"checkpoint": str(ckpt), "device": "cpu"},
                     remaps={"image": "/front/image_raw"}, namespace="/front") as proc:
        proc.wait_for_log("active:")
        yield proc


def _tool(module: str, *args: object, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out.decode()


@pytest.mark.ros_api
def test_play_node_record_then_live_eval(node: NodeProcess, env: dict[str, str], tmp_path: Path) -> None:
    bag, _, truth = write_synthetic_bag(tmp_path / "drive.mcap", N, H, W, seed=2)
    out = tmp_path / "recorded.mcap"
    rec_log = tmp_path / "record.log"
    recorder = _tool("sfnet_ros.tools.bag_record", "--topics", LABELS, "--out", out, "--max-messages", N,
                     env=env, log=rec_log)
    try:
        # subscribed once the node's publisher is in the graph
        wait_until(lambda: "recording 1 topic" in rec_log.read_text() or recorder.poll() is not None,
                   TIMEOUT, "the recorder to subscribe")
        play = _tool("sfnet_ros.tools.bag_play", "--bag", bag, "--topics", "/front/image_raw",
                     "--wait-for-subscribers", 1,
                     "--lockstep", f"/front/image_raw:{LABELS}", env=env, log=tmp_path / "play.log")
        code, stdout = _finish(play)
        assert code == 0, (tmp_path / "play.log").read_text()
        stats = json.loads(stdout)
        # every frame answered; a frame lost before the node's side matched the player is sent again
        assert stats["published"] == {"/front/image_raw": N + stats["lockstep_resent"]}
        assert stats["lockstep_timeouts"] == 0
        code, stdout = _finish(recorder)  # stops by itself after N messages
        assert code == 0, rec_log.read_text()
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
    assert json.loads(stdout)["messages"] == {LABELS: N}

    with BagReader(out) as reader:
        assert reader.topics[LABELS].count == N
        msgs = list(reader.messages([LABELS]))
    assert [m.stamp for m in msgs] == frame_stamps(N, 10.0)  # the bag's headers survive the round trip
    assert all(m.msg.header.frame_id == "front_camera" for m in msgs)
    recorded = [decode_labels(m.msg, m.msgtype) for m in msgs]
    assert all(r.shape == (H, W) for r in recorded)
    matrix = ConfusionMatrix(19, ignore_index=255)
    for pred, label in zip(recorded, truth):
        matrix.update(pred, label)

    # the same frames through sfnet-live-eval (in process, restamped, lockstep): nothing dropped,
    # and the node's labels are deterministic, so mIoU equals the one of the recorded outputs
    from sfnet_ros.tools.live_eval import main as live_main

    live_out = tmp_path / "live.json"
    code = _run_live(live_main, live_out, "--bag", bag, "--image-topic", "/front/image_raw",
                     "--label-topic", "/front/labels", "--lockstep", "--wait-timeout", TIMEOUT)
    report = json.loads(live_out.read_text())
    assert code == 0
    assert (report["sent"], report["received"], report["dropped"], report["matched"]) == (N, N, 0, N)
    assert report["latency_ms"]["p50"] > 0
    assert report["miou"] == pytest.approx(float(matrix.compute().miou), abs=1e-6)


def _run_live(main, out: Path, *args: object) -> int:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([str(a) for a in args])
    out.write_text(buffer.getvalue())
    return code


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_record_stops_cleanly_on_signal(node: NodeProcess, env: dict[str, str], tmp_path: Path, sig: int) -> None:
    out = tmp_path / "stopped.mcap"
    log = tmp_path / "record.log"
    recorder = _tool("sfnet_ros.tools.bag_record", "--topics", LABELS, "/front/segmentation/classes", "--out", out,
                     env=env, log=log)
    try:
        wait_until(lambda: "recording 2 topic" in log.read_text() or recorder.poll() is not None, TIMEOUT,
                   "the recorder to subscribe")
        # the latched class list (transient local) arrives without any frame being played
        wait_until(lambda: "first message on /front/segmentation/classes" in log.read_text()
                   or recorder.poll() is not None, TIMEOUT, "the class list")
        recorder.send_signal(sig)
        code, stdout = _finish(recorder)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
    assert code == 0, log.read_text()  # a signal is how a recording ends: exit 0, bag finalised
    assert f"stopped by {signal.Signals(sig).name}" in log.read_text()
    assert json.loads(stdout)["messages"]["/front/segmentation/classes"] == 1
    with BagReader(out) as reader:  # finalised: a valid bag, no staging folder left over
        assert reader.topics["/front/segmentation/classes"].count == 1
        assert reader.topics[LABELS].count == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.log", "stopped.mcap"]


def test_record_type_syntax_and_ros_args(ros_domain: dict[str, str], tmp_path: Path) -> None:
    """``--type TOPIC:=pkg/msg/Type`` (the syntax the help documents) is the tool's own argument,
    not a ROS remap: it records TOPIC. ROS arguments still reach rclpy after ``--ros-args``."""
    from node_harness import RosClient
    from std_msgs.msg import String

    out = tmp_path / "chatter.mcap"
    log = tmp_path / "record.log"
    recorder = _tool("sfnet_ros.tools.bag_record", "--topics", "/chatter", "--type", "/chatter:=std_msgs/msg/String",
                     "--qos", "reliable", "--max-messages", 3, "--out", out, "--ros-args", "-r", "__node:=rec_x",
                     env=ros_domain, log=log)
    try:
        with RosClient() as ros:
            pub = ros.publisher(String, "/chatter")
            ros.wait_for_subscribers(pub, timeout=TIMEOUT)  # the recorder subscribed /chatter itself
            wait_until(lambda: "rec_x" in ros.node.get_node_names(), TIMEOUT, "the recorder named by --ros-args")
            for i in range(3):
                pub.publish(String(data=f"m{i}"))
            code, stdout = _finish(recorder)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
    assert code == 0, log.read_text()
    assert "subscribed /chatter [std_msgs/msg/String]" in log.read_text()
    assert json.loads(stdout)["messages"] == {"/chatter": 3}
    with BagReader(out) as reader:
        assert [m.msg.data for m in reader.messages(["/chatter"])] == ["m0", "m1", "m2"]


def test_play_errors(env: dict[str, str], tmp_path: Path) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 1, H, W)
    for args, expected in [
        (("--bag", tmp_path / "missing.mcap"), "no such bag"),
        (("--bag", bag, "--topics", "/nope"), "'/nope' not in the bag"),
        (("--bag", bag, "--rate", "0"), "--rate: expected a number > 0"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "sfnet_ros.tools.bag_play", *map(str, args)], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_lockstep_sends_a_lost_frame_once_more(ros_domain: dict[str, str], tmp_path: Path) -> None:
    """A consumer that never answers the first frame (what best effort does to a sample sent before
    the subscriber's side of discovery completed): the player sends that frame once more, gets
    its answer and goes on; every frame is answered once in the end, none counted as timed out.
    Labels answering the same frame twice are scored once (sfnet-live-eval's collector)."""
    from node_harness import RosClient
    from sensor_msgs.msg import Image

    from sfnet_ros.tools.bag_play import BagPlayer, qos_profile
    from sfnet_ros.tools.live_eval import _Collector

    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", N, H, W, seed=1)
    with RosClient() as ros:
        seen: list[int] = []

        def answer(msg: Image) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            seen.append(stamp)
            if len(seen) > 1:  # the first one is "lost"
                out.publish(Image(header=msg.header, height=1, width=1, encoding="mono8", step=1, data=[0]))

        out = ros.node.create_publisher(Image, "/answers", qos_profile("best_effort"))
        ros.node.create_subscription(Image, "/front/image_raw", answer, qos_profile("reliable"))
        player = BagPlayer(ros.node, bag, ["/front/image_raw"], lockstep=("/front/image_raw", "/answers"),
                           lockstep_timeout=2.0)
        assert player.wait_for_subscribers(1, TIMEOUT)  # the client spins its node (answers flow)
        wait_until(lambda: out.get_subscription_count() >= 1, TIMEOUT, "the player's answer subscription")
        stats = player.play()
    assert (stats.lockstep_resent, stats.lockstep_timeouts) == (1, 0)
    assert stats.published == {"/front/image_raw": N + 1}
    assert seen[0] == seen[1] and len(set(seen)) == N  # the first frame twice, then each frame once

    collector = _Collector({}, ConfusionMatrix(19, ignore_index=255))
    collector.on_publish("/front/image_raw", 7, 1_000_000_007)
    label = Image(height=1, width=1, encoding="mono8", step=1, data=[0])
    label.header.stamp.sec, label.header.stamp.nanosec = 1, 7
    collector.on_labels(label)
    collector.on_labels(label)
    assert (collector.received, collector.duplicates) == (1, 1)


def test_every_drop_has_a_reason_from_the_nodes_counters() -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from sfnet_ros.tools.live_eval import _Collector, drop_reasons

    collector = _Collector({}, None)
    status = DiagnosticStatus(name="/front/sfnet_node: /front/image_raw", values=[
        KeyValue(key=k, value=v) for k, v in (("frames_received_total", "17"), ("dropped_stale_total", "6"),
                                              ("frames_published_total", "11"))])
    node_own = DiagnosticStatus(name="/front/sfnet_node", values=[KeyValue(key="state", value="active")])
    collector.on_diagnostics(DiagnosticArray(status=[node_own, status]))
    counters = collector.node_counters["/front/image_raw"]
    assert list(collector.node_counters) == ["/front/image_raw"]
    # 20 sent, 10 answered: 3 never reached the node, 6 replaced while it was busy, 1 published but lost
    reasons = drop_reasons(20, 10, counters)
    assert sum(reasons.values()) == 10
    assert reasons == {
        "replaced by a newer frame while the node was busy (the node is slower than --rate)": 6,
        "never reached the node (lost in transport: see docs/transport.md)": 3,
        "published by the node but not received here": 1}
    assert drop_reasons(5, 5, counters) == {}
    assert drop_reasons(5, 3, None) == {"unknown (no /diagnostics from the node for this camera)": 2}
