"""Large frames over Fast DDS: config/fastdds_large_frames.xml is what Fast DDS loads, and with it
camera-sized frames from a real publisher process reach the node (docs/transport.md).

Counts only, no timing: every wait is bounded and polls; the numbers behind the profile are
measured by ``bench/node_latency.py --delivery``.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
from doc_commands import fenced_blocks
from node_harness import (
    FASTDDS_PROFILE,
    REPO_ROOT,
    NodeProcess,
    RosClient,
    ScriptedProcess,
    launch_environment,
    wait_until,
)

from sfnet_ros.launch_support import PROFILE_FILE_NAME, PROFILE_VARIABLES, camera_plan, fastdds_profile_environment
from sfnet_ros.ros_distro import FAST_DDS_2_DISTROS, ros_distribution
from sfnet_ros.transport_profile import OFF_VALUES, SWITCH_VARIABLE, decide_profile

NS = "{http://www.eprosima.com}"
LARGEST = (3000, 4000)  # H, W: the 12 MP frame of issue 13, 36 MB as rgb8


def _without_profile(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PROFILE_VARIABLES}


# -- the profile file -------------------------------------------------------------------------------


def test_profile_holds_a_12_megapixel_frame():
    root = ET.parse(FASTDDS_PROFILE).getroot()
    assert root.tag == f"{NS}dds"
    descriptors = {d.findtext(f"{NS}transport_id"): d for d in root.iter(f"{NS}transport_descriptor")}
    (participant,) = root.iter(f"{NS}participant")
    assert participant.get("is_default_profile") == "true"  # every participant of the process
    rtps = participant.find(f"{NS}rtps")
    assert rtps.findtext(f"{NS}useBuiltinTransports") == "false"
    used = [t.text for t in rtps.find(f"{NS}userTransports")]
    assert sorted(used) == sorted(descriptors), "every descriptor used, every used one described"
    kinds = {descriptors[t].findtext(f"{NS}type"): descriptors[t] for t in used}
    assert set(kinds) == {"SHM", "UDPv4"}  # shared memory on the machine, UDP to others and for discovery
    frame = LARGEST[0] * LARGEST[1] * 3
    shm = kinds["SHM"]
    assert int(shm.findtext(f"{NS}segment_size")) >= 1.5 * frame  # more than one frame in flight
    assert int(shm.findtext(f"{NS}port_queue_capacity")) >= 2 * frame // 64000  # two frames of ~64 KB fragments
    udp = kinds["UDPv4"]
    assert int(udp.findtext(f"{NS}sendBufferSize")) >= 4 << 20
    assert int(udp.findtext(f"{NS}receiveBufferSize")) >= 4 << 20


_SEGMENT_PROBE = textwrap.dedent("""
    import rclpy
    rclpy.init()
    node = rclpy.create_node("sfnet_profile_probe")
    sizes = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if path.startswith(("/dev/shm/fastdds_", "/dev/shm/fastrtps_")) and "_port" not in path \
                    and not path.endswith("_el"):  # Fast DDS 3 (Kilted) and 2 (Jazzy) names
                start, end = (int(v, 16) for v in line.split()[0].split("-"))
                sizes.append(end - start)
    print(max(sizes, default=0))
    node.destroy_node()
    rclpy.shutdown()
