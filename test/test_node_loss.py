"""Never silently blind (issue 16): the node started without the launch file gets camera-sized
frames, and whatever is lost anyway is counted and reported on /diagnostics.

One node process for the module, started the way docs/node.md shows it without launch
(``sfnet_node --ros-args --params-file config/sfnet.yaml ...``) and without any Fast DDS variable
in its environment, four cameras:

- ``big``: 640x480 and 1280x720 rgb8 frames from a camera process that starts rclpy through the
  tools' shared init (``sfnet_ros.tools.ros_args.init_rclpy``) reach the node, every one. With the
  profile application switched off on both sides the same bursts delivered 3 of 8 and 0 of 8 here
  (docs/transport.md);
- ``lossy``: a camera process with the profile switched off (``SFNET_FASTDDS_PROFILE=off``) loses
  frames; every frame it offers is either received or counted lost by DDS's message-lost event;
- ``gaps``: frames whose header stamps skip five periods: five frames counted lost, WARN with the
  cause and docs/transport.md;
- ``silent``: a matched publisher that sends nothing: "1 publisher(s) matched but no frame arrived".

Plus the duplicate node name (a second node of the same fully qualified name, then gone) and NaN /
infinity parameters (refused at configure, naming the parameter). Frames are never segmented (no
output has a subscriber), so no forward pass runs. Counts only, no timing; every wait is bounded.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from node_harness import (
    FASTDDS_PROFILE,
    NodeProcess,
    RosClient,
    ScriptedProcess,
    diagnostic_values,
    make_image,
    sample_image,
    wait_until,
)
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from sfnet_core.errors import ConfigError
from sfnet_ros.node.diagnostics import LOSS_CAUSE, StampGaps
from sfnet_ros.node.params import PARAMETERS, config_from_values
from sfnet_ros.transport_profile import PROFILE_VARIABLES, SWITCH_VARIABLE

NS = "/loss"
OK, WARN, ERROR = (int.from_bytes(level, "little") for level in
                   (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR))
#: Camera-sized frames (W, H) of the issue, and how many of each a burst sends.
SIZES = ((640, 480), (1280, 720))
BURST = 8
PERIOD_NS = 100_000_000  # the stamps' period: a 10 Hz camera


def _shell_env(env: dict[str, str]) -> dict[str, str]:
    """A shell that never heard of the profile: no Fast DDS profile variable, no switch."""
    return {k: v for k, v in env.items() if k not in (*PROFILE_VARIABLES, SWITCH_VARIABLE)}


# A camera driver in its own process, starting rclpy through the tools' shared init. Best effort,
# keep last 5 (sensor-data QoS). stdin "W H N STAMP0" publishes N rgb8 frames 0.2 s apart, stamps
# STAMP0 + i * PERIOD_NS, and answers "sent N"; "ready" once the node's subscription matched.
_CAMERA = textwrap.dedent(f"""
    import sys, time
    import numpy as np
    from sfnet_ros.tools.ros_args import init_rclpy

    init_rclpy("sfnet_test_camera", [])
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from sfnet_ros.conversions import numpy_to_image

    node = rclpy.create_node("sfnet_test_camera")
    publisher = node.create_publisher(Image, sys.argv[1], qos_profile_sensor_data)
    deadline = time.monotonic() + 120
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready", publisher.get_subscription_count(), flush=True)
    for line in sys.stdin:
        width, height, count, stamp0 = (int(v) for v in line.split())
        rgb = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
        msg = numpy_to_image(rgb, "rgb8")
        for i in range(count):
            stamp = stamp0 + i * {PERIOD_NS}
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp // 10**9, stamp % 10**9
            publisher.publish(msg)
            time.sleep(0.2)
        print("sent", count, flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
""")


class _Camera(ScriptedProcess):
    """The camera process (``_CAMERA``): publishes ``count`` frames of a size on request."""

    def __init__(self, env: dict[str, str], topic: str, log_path: Path) -> None:
        super().__init__(_CAMERA, [topic], env, log_path)

    def publish(self, width: int, height: int, count: int, stamp0: int) -> int:
        self.send(f"{width} {height} {count} {stamp0}")
        return int(self.expect("sent", 60 + 5 * count)[0])


# -- the module's node ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(ros_domain_module):
    return {**_shell_env(ros_domain_module), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def node(env, checkpoint, tmp_path_factory):
    """sfnet_node started directly (no launch file, no Fast DDS variable), four cameras."""
    parameters = {"checkpoint": str(checkpoint), "device": "cpu", "cameras": ["big", "lossy", "gaps", "silent"],
                  "qos_depth": 20, "diagnostics_period": 0.2, "input_timeout_warn": 1.0, "input_timeout_error": 0.0}
    process = NodeProcess(env, tmp_path_factory.mktemp("loss"), parameters=parameters, namespace=NS,
                          launch_env=False)
    assert not set(process.env) & {*PROFILE_VARIABLES, SWITCH_VARIABLE}
    with process:
        process.wait_for_log("active:")
        yield process


@pytest.fixture(scope="module")
def ros(node):
    with RosClient("sfnet_loss_test") as client:
        client.diagnostics = client.collect(DiagnosticArray, "/diagnostics")
        yield client


def _latest(ros, name: str, predicate=lambda v: True) -> dict[str, str] | None:
    """Values (plus _level, _message) of the newest status of ``name`` matching ``predicate``; a
    camera's status is named ``<node>: <input topic>``, the node's own status its bare name."""
    for msg in reversed(ros.diagnostics.messages):
        if name.endswith("/image"):
            values = diagnostic_values(msg, name)
        else:
            values = next(({kv.key: kv.value for kv in s.values} | {"_level": str(int.from_bytes(s.level, "little")),
                                                                     "_message": s.message}
                           for s in msg.status if s.name == name), None)
        if values is not None and predicate(values):
            return values
    return None


def _wait(ros, name: str, predicate, what: str, timeout: float = 60) -> dict[str, str]:
    return wait_until(lambda: _latest(ros, name, predicate), timeout, what)


def _counts(values: dict[str, str]) -> tuple[int, int, int]:
    return (int(values["frames_received_total"]), int(values["lost_dds_total"]),
            int(values["lost_stamp_gaps_total"]))


# -- (1) camera-sized frames reach a node started without the launch file -------------------------


@pytest.mark.ros_api
def test_direct_start_delivers_camera_sized_frames(node, ros, env, tmp_path, record_property):
    topic = f"{NS}/big/image"
    log = node.wait_for_log("large-frame Fast DDS profile")
    assert f"large-frame Fast DDS profile {FASTDDS_PROFILE} applied" in log, log[-3000:]
    status = _wait(ros, node.fqn, lambda v: "fastdds_profile" in v, "the node's status")
    assert status["fastdds_profile"] == f"package {FASTDDS_PROFILE}", status

    with _Camera(env, topic, tmp_path / "camera.log") as camera:
        # Matched on the node's side too: a best-effort frame sent before that would be lost.
        _wait(ros, topic, lambda v: int(v["input_publishers"]) >= 1, "the node to match the camera")
        offered, stamp = 0, 1_000_000_000
        for width, height in SIZES:
            offered += camera.publish(width, height, BURST, stamp)
            stamp += BURST * PERIOD_NS
    # Every frame: the 64 MiB segments hold dozens of them; a broken transport gets a few.
    try:
        values = _wait(ros, topic, lambda v: _counts(v)[0] >= offered, f"{offered} frames on {topic}", timeout=30)
    except TimeoutError:
        values = _latest(ros, topic)
        raise AssertionError(f"{values['frames_received_total']} of {offered} frames reached the node "
                             f"(lost by DDS: {values['lost_dds_total']}): {values['_message']}") from None
    received, lost_dds, _ = _counts(values)
    record_property("delivered", f"{received}/{offered}")
    assert (received, lost_dds) == (offered, 0), values


# -- (3) loss is counted and reported --------------------------------------------------------------


def test_frames_lost_by_dds_are_counted(node, ros, env, tmp_path, record_property):
    """A camera without the profile (switched off) loses 1280x720 frames (6 to 8 of 8 here); each
    frame it offers ends up either received or counted by DDS's message-lost event. Small frames
    (they fit the default segment) open and close the burst: DDS counts a lost sample between two it
    received (from the writer's first sample it saw, up to the next one that arrives)."""
    topic = f"{NS}/lossy/image"
    with _Camera({**env, SWITCH_VARIABLE: "off"}, topic, tmp_path / "camera_off.log") as camera:
        _wait(ros, topic, lambda v: int(v["input_publishers"]) >= 1, "the node to match the camera")
        offered = camera.publish(64, 32, 1, 1_000_000_000)
        offered += camera.publish(1280, 720, BURST, 1_000_000_000 + PERIOD_NS)
        offered += camera.publish(64, 32, 1, 1_000_000_000 + (BURST + 1) * PERIOD_NS)
    try:
        values = _wait(ros, topic, lambda v: sum(_counts(v)[:2]) >= offered, "every frame received or counted lost",
                       timeout=30)
    except TimeoutError:
        values = _latest(ros, topic)
        raise AssertionError(f"{values['frames_received_total']} received + {values['lost_dds_total']} counted "
                             f"lost by DDS != {offered} offered: {values['_message']}") from None
    received, lost_dds, _ = _counts(values)
    record_property("received_lost_offered", f"{received}/{lost_dds}/{offered}")
    print(f"camera without the profile: {received} received, {lost_dds} counted lost by DDS, of {offered}")
    assert values["message_lost_event"] == "yes", values
    assert received + lost_dds == offered, values
    assert received >= 2  # the small frames
    if lost_dds:
        warned = _wait(ros, topic, lambda v: int(v["_level"]) == WARN and int(v["lost_dds"]) > 0,
                       "WARN for the window with the lost frames")
        assert LOSS_CAUSE in warned["_message"] and "lost in" in warned["_message"], warned
        assert "message(s) lost in transport on /loss/lossy/image" in node.log()


def test_header_stamp_gaps_are_counted_and_warned(node, ros):
    """Stamps 10 Hz apart with five missing: five frames counted lost, WARN naming the cause."""
    topic = f"{NS}/gaps/image"
    # Deep enough on both sides (the node's qos_depth is 20) that all 15 frames sent at once are kept.
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
    publisher = ros.publisher(Image, topic, qos)
    ros.wait_for_subscribers(publisher)
    _wait(ros, topic, lambda v: int(v["input_publishers"]) >= 1, "the node to match our publisher")
    frame = sample_image(32, 64, 1)
    for index in [*range(10), *range(15, 20)]:
        publisher.publish(make_image(frame, "rgb8", 5_000_000_000 + index * PERIOD_NS))
    values = _wait(ros, topic, lambda v: sum(_counts(v)[::2]) >= 20, "all 20 stamps accounted for", timeout=30)
    received, _, gaps = _counts(values)
    assert (received, gaps) == (15, 5), values
    assert float(values["stamp_period_ms"]) == pytest.approx(100.0)
    warned = _wait(ros, topic, lambda v: int(v["lost_stamp_gaps"]) == 5, "the window with the gap")
    assert int(warned["_level"]) == WARN, warned
    assert "5 of" in warned["_message"] and "header-stamp gaps 5" in warned["_message"], warned
    assert LOSS_CAUSE in warned["_message"] and "docs/transport.md" in warned["_message"], warned
    ros.node.destroy_publisher(publisher)


@pytest.mark.ros_api
def test_matched_publisher_without_frames_is_reported(node, ros):
    topic = f"{NS}/silent/image"
    nobody = _wait(ros, topic, lambda v: int(v["_level"]) == WARN, "silent: WARN")
    assert "no frame received since activation" in nobody["_message"], nobody
    assert "no publisher matched" in nobody["_message"], nobody
    publisher = ros.publisher(Image, topic)
    try:
        values = _wait(ros, topic, lambda v: "publisher(s) matched but no frame arrived" in v["_message"],
                       "the matched-but-silent report")
        assert int(values["_level"]) == WARN and values["input_publishers"] == "1", values
        assert values["_message"].startswith("1 publisher(s) matched but no frame arrived in "), values
        assert "large frames lost in transport? see docs/transport.md" in values["_message"], values
    finally:
        ros.node.destroy_publisher(publisher)


# -- (4) two nodes of one name ---------------------------------------------------------------------


def test_duplicate_node_name_is_reported_and_cleared(node, ros):
    import rclpy

    _wait(ros, node.fqn, lambda v: v["nodes_with_this_name"] == "1" and int(v["_level"]) == OK, "node status OK")
    twin = rclpy.create_node("sfnet_node", namespace=NS, context=ros.context)
    try:
        values = _wait(ros, node.fqn, lambda v: v["nodes_with_this_name"] == "2", "the duplicate reported")
        assert int(values["_level"]) == WARN, values
        assert f"2 nodes named {node.fqn} on ROS domain" in values["_message"], values
        assert f"2 nodes named {node.fqn}" in node.wait_for_log("nodes named")
    finally:
        twin.destroy_node()
    values = _wait(ros, node.fqn, lambda v: v["nodes_with_this_name"] == "1", "the duplicate gone")
    assert int(values["_level"]) == OK and values["_message"] == "active", values
    assert f"no other node named {node.fqn}" in node.wait_for_log("no other node named")


# -- (5) NaN and infinity ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_double_parameter_refuses_non_finite_values(value):
    doubles = [p for p in PARAMETERS if p.kind == "double"]
    assert {p.name for p in doubles} >= {"overlay_alpha", "diagnostics_period", "input_loss_warn"}
    for p in doubles:
        with pytest.raises(ConfigError) as error:
            config_from_values({p.name: value})
        assert str(error.value) == f"parameter '{p.name}': {value!r} is not a finite number (NaN and infinity " \
                                   "are refused)"


def test_a_non_finite_parameter_fails_configure_and_a_second_instance_is_warned(node, ros, env, checkpoint,
                                                                               tmp_path):
    """`-p input_loss_warn:=.nan` (YAML NaN) on the command line: configure fails with the one error
    naming the parameter; the process, a second /loss/sfnet_node, sees the first one and says so."""
    twin = NodeProcess(env, tmp_path, parameters={"checkpoint": str(checkpoint)}, namespace=NS, launch_env=False,
                       log_name="nan")
    twin.command += ["-p", "input_loss_warn:=.nan"]  # YAML's NaN, as a user would type it
    with twin:
        log = twin.wait_for_log("configure failed")
        assert ("configure failed: parameter 'input_loss_warn': nan is not a finite number (NaN and infinity are "
                "refused)") in log, log[-3000:]
        assert f"2 nodes named {node.fqn}" in twin.wait_for_log("nodes named")
        _wait(ros, node.fqn, lambda v: v["nodes_with_this_name"] == "2", "the first node to see the second")
    assert twin.process.returncode == 0


# -- the stamp-gap rule, without ROS ----------------------------------------------------------------


def test_stamp_gap_rule():
    gaps = StampGaps()
    period = 33_333_333
    stamps = [10**9 + i * period for i in range(8)]
    assert [gaps.observe(s) for s in stamps] == [0] * 8  # regular: nothing missing
    assert gaps.observe(stamps[-1] + 4 * period) == 3  # three frames missing
    assert gaps.observe(stamps[-1] + 4 * period + period + period // 5) == 0  # jitter is not loss
    assert gaps.observe(stamps[0]) == 0  # backwards (a bag played again): a new start
    assert gaps.period_ns() is None
    assert gaps.observe(0) == 0  # unstamped frames are not judged
