"""sfnet_node's geometry and side outputs over real Fast DDS (issue 13 items 1-5, issue 12 item 2).

One node process serves the module (started as the launch file starts it for one camera:
``image`` -> /cam/image_raw, ``camera_info`` -> /cam/camera_info); each configuration is reached
through the lifecycle services (deactivate, cleanup, set parameters, configure, activate), which
costs a model load instead of a process start. Frames are 64x128, the network input 48x64, so
every policy maps pixels non-trivially:

* stretch: x scaled by 1/2, y by 3/4;
* letterbox: scale 1/2, the 32x64 content 8 rows down in the 48x64 input (bands of 8 rows);
* crop: the centred 64x85 window (columns 21..105) scaled to 48x64.

Checked against the test process's own ``Segmenter`` (same checkpoint, same geometry) and against
camera matrices computed by hand from the numbers above (not by the code under test). Then the
backends: an exported ``.onnx`` and a ``.pt`` with ``backend: onnxruntime`` (labels equal to the
torch path on >= 99.9% of the pixels), and last a SIGKILL whose shared-memory leftovers the
harness removes.
"""
from __future__ import annotations

import signal
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from node_harness import (
    NodeProcess,
    RosClient,
    diagnostic_values,
    header,
    image_array,
    make_image,
    reliable_qos,
    sample_image,
    stamp_ns_of,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, Image

from sfnet_core.viz import overlay
from sfnet_ros.launch_support import camera_plan
from sfnet_ros.node import segmentation_node
from sfnet_ros.node.outputs import flow_image, frame_in_output

H, W = 64, 128
NET = (48, 64)
NS = "/geo"
IMAGE_TOPIC = "/cam/image_raw"
INFO_TOPIC = "/cam/camera_info"
OUT = f"{NS}/segmentation/"
FX, FY, CX, CY, TX = 100.0, 110.0, 63.5, 31.5, -5.0
# Corner-convention scale and offset of each policy at output_resolution network (module docstring).
CROP_SX = 64 / 85
MAPS = {"stretch": (0.5, 0.75, 0.0, 0.0), "letterbox": (0.5, 0.5, 0.0, 8.0),
        "crop": (CROP_SX, 0.75, -21 * CROP_SX, 0.0)}


def _camera_info(stamp_ns: int, fx: float = FX) -> CameraInfo:
    k = [fx, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    p = [fx, 0.0, CX, TX, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return CameraInfo(header=header(stamp_ns, "cam_optical"), height=H, width=W, distortion_model="plumb_bob",
                      d=[0.1, -0.05, 0.001, 0.002, 0.0], k=k, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=p)


def _expected_kp(policy: str, fx: float = FX) -> tuple[np.ndarray, np.ndarray]:
    """K and P of the 48x64 label image, by hand: pixel centres move as x' = s (x + 1/2) + o - 1/2."""
    sx, sy, ox, oy = MAPS[policy]
    cx, cy = sx * (CX + 0.5) + ox - 0.5, sy * (CY + 0.5) + oy - 0.5
    k = np.array([[sx * fx, 0, cx], [0, sy * FY, cy], [0, 0, 1]])
    p = np.array([[sx * fx, 0, cx, sx * TX], [0, sy * FY, cy, 0], [0, 0, 1, 0]])
    return k, p


@pytest.fixture(scope="module")
def env(ros_domain_module, tmp_path_factory):
    # A .pt run in ONNX Runtime would be exported into this cache, never into the home folder.
    return {**ros_domain_module, "SFNET_ROS_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def node(env, checkpoint, tmp_path_factory):
    plan = camera_plan("", "", IMAGE_TOPIC)  # what the launch file remaps for one camera
    process = NodeProcess(
        env, tmp_path_factory.mktemp("node_logs"),
        parameters={"checkpoint": str(checkpoint), "device": "cpu", "qos_reliability": "reliable",
                    "input_size": list(NET), "resize": "stretch", "output_resolution": "network",
                    "publish_flow": True, "diagnostics_period": 0.5},
        remaps=dict(plan.remappings), namespace=NS)
    with process:
        process.wait_for_log("active:")
        yield process


class Rig:
    """The test's side of the node: camera publishers and output collectors."""

    def __init__(self, ros: RosClient) -> None:
        self.ros = ros
        self.labels = ros.collect(Image, OUT + "labels")
        self.color = ros.collect(Image, OUT + "color")
        self.confidence = ros.collect(Image, OUT + "confidence")
        self.info_out = ros.collect(CameraInfo, OUT + "camera_info")
        self.timing = ros.collect(DiagnosticArray, OUT + "timing")
        self.flow = ros.collect(Image, OUT + "flow")
        self.diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        self.active_since = 0  # index into diagnostics.messages: set by each reconfiguration
        self.image = ros.publisher(Image, IMAGE_TOPIC)
        self.info = ros.publisher(CameraInfo, INFO_TOPIC)
        ros.wait_for_subscribers(self.image)
        ros.wait_for_subscribers(self.info)
        self.stamp = 1_000_000_000

    def next_stamp(self) -> int:
        self.stamp += 1_000_000
        return self.stamp

    def send(self, rgb: np.ndarray, stamp_ns: int | None = None, frame_id: str = "cam_optical") -> int:
        stamp = self.next_stamp() if stamp_ns is None else stamp_ns
        self.image.publish(make_image(rgb, "rgb8", stamp, frame_id))
        return stamp

    def served(self, rgb: np.ndarray, also=(), with_info: bool = False, timeout: float = 120) -> Image:
        """Send ``rgb`` (fresh stamps; with a camera_info of the same stamp first if ``with_info``)
        until its labels and a message of the same stamp on each ``also`` collector come back:
        after a (re)activation the node serves an output only once it has matched our
        subscription. Returns the labels."""
        def attempt() -> Image | None:
            stamp = self.next_stamp()
            if with_info:
                self.info.publish(_camera_info(stamp))
            self.send(rgb, stamp)
            try:
                msg = self.labels.wait_for_stamp(stamp, timeout=15)
                wait_until(lambda: all(c.has_stamp(stamp) for c in also), 5, "the other outputs")
            except TimeoutError:
                return None
            return msg
        return wait_until(attempt, timeout, "the node to serve every output asked for")

    def camera_values(self, predicate=lambda v: True) -> dict[str, str]:
        def latest() -> dict[str, str] | None:
            for msg in reversed(self.diagnostics.messages):
                values = diagnostic_values(msg, IMAGE_TOPIC)
                if values is not None and predicate(values):
                    return values
            return None
        return wait_until(latest, 60, "a matching /diagnostics status of the camera")


@pytest.fixture(scope="module")
def rig(env, node):
    with RosClient() as ros:
        yield Rig(ros)


def _reconfigure(rig: Rig, node: NodeProcess, **parameters) -> None:
    """deactivate -> cleanup -> set ``parameters`` -> configure -> activate, over the services."""
    ros = rig.ros
    assert ros.change_state(node.fqn, Transition.TRANSITION_DEACTIVATE), node.log()[-3000:]
    assert ros.change_state(node.fqn, Transition.TRANSITION_CLEANUP), node.log()[-3000:]
    results = ros.set_parameters(node.fqn, parameters)
    assert all(r.successful for r in results), [r.reason for r in results]
    assert ros.change_state(node.fqn, Transition.TRANSITION_CONFIGURE), node.log()[-3000:]
    assert ros.change_state(node.fqn, Transition.TRANSITION_ACTIVATE), node.log()[-3000:]
    rig.active_since = len(rig.diagnostics.messages)  # what came before describes the old configuration


def _reference(checkpoint, resize: str, output: str):
    from sfnet_core.inference import Segmenter  # lazy: torch, for this test only

    return Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", input_size=NET, resize=resize,
                                     output=output, warmup=False, backend="torch")


def _assert_info(msg: CameraInfo, policy: str, stamp: int, fx: float = FX) -> None:
    k, p = _expected_kp(policy, fx)
    assert stamp_ns_of(msg) == stamp and msg.header.frame_id == "cam_optical"
    assert (msg.height, msg.width) == NET
    np.testing.assert_allclose(np.asarray(msg.k).reshape(3, 3), k, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(msg.p).reshape(3, 4), p, rtol=0, atol=1e-9)
    assert (msg.binning_x, msg.binning_y) == (0, 0)
    assert (msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height) == (0, 0, 0, 0)
    assert msg.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(np.asarray(msg.d), [0.1, -0.05, 0.001, 0.002, 0.0])
    np.testing.assert_array_equal(np.asarray(msg.r), np.eye(3).reshape(-1))


# -- camera_info -----------------------------------------------------------------------------------


@pytest.mark.ros_api
def test_outputs_flow_without_camera_info(rig, node):
    # No camera_info was ever sent: the labels come, no segmentation/camera_info, counted.
    msg = rig.served(sample_image(H, W, 1))
    assert (msg.height, msg.width) == NET
    assert rig.info_out.messages == []
    values = rig.camera_values(lambda v: int(v["frames_without_camera_info_total"]) >= 1)
    assert values["camera_info_published_total"] == "0"


@pytest.mark.ros_api
def test_camera_info_is_matched_by_stamp_and_scaled(rig, node, checkpoint):
    """Stretch to the network size: K and P scaled by (1/2, 3/4), the frame's header; the info
    with the frame's stamp is used although a newer one has arrived; a frame without one gets the
    newest."""
    rgb = sample_image(H, W, 2)
    rig.served(rgb, also=[rig.info_out], with_info=True)  # the node sees our camera_info subscription
    s1, s2 = rig.next_stamp(), rig.next_stamp()
    received = int(rig.camera_values()["camera_info_received_total"])
    rig.info.publish(_camera_info(s1, fx=FX))
    rig.camera_values(lambda v: int(v["camera_info_received_total"]) >= received + 1)
    rig.info.publish(_camera_info(s2, fx=2 * FX))  # newer, another focal length
    rig.camera_values(lambda v: int(v["camera_info_received_total"]) >= received + 2)

    rig.send(rgb, s1)
    labels = rig.labels.wait_for_stamp(s1)
    info = rig.info_out.wait_for_stamp(s1)
    _assert_info(info, "stretch", s1, fx=FX)  # its own stamp's K, not the newest
    np.testing.assert_array_equal(image_array(labels), _reference(checkpoint, "stretch", "network").segment(rgb).labels)

    s3 = rig.send(rgb)  # no camera_info with this stamp: the newest (s2) is used
    _assert_info(rig.info_out.wait_for_stamp(s3), "stretch", s3, fx=2 * FX)
    values = rig.camera_values(lambda v: int(v["camera_info_published_total"]) >= 3)
    assert int(values["camera_info_stamp_mismatch_total"]) >= 1


# -- timing and flow (torch backend, stretch, network output) -----------------------------------


def test_timing_per_frame(rig, node):
    rgb = sample_image(H, W, 3)
    rig.served(rgb, also=[rig.timing])
    stamp = rig.send(rgb, frame_id="timing_frame")
    rig.labels.wait_for_stamp(stamp)
    msg = rig.timing.wait_for_stamp(stamp)
    assert msg.header.frame_id == "timing_frame"
    (status,) = msg.status
    assert status.name == f"{NS}/sfnet_node: {IMAGE_TOPIC}"
    values = {kv.key: kv.value for kv in status.values}
    times = [Decimal(values[k]) for k in ("receive_time", "inference_start_time", "inference_end_time",
                                           "publish_time")]
    assert times == sorted(times), values
    for key in ("queue_ms", "decode_ms", "wait_for_batch_ms", "inference_ms", "publish_ms"):
        assert float(values[key]) >= 0, (key, values)
    parts = sum(float(values[k]) for k in ("queue_ms", "decode_ms", "wait_for_batch_ms", "inference_ms",
                                            "publish_ms"))
    assert abs(parts - float(values["receive_to_publish_ms"])) < 0.01, values
    publish_ns = int(times[3] * 1_000_000_000)
    assert abs(float(values["stamp_to_publish_ms"]) - (publish_ns - stamp) / 1e6) < 0.001, values
    assert values["batch_size"] == "1"

    # Runtime switch: off for one frame (no timing for it), on again for the next.
    rig.ros.set_parameters(node.fqn, {"publish_timing": False})
    try:
        quiet = rig.send(rgb)
        rig.labels.wait_for_stamp(quiet)
    finally:
        rig.ros.set_parameters(node.fqn, {"publish_timing": True})
    loud = rig.send(rgb)
    rig.timing.wait_for_stamp(loud)  # in order on a reliable topic: had `quiet` been sent, it came first
    assert not rig.timing.has_stamp(quiet)


def test_flow_image(rig, node, checkpoint):
    rgb = sample_image(H, W, 4)
    rig.served(rgb, also=[rig.flow])
    stamp = rig.send(rgb, frame_id="flow_frame")
    msg = rig.flow.wait_for_stamp(stamp)
    assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == ("rgb8", *NET, "flow_frame")
    reference = _reference(checkpoint, "stretch", "network").segment(rgb, return_flows="finest")
    expected = flow_image(reference.flows[-1], reference.geometry)
    got = image_array(msg)
    # Colour = direction and magnitude relative to the frame's largest vector: the last bit of a
    # float may differ between the two processes' thread counts, not more than a level.
    assert float((np.abs(got.astype(int) - expected.astype(int)) <= 1).mean()) >= 0.99
    assert len(np.unique(got.reshape(-1, 3), axis=0)) > 10, "a flow field, not a flat colour"


def test_label_info_when_vision_msgs_is_installed(rig, node):
    if segmentation_node.LabelInfo is None:
        # Not installable here: the node must not pretend (test_node_messages.py checks the message
        # it would publish, built from stand-in types).
        assert rig.ros.node.count_publishers(OUT + "label_info") == 0
        return
    late = rig.ros.collect(segmentation_node.LabelInfo, OUT + "label_info", reliable_qos(1, transient_local=True))
    msg = late.wait_for()
    classes = {c.class_id: c.class_name for c in msg.class_map}
    assert classes[255] == "unlabeled" and len(classes) == 20


# -- resize policies and output resolutions, each against the Segmenter ---------------------------


@pytest.mark.parametrize("policy", ["letterbox", "crop"])
def test_policy_at_network_resolution(rig, node, checkpoint, policy):
    _reconfigure(rig, node, resize=policy, output_resolution="network")
    rgb = sample_image(H, W, 5)
    rig.served(rgb, also=[rig.info_out, rig.color, rig.confidence], with_info=True)
    stamp = rig.next_stamp()
    rig.info.publish(_camera_info(stamp))
    rig.ros.set_parameters(node.fqn, {"color_overlay": True})
    try:
        rig.send(rgb, stamp)
        labels = image_array(rig.labels.wait_for_stamp(stamp))
        reference = _reference(checkpoint, policy, "network")
        expected = reference.segment(rgb, return_confidence=True)
        np.testing.assert_array_equal(labels, expected.labels)
        if policy == "letterbox":  # the bands are unlabeled, the content is not
            assert (labels[:8] == 255).all() and (labels[40:] == 255).all()
            assert (labels[8:40] != 255).all()
        else:
            assert (labels != 255).all()
        _assert_info(rig.info_out.wait_for_stamp(stamp), policy, stamp)
        # Colour (blended over the frame as the network saw it) and confidence at the network size.
        color = image_array(rig.color.wait_for_stamp(stamp))
        under = frame_in_output(rgb, expected.geometry)
        np.testing.assert_array_equal(color, overlay(under, reference.classes.palette()[labels], 0.5))
        confidence = image_array(rig.confidence.wait_for_stamp(stamp))
        assert confidence.shape == NET
        if policy == "letterbox":
            assert (color[:8] == 0).all() and (confidence[:8] == 0).all() and (confidence[8:40] > 0).all()
    finally:
        rig.ros.set_parameters(node.fqn, {"color_overlay": False})


@pytest.mark.parametrize("policy", ["letterbox", "crop"])
def test_policy_at_input_resolution(rig, node, checkpoint, policy):
    _reconfigure(rig, node, resize=policy, output_resolution="input")
    rgb = sample_image(H, W, 6)
    rig.served(rgb, also=[rig.info_out, rig.flow], with_info=True)
    stamp = rig.next_stamp()
    sent_info = _camera_info(stamp)
    rig.info.publish(sent_info)
    rig.send(rgb, stamp)
    labels = image_array(rig.labels.wait_for_stamp(stamp))
    assert labels.shape == (H, W)
    np.testing.assert_array_equal(labels, _reference(checkpoint, policy, "input").segment(rgb).labels)
    if policy == "crop":  # the frame's pixels outside the 85-column window were not seen
        assert (labels[:, :21] == 255).all() and (labels[:, 106:] == 255).all()
        assert (labels[:, 21:106] != 255).all()
    else:
        assert (labels != 255).all()
    # The labels are in the frame's own pixels: the camera's camera_info, with the frame's header.
    info = rig.info_out.wait_for_stamp(stamp)
    assert (info.height, info.width, info.header.frame_id) == (H, W, "cam_optical")
    np.testing.assert_array_equal(np.asarray(info.k), np.asarray(sent_info.k))
    np.testing.assert_array_equal(np.asarray(info.p), np.asarray(sent_info.p))
    flow = image_array(rig.flow.wait_for_stamp(stamp))
    assert flow.shape == (H, W, 3)
    if policy == "crop":
        assert (flow[:, :21] == 0).all() and (flow[:, 106:] == 0).all()


# -- backends --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory):
    """The checkpoint exported as a self-describing .onnx with a fixed 64x64 input (= 48x64 padded)."""
    from sfnet_core.checkpoint import load_checkpoint  # lazy: torch, for the ONNX tests only
    from sfnet_core.onnx.export import export_onnx  # lazy: onnx (as above)

    return export_onnx(load_checkpoint(checkpoint), tmp_path_factory.mktemp("onnx") / "model.onnx",
                       height=64, width=64)


def test_onnx_checkpoint_runs_in_onnxruntime(rig, node, checkpoint, onnx_model):
    ros = rig.ros
    assert ros.change_state(node.fqn, Transition.TRANSITION_DEACTIVATE)
    assert ros.change_state(node.fqn, Transition.TRANSITION_CLEANUP)
    # The flow needs the torch backend: configure says so and the node stays unconfigured ...
    results = ros.set_parameters(node.fqn, {"checkpoint": str(onnx_model), "backend": "onnxruntime",
                                            "resize": "stretch", "output_resolution": "input"})
    assert all(r.successful for r in results), [r.reason for r in results]
    assert not ros.change_state(node.fqn, Transition.TRANSITION_CONFIGURE)
    node.wait_for_log("configure failed: parameter 'publish_flow': needs the torch backend")
    # ... without it the exported model serves.
    configured = node.log().count("configured in")
    _reconfigure_from_unconfigured(rig, node, publish_flow=False)
    log = node.wait_for_log("configured in", count=configured + 1)
    last = [line for line in log.splitlines() if "configured in" in line][-1]
    assert f"from {onnx_model}" in last and "backend onnxruntime fp32 (CPUExecutionProvider)" in last, last
    rgb = sample_image(H, W, 7)
    labels = image_array(rig.served(rgb))
    expected = _reference(checkpoint, "stretch", "input").segment(rgb).labels
    assert labels.shape == (H, W)
    assert float((labels == expected).mean()) >= 0.999
    assert _node_values(rig, node, "onnxruntime fp32")["device"] == "cpu fp32"
    # With input_size empty the fixed-size model runs at its own size, and the log says so.
    assert ros.change_state(node.fqn, Transition.TRANSITION_DEACTIVATE)
    assert ros.change_state(node.fqn, Transition.TRANSITION_CLEANUP)
    configured = node.log().count("configured in")
    _reconfigure_from_unconfigured(rig, node, input_size=[])
    last = [line for line in node.wait_for_log("configured in", count=configured + 1).splitlines()
            if "configured in" in line][-1]
    assert "input size [64, 64] (the model's fixed size; input_size is empty)" in last, last
    assert ros.change_state(node.fqn, Transition.TRANSITION_DEACTIVATE)
    assert ros.change_state(node.fqn, Transition.TRANSITION_CLEANUP)
    _reconfigure_from_unconfigured(rig, node, input_size=list(NET))


def test_pt_checkpoint_with_the_onnxruntime_backend(rig, node, checkpoint, env):
    """backend onnxruntime with a .pt: exported once into the export cache ($SFNET_ROS_CACHE), then
    run in ONNX Runtime; the same labels as the torch path."""
    _reconfigure(rig, node, checkpoint=str(checkpoint), backend="onnxruntime")
    rgb = sample_image(H, W, 8)
    labels = image_array(rig.served(rgb))
    expected = _reference(checkpoint, "stretch", "input").segment(rgb).labels
    assert float((labels == expected).mean()) >= 0.999
    assert _node_values(rig, node, "onnxruntime fp32")["checkpoint"] == str(checkpoint)
    assert list(Path(env["SFNET_ROS_CACHE"]).rglob("*.onnx")), "the export went into the cache given"


def _reconfigure_from_unconfigured(rig: Rig, node: NodeProcess, **parameters) -> None:
    ros = rig.ros
    results = ros.set_parameters(node.fqn, parameters)
    assert all(r.successful for r in results), [r.reason for r in results]
    assert ros.change_state(node.fqn, Transition.TRANSITION_CONFIGURE), node.log()[-3000:]
    assert ros.change_state(node.fqn, Transition.TRANSITION_ACTIVATE), node.log()[-3000:]
    rig.active_since = len(rig.diagnostics.messages)  # what came before describes the old configuration


def _node_values(rig: Rig, node: NodeProcess, backend: str) -> dict[str, str]:
    """The node's own /diagnostics status once it reports running ``backend`` (active), from the
    statuses received since the last reconfiguration activated (an older one may describe the
    previous model with the same backend)."""
    def find() -> dict[str, str] | None:
        for msg in reversed(rig.diagnostics.messages[rig.active_since:]):
            for status in msg.status:
                if status.name == node.fqn:
                    values = {kv.key: kv.value for kv in status.values}
                    if values.get("state") == "active" and values.get("backend", "").startswith(backend):
                        return values
        return None
    return wait_until(find, 60, f"the node's status with backend {backend}")


# -- leaving: SIGKILL leaves shared memory behind, the harness removes it -------------------------


def test_sigkill_leftovers_are_cleaned_by_the_harness(rig, node):
    held = [f for f in node.shm_files() if "_port" not in f.name]  # ports may be shared with us
    assert held, "the node holds Fast DDS segments while it runs"
    node.send_signal(signal.SIGKILL)
    assert node.wait(30) == -signal.SIGKILL
    assert all(f.exists() for f in held), "a killed process cannot remove its segments"
    node.stop()
    assert not [f for f in held if f.exists()]