""")


@pytest.mark.ros_api
@pytest.mark.parametrize("with_profile", [True, False], ids=["profile", "default"])
def test_fast_dds_loads_the_profile(ros_domain, with_profile):
    """A process started as the launch file starts the node maps a shared-memory segment of the
    profile's size (Fast DDS would only log a profile it cannot parse, and use 512 KiB)."""
    env = launch_environment(ros_domain) if with_profile else _without_profile(ros_domain)
    run = subprocess.run([sys.executable, "-c", _SEGMENT_PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    mapped = int(run.stdout.split()[-1])
    segment = int(next(ET.parse(FASTDDS_PROFILE).getroot().iter(f"{NS}segment_size")).text)
    if with_profile:
        assert mapped >= segment, run.stderr[-2000:]
    else:
        assert 0 < mapped < 4 << 20  # Fast DDS's 512 KiB default (plus bookkeeping)


# -- every process applies the profile itself (sfnet_ros.transport_profile), unless told otherwise ----

# A tool's process: rclpy through the tools' shared init (sfnet_ros.tools.ros_args.init_rclpy), then
# the size of the largest Fast DDS shared-memory segment it maps.
_INIT_PROBE = _SEGMENT_PROBE.replace("import rclpy\nrclpy.init()", "import rclpy\n"
                                     "from sfnet_ros.tools.ros_args import init_rclpy\n"
                                     "init_rclpy('sfnet_profile_probe', [])")


@pytest.mark.ros_api
def test_the_shared_init_applies_the_profile_keeps_the_users_and_can_be_switched_off(ros_domain, tmp_path):
    """Three tool processes started from a shell without any profile variable: the package's profile
    (64 MiB segment); the user's own exported profile (an 8 MiB segment here), kept and named on
    stderr; SFNET_FASTDDS_PROFILE=off: Fast DDS's 512 KiB default, and it says so."""
    assert "init_rclpy('sfnet_profile_probe', [])" in _INIT_PROBE
    shell = {k: v for k, v in ros_domain.items() if k not in (*PROFILE_VARIABLES, SWITCH_VARIABLE)}
    user_profile = tmp_path / "my_stack.xml"
    user_profile.write_text(FASTDDS_PROFILE.read_text().replace(">67108864<", ">8388608<"))
    # the variable this distribution's Fast DDS reads (2: Jazzy and older; 3: Kilted)
    user_variable = PROFILE_VARIABLES[1 if ros_distribution() in FAST_DDS_2_DISTROS else 0]
    cases = {"package": shell, "user": {**shell, user_variable: str(user_profile)},
             "off": {**shell, SWITCH_VARIABLE: "off"}}
    # A domain each: a participant also maps the segments of the participants it discovers.
    from conftest import next_domain_id

    cases = {name: {**env, "ROS_DOMAIN_ID": str(next_domain_id())} for name, env in cases.items()}
    runs = {name: subprocess.Popen([sys.executable, "-c", _INIT_PROBE], env=env, cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, env in cases.items()}
    out = {}
    for name, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-2000:]
        out[name] = (int(stdout.split()[-1]), stderr)
    segment = int(next(ET.parse(FASTDDS_PROFILE).getroot().iter(f"{NS}segment_size")).text)
    mapped, _ = out["package"]
    assert mapped >= segment
    mapped, stderr = out["user"]
    assert 8 << 20 <= mapped < segment, stderr[-2000:]
    assert f"Fast DDS profile of the user's own kept: {user_variable}={user_profile}" in stderr
    mapped, stderr = out["off"]
    assert 0 < mapped < 4 << 20, stderr[-2000:]
    assert f"large-frame Fast DDS profile off ({SWITCH_VARIABLE}=off)" in stderr


def test_profile_rule(tmp_path, monkeypatch):
    """sfnet_ros.transport_profile.decide_profile, the one rule of the node, the tools and launch."""
    from sfnet_ros.transport_profile import (
        SWITCH_VARIABLE,
        decide_profile,
        find_profile_file,
        profile_candidates,
    )

    monkeypatch.chdir(tmp_path)
    ours = tmp_path / "ours.xml"
    ours.write_text("<dds/>")
    theirs = tmp_path / "theirs.xml"
    theirs.write_text("<dds/>")
    decision = decide_profile({"ROS_DISTRO": "kilted"}, default_profile=ours)
    assert (decision.action, decision.variables, decision.warning) == (
        "package", {PROFILE_VARIABLES[0]: str(ours)}, False)
    assert f"{SWITCH_VARIABLE}=off runs without it" in decision.message
    for fast_dds_2 in ("humble", "jazzy"):
        assert decide_profile({"ROS_DISTRO": fast_dds_2}, default_profile=ours).variables == dict.fromkeys(
            PROFILE_VARIABLES, str(ours))
    # a user's profile under the variable that Fast DDS 2 does not read: kept, but said loudly
    decision = decide_profile({PROFILE_VARIABLES[0]: str(theirs), "ROS_DISTRO": "jazzy"}, default_profile=ours)
    assert decision.action == "user" and decision.warning and f"reads only {PROFILE_VARIABLES[1]}" in decision.message
    assert not decide_profile({PROFILE_VARIABLES[0]: str(theirs), "ROS_DISTRO": "kilted"}).warning
    # the user's choice is kept and named: either variable, a default file in the cwd, the transports
    for environ, named in (({PROFILE_VARIABLES[1]: str(theirs)}, f"{PROFILE_VARIABLES[1]}={theirs}"),
                           ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA")):
        decision = decide_profile(environ, default_profile=ours)
        assert (decision.action, decision.variables) == ("user", {}) and named in decision.message
    (tmp_path / "DEFAULT_FASTRTPS_PROFILES.xml").write_text("<dds/>")
    decision = decide_profile({}, default_profile=ours)
    assert decision.action == "user" and "DEFAULT_FASTRTPS_PROFILES.xml in the working directory" in decision.message
    (tmp_path / "DEFAULT_FASTRTPS_PROFILES.xml").unlink()
    # an exported file that does not exist: kept (the user's), but said loudly
    decision = decide_profile({PROFILE_VARIABLES[0]: str(tmp_path / "gone.xml")}, default_profile=ours)
    assert decision.action == "user" and decision.warning and "does not exist" in decision.message
    # ours, already exported (by the launch file): recognised as ours
    assert decide_profile({PROFILE_VARIABLES[0]: str(ours)}, default_profile=ours).action == "package"
    # the switch: off (whatever the spelling), a path, a missing path
    for value in ("off", "OFF", "none", "0", "false"):
        decision = decide_profile({SWITCH_VARIABLE: value}, default_profile=ours)
        assert (decision.action, decision.variables) == ("off", {}), value
    assert decide_profile({SWITCH_VARIABLE: "theirs.xml", PROFILE_VARIABLES[0]: "/x.xml",
                           "ROS_DISTRO": "kilted"}).variables == {PROFILE_VARIABLES[0]: str(theirs)}
    decision = decide_profile({SWITCH_VARIABLE: "nope.xml"})
    assert decision.action == "missing" and decision.warning and decision.variables == {}
    # not Fast DDS: nothing at all
    decision = decide_profile({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, default_profile=ours)
    assert (decision.action, decision.variables) == ("other-rmw", {})
    # the package's file: found in this checkout, and in an installed layout (colcon: the package in
    # <prefix>/lib/pythonX.Y/site-packages, the file in <prefix>/share/sfnet_ros/config)
    assert find_profile_file() == FASTDDS_PROFILE
    package = tmp_path / "install" / "lib" / "python3.10" / "site-packages" / "sfnet_ros"
    package.mkdir(parents=True)
    installed = tmp_path / "install" / "share" / "sfnet_ros" / "config" / FASTDDS_PROFILE.name
    installed.parent.mkdir(parents=True)
    installed.write_text("<dds/>")
    assert find_profile_file(profile_candidates(package)) == installed
    installed.unlink()
    # (an ament index, where one is set up, may know another installed copy: not this test's)
    decision = decide_profile({}, candidates=[c for c in profile_candidates(package) if tmp_path in c.parents])
    assert decision.action == "missing" and decision.warning and str(installed) in decision.message


# -- frames of 4000x3000 reach the node ---------------------------------------------------------------

# A camera driver in its own process: best effort, keep last 5 (sensor-data QoS). Publishes one
# frame per line read on stdin ("N" = publish N frames, 0.5 s apart) once the node has matched,
# and answers "sent N" after each batch.
_CAMERA = textwrap.dedent("""
    import sys, time
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from sfnet_ros.conversions import numpy_to_image

    height, width = int(sys.argv[1]), int(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("sfnet_test_camera")
    publisher = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    deadline = time.monotonic() + 120
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    msg = numpy_to_image(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8")
    msg.header.frame_id = "camera"
    print("ready", publisher.get_subscription_count(), flush=True)
    for line in sys.stdin:
        count = int(line)
        for i in range(count):
            msg.header.stamp.nanosec = i
            publisher.publish(msg)
            time.sleep(0.5)
        print("sent", count, flush=True)
    node.destroy_node()
    rclpy.shutdown()
""")


class _Camera(ScriptedProcess):
    """The camera process (``_CAMERA``): publishes ``count`` frames on request."""

    def __init__(self, env: dict[str, str], height: int, width: int, log_path) -> None:
        super().__init__(_CAMERA, [height, width], env, log_path)

    def publish(self, count: int) -> int:
        self.send(str(count))
        return int(self.expect("sent", 60 + 5 * count)[0])


def _received_total(diagnostics) -> int | None:
    for msg in reversed(diagnostics.messages):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "frames_received_total" in values:
                return int(values["frames_received_total"])
    return None


def _settled_total(diagnostics, readings: int = 3) -> int:
    """The node's frames_received_total once it is unchanged over ``readings`` fresh messages."""
    seen: list[int] = []

    def settled() -> bool:
        count = len(diagnostics.messages)
        wait_until(lambda: len(diagnostics.messages) > count, 60, "fresh /diagnostics")
        seen.append(_received_total(diagnostics))
        return len(seen) >= readings and len(set(seen[-readings:])) == 1

    wait_until(settled, 120, "the node's frame count to settle", poll=0)
    return seen[-1]


def test_4000x3000_frames_reach_the_node_with_the_profile(ros_domain, tmp_path, checkpoint, record_property):
    """A 12 MP rgb8 frame from a camera process reaches the node's callback when the stack runs
    with the profile (node as the launch file starts it, camera with the exported profile). Without
    the profile on the camera's side the count is only reported: Fast DDS drops such frames
    (0 of 36 in bench/node_latency.py --delivery here), which no test should depend on."""
    from diagnostic_msgs.msg import DiagnosticArray

    height, width = LARGEST
    parameters = {"checkpoint": str(checkpoint), "device": "cpu", "input_size": [64, 128],
                  "diagnostics_period": 0.5,
                  # delivery is what is tested: drop the frame before inference where the node can
                  # (a 12 MP forward pass on a shared 2-core machine takes tens of seconds)
                  "max_input_pixels": 1_000_000}
    with NodeProcess(ros_domain, tmp_path, parameters=parameters, remaps={"image": "/camera/image_raw"},
                     namespace="/veh") as node, RosClient() as ros:
        assert node.env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(FASTDDS_PROFILE)
        node.wait_for_log("active:")
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
        wait_until(lambda: _received_total(diagnostics) is not None, 60, "the node's camera diagnostics")

        # Without the profile on the camera's side: reported, not asserted.
        before = _settled_total(diagnostics)
        camera = _Camera(_without_profile(ros_domain), height, width, tmp_path / "camera_default.log")
        try:
            offered_default = camera.publish(6)
        finally:
            camera.close()
        received_default = _settled_total(diagnostics) - before
        record_property("received_without_profile", f"{received_default}/{offered_default}")
        print(f"4000x3000 rgb8, camera without the profile: {received_default} of {offered_default} frames "
              f"reached the node")

        # With the profile exported for the camera too: at least one frame arrives.
        before = _settled_total(diagnostics)
        camera = _Camera(launch_environment(_without_profile(ros_domain)), height, width,
                         tmp_path / "camera_profile.log")
        try:
            offered = 0
            while offered < 20 and _settled_total(diagnostics, readings=2) - before < 1:
                offered += camera.publish(2)
        finally:
            camera.close()
        received = _settled_total(diagnostics) - before
        record_property("received_with_profile", f"{received}/{offered}")
        print(f"4000x3000 rgb8, camera with the profile: {received} of {offered} frames reached the node")
        assert received >= 1, f"no 4000x3000 frame reached the node in {offered} offered:\n{node.log()[-3000:]}"
        assert node.running()


# -- docs/transport.md: every command is one a test runs or checks ----------------------------------


def test_transport_doc_commands():
    """The page's shell commands: the exports name the installed profile under the variables Fast DDS
    reads; the launch commands are accepted by the launch file's logic (launch is not installable
    here); the bench command is the one test_bench.py runs (with --quick)."""
    import shlex

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        from node_bench.delivery import SETTINGS
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))

    text = (REPO_ROOT / "docs" / "transport.md").read_text()
    blocks = [body for language, body in fenced_blocks(text) if language in ("bash", "sh", "shell")]
    commands = [shlex.split(line.split(" #", 1)[0]) for block in blocks
                for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    kinds = set()
    for words in commands:
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            if name == SWITCH_VARIABLE:  # the switch: what turns it off is one of the values the rule reads
                assert value in OFF_VALUES and decide_profile({name: value}).action == "off", words
                kinds.add(name)
                continue
            assert name in PROFILE_VARIABLES, words
            assert value.endswith(f"/share/sfnet_ros/config/{PROFILE_FILE_NAME}") or value == f"${PROFILE_VARIABLES[0]}"
            kinds.add(name)
        elif words[:3] == ["ros2", "launch", "sfnet_ros"]:
            arguments = dict(word.split(":=", 1) for word in words[4:])
            camera_plan(arguments.get("cameras", ""), arguments.get("image_topics", ""),
                        arguments.get("image_topic", "/camera/image_raw"))
            fastdds_profile_environment(arguments.get("fastdds_profile", "auto"), {}, FASTDDS_PROFILE, "kilted")
            kinds.add("launch")
        else:
            assert words[:3] == [".venv/bin/python", "bench/node_latency.py", "--delivery"], words
            settings = words[words.index("--settings") + 1].split(",") if "--settings" in words else []
            assert set(settings) <= set(SETTINGS), words  # the bench's own names
            kinds.add("bench")
    assert kinds == {*PROFILE_VARIABLES, SWITCH_VARIABLE, "launch", "bench"}
    assert (REPO_ROOT / "config" / PROFILE_FILE_NAME) == FASTDDS_PROFILE and FASTDDS_PROFILE.is_file()
