"""sfnet_node end to end: one node process (started as the launch file starts it) serves this
module; the test process publishes camera frames and checks every output over real Fast DDS.

The node runs in namespace /veh with its `image` input remapped to /camera/image_raw, so every
test also checks namespacing and remapping. Reliable QoS (parameter override) keeps delivery
deterministic; each frame carries its own stamp and tests wait for the output with that stamp.
"""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from node_harness import (
    NodeProcess,
    RosClient,
    diagnostic_values,
    image_array,
    make_image,
    reliable_qos,
    sample_image,
    wait_until,
)
from sensor_msgs.msg import Image
from std_msgs.msg import String

from sfnet_core.viz import overlay
from sfnet_ros.conversions import image_to_rgb
from sfnet_ros.node.params import PARAMETERS
from sfnet_ros.node.worker import InferenceWorker, LatestFrameMailbox

H, W = 64, 128
NS = "/veh"
INPUT = "/camera/image_raw"
MASK_IMAGE_SEED = 1  # the frame test_outputs_match_segmenter sends


@pytest.fixture(scope="module")
def env(ros_domain_module):
    return ros_domain_module


@pytest.fixture(scope="module")
def mask_classes(segmenter) -> list[str]:
    """The two classes the random model predicts most on the test frame (so their masks are not
    empty), plus "traffic light" for a name with a space."""
    labels = segmenter.segment(sample_image(H, W, seed=MASK_IMAGE_SEED)).labels
    ids, counts = np.unique(labels, return_counts=True)
    frequent = [segmenter.classes.names[i] for i in ids[np.argsort(counts)[::-1][:2]]]
    return list(dict.fromkeys(frequent + ["traffic light"]))


@pytest.fixture(scope="module")
def node(env, checkpoint, mask_classes, tmp_path_factory):
    process = NodeProcess(
        env, tmp_path_factory.mktemp("node_logs"),
        parameters={"checkpoint": str(checkpoint), "device": "cpu", "qos_reliability": "reliable",
                    "mask_classes": mask_classes, "diagnostics_period": 0.5},
        remaps={"image": INPUT}, namespace=NS)
    with process:
        process.wait_for_log("active:")
        yield process


@pytest.fixture(scope="module")
def ros(env, node):
    with RosClient() as client:
        yield client


class Outputs:
    """Collectors of every output topic plus the input publisher, discovered once."""

    def __init__(self, ros: RosClient, mask_classes: list[str]) -> None:
        out = f"{NS}/segmentation/"
        self.labels = ros.collect(Image, out + "labels")
        self.color = ros.collect(Image, out + "color")
        self.confidence = ros.collect(Image, out + "confidence")
        self.masks = {name: ros.collect(Image, f"{out}mask/{name.replace(' ', '_')}") for name in mask_classes}
        self.diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        self.input = ros.publisher(Image, INPUT)
        ros.wait_for_subscribers(self.input)
        # The node checks subscriber counts before building each output: wait until it sees ours.
        for topic in [out + "labels", out + "color", out + "confidence"] + [
                f"{out}mask/{n.replace(' ', '_')}" for n in mask_classes]:
            ros.wait_for_publishers(topic)
        self.next_stamp = 1_000_000_000

    def send(self, msg: Image) -> int:
        """Publish ``msg`` with a fresh stamp; returns the stamp (ns)."""
        self.next_stamp += 1_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self.next_stamp, 1_000_000_000)
        self.input.publish(msg)
        return self.next_stamp


@pytest.fixture(scope="module")
def io(ros, mask_classes):
    outputs = Outputs(ros, mask_classes)
    # Our subscriptions are matched on our side; the node may still be discovering them. One
    # frame whose every output arrives proves the node sees all of our subscriptions.
    wait_until(lambda: _all_outputs_arrive(outputs), 120, "the node to serve every output")
    return outputs


def _all_outputs_arrive(outputs: Outputs) -> bool:
    stamp = outputs.send(make_image(sample_image(H, W, 0), "rgb8", 0))
    collectors = [outputs.labels, outputs.color, outputs.confidence, *outputs.masks.values()]
    try:
        outputs.labels.wait_for_stamp(stamp, timeout=30)
        wait_until(lambda: all(c.has_stamp(stamp) for c in collectors), 5, "all outputs")
    except TimeoutError:
        return False
    return True


@pytest.mark.ros_api
def test_outputs_match_segmenter(io, segmenter):
    rgb = sample_image(H, W, seed=MASK_IMAGE_SEED)
    stamp = io.send(make_image(rgb, "rgb8", 0, frame_id="front_camera_optical"))
    expected = segmenter.segment(rgb, return_confidence=True)

    labels_msg = io.labels.wait_for_stamp(stamp)
    assert labels_msg.header.frame_id == "front_camera_optical"
    assert (labels_msg.height, labels_msg.width, labels_msg.encoding) == (H, W, "mono8")
    labels = image_array(labels_msg)
    np.testing.assert_array_equal(labels, expected.labels)
    assert len(np.unique(labels)) > 2, "the random model should predict several classes here"

    color_msg = io.color.wait_for_stamp(stamp)
    assert (color_msg.header.frame_id, color_msg.encoding, color_msg.height, color_msg.width) == (
        "front_camera_optical", "rgb8", H, W)
    np.testing.assert_array_equal(image_array(color_msg), segmenter.classes.palette()[labels])

    conf_msg = io.confidence.wait_for_stamp(stamp)
    assert (conf_msg.encoding, conf_msg.height, conf_msg.width) == ("mono8", H, W)
    np.testing.assert_array_equal(image_array(conf_msg), expected.confidence)

    for name, collector in io.masks.items():
        mask_msg = collector.wait_for_stamp(stamp)
        assert mask_msg.header.frame_id == "front_camera_optical"
        assert mask_msg.encoding == "mono8"
        class_id = segmenter.classes.index(name)
        np.testing.assert_array_equal(image_array(mask_msg), np.where(labels == class_id, 255, 0))
        if name != "traffic light":
            assert (image_array(mask_msg) == 255).any(), f"{name}: chosen because it is predicted"


def _encode(rgb: np.ndarray, encoding: str) -> Image:
    import cv2

    if encoding == "bgr8":
        return make_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", 0)
    if encoding == "rgba8":
        return make_image(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "rgba8", 0)
    if encoding == "bgra8":
        return make_image(np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]), "bgra8", 0)
    if encoding == "mono8":
        return make_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8", 0)
    if encoding in ("yuv422", "yuv422_yuy2"):
        # Any bytes are a valid 4:2:2 image; two channels of the test image give it structure.
        packed = np.ascontiguousarray(rgb[..., :2])
        msg = Image(height=H, width=W, encoding=encoding, step=W * 2)
        msg.data = packed.tobytes()
        return msg
    if encoding == "bayer_rggb8":
        mosaic = np.empty((H, W), np.uint8)
        mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
        mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
        mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
        mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
        return make_image(mosaic, "bayer_rggb8", 0)
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8", "yuv422", "yuv422_yuy2", "bayer_rggb8"])
def test_input_encodings(io, segmenter, encoding):
    msg = _encode(sample_image(H, W, seed=2), encoding)
    stamp = io.send(msg)
    # What the network must have seen: the message converted to RGB (bgr8 goes to the network
    # as BGR without conversion, which must give the very same labels).
    expected = segmenter.segment(image_to_rgb(msg)).labels
    labels_msg = io.labels.wait_for_stamp(stamp)
    assert (labels_msg.height, labels_msg.width) == (H, W)
    np.testing.assert_array_equal(image_array(labels_msg), expected)


@pytest.mark.ros_api
def test_classes_topic_reaches_late_joiner(io, ros, segmenter):
    late = ros.collect(String, f"{NS}/segmentation/classes", reliable_qos(depth=1, transient_local=True))
    payload = json.loads(late.wait_for().data)
    assert payload["ignore_index"] == 255
    assert [c["name"] for c in payload["classes"]] == list(segmenter.classes.names)
    assert [c["id"] for c in payload["classes"]] == list(range(19))
    assert [tuple(c["color"]) for c in payload["classes"]] == list(segmenter.classes.colors)
    assert payload["mask_topics"]["traffic light"] == "segmentation/mask/traffic_light"


def _bad_images() -> dict[str, Image]:
    good = make_image(sample_image(H, W, 3), "rgb8", 0)
    unknown = make_image(sample_image(H, W, 3), "rgb8", 0)
    unknown.encoding = "xyz42"
    short = make_image(sample_image(H, W, 3), "rgb8", 0)
    short.data = bytes(good.data)[: H * W * 3 - 10]
    small_step = make_image(sample_image(H, W, 3), "rgb8", 0)
    small_step.step = W * 3 - 3
    small_step.data = bytes(small_step.step * H)
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    return {"unknown_encoding": unknown, "data_length": short, "small_step": small_step, "zero_size": empty}


def _camera_values(io: Outputs, predicate) -> dict[str, str]:
    def latest() -> dict[str, str] | None:
        for msg in reversed(io.diagnostics.messages):
            values = diagnostic_values(msg, INPUT)
            if values is not None and predicate(values):
                return values
        return None
    return wait_until(latest, 60, "a matching /diagnostics status")


def test_bad_inputs_are_dropped_counted_and_followed_by_good_frames(io, node, segmenter):
    start = int(_camera_values(io, lambda v: True)["dropped_bad_input_total"])
    for count, (kind, bad) in enumerate(_bad_images().items(), start=1):
        bad_stamp = io.send(bad)
        # The drop is counted before the next frame goes out, so the good frame cannot simply
        # replace the bad one in the node's one-frame mailbox.
        values = _camera_values(io, lambda v, count=count: int(v["dropped_bad_input_total"]) >= start + count)
        assert int(values["dropped_bad_input_total"]) == start + count, kind
        rgb = sample_image(H, W, seed=10 + count)
        good_stamp = io.send(make_image(rgb, "rgb8", 0))
        labels = image_array(io.labels.wait_for_stamp(good_stamp))
        np.testing.assert_array_equal(labels, segmenter.segment(rgb).labels)
        assert not io.labels.has_stamp(bad_stamp), kind
    log = node.log()
    assert "dropping a frame from /camera/image_raw: unsupported image encoding 'xyz42'" in log
    assert "Traceback" not in log
    assert node.running()


@pytest.mark.ros_api
def test_diagnostics_report_rates_latency_and_device(io):
    # A frame's arrival and its publication can fall into two windows; with a frame every poll,
    # some window holds both.
    def both_rates() -> dict[str, str] | None:
        io.send(make_image(sample_image(H, W, 4), "rgb8", 0))
        for msg in reversed(io.diagnostics.messages):
            values = diagnostic_values(msg, INPUT)
            if values is not None and float(values["input_rate_hz"]) > 0 and float(values["output_rate_hz"]) > 0:
                return values
        return None
    values = wait_until(both_rates, 60, "a window with input and output rates", poll=0.2)
    assert int(values["frames_published_total"]) > 0
    assert float(values["latency_receive_to_publish_ms_max"]) >= float(values["latency_receive_to_publish_ms_mean"]) > 0
    node_status = next(s for s in io.diagnostics.messages[-1].status if s.name == f"{NS}/sfnet_node")
    node_values = {kv.key: kv.value for kv in node_status.values}
    assert node_values["state"] == "active"
    assert node_values["device"] == "cpu fp32"
    # Memory of the node process (/proc/self/status VmRSS, VmHWM), and its one inference thread.
    assert float(node_values["peak_rss_mb"]) >= float(node_values["rss_mb"]) > 100
    assert node_values["inference_threads"] == "1"
    assert node_values["results_discarded_total"] == "0"


def test_declared_parameters_have_descriptions(node, ros):
    descriptors = ros.describe_parameters(node.fqn, [p.name for p in PARAMETERS])
    for spec_, descriptor in zip(PARAMETERS, descriptors):
        assert descriptor.name == spec_.name
        assert descriptor.description == spec_.description
        assert descriptor.read_only == spec_.read_only


@pytest.mark.ros_api
def test_parameters_at_runtime(io, node, ros, segmenter):
    # Configure-time parameters are refused while active ...
    (result,) = ros.set_parameters(node.fqn, {"checkpoint": "/elsewhere.pt"})
    assert not result.successful and "cleanup first" in result.reason
    # ... runtime ones apply to the next frame.
    (result,) = ros.set_parameters(node.fqn, {"color_overlay": True})
    assert result.successful
    try:
        rgb = sample_image(H, W, seed=5)
        stamp = io.send(make_image(rgb, "rgb8", 0))
        labels = image_array(io.labels.wait_for_stamp(stamp))
        expected = overlay(rgb, segmenter.classes.palette()[labels], 0.5)
        np.testing.assert_array_equal(image_array(io.color.wait_for_stamp(stamp)), expected)
    finally:
        ros.set_parameters(node.fqn, {"color_overlay": False})


@pytest.mark.ros_api
def test_sigint_stops_cleanly(node, io):
    # Runs last in this module: the node is busy (a frame in flight) when the signal arrives.
    io.send(make_image(sample_image(H, W, 6), "rgb8", 0))
    code = node.stop(signal.SIGINT, timeout=30)
    assert code == 0, node.log()
    assert not node.running()
    assert "stop requested (SIGINT/SIGTERM): shutting down" in node.log()
    assert "Traceback" not in node.log()


# -- the latest-frame mailbox on its own (no ROS) ---------------------------------------------------


def test_mailbox_keeps_only_the_newest_frame_per_camera():
    mailbox = LatestFrameMailbox(["front", "left"])
    assert mailbox.take_all(timeout=0) == []
    assert mailbox.put("front", "f1") is None
    replaced = mailbox.put("front", "f2")
    assert replaced is not None and replaced.msg == "f1"  # the caller counts it as stale
    assert mailbox.put("left", "l1") is None
    frames = mailbox.take_all(timeout=0)
    assert [(f.camera, f.msg) for f in frames] == [("front", "f2"), ("left", "l1")]
    assert mailbox.take_all(timeout=0) == []
    mailbox.put("left", "l2")
    assert [f.msg for f in mailbox.close()] == ["l2"]
    assert mailbox.take_all() is None  # closed: the worker's signal to exit, without waiting


def test_worker_survives_a_failing_batch_and_stops():
    import threading

    mailbox = LatestFrameMailbox(["cam"])
    processed, errors = [], []
    done = threading.Event()

    def process(frames):
        if frames[0].msg == "bad":
            raise RuntimeError("boom")
        processed.append(frames[0].msg)
        done.set()

    worker = InferenceWorker(mailbox, process, errors.append)
    worker.start()
    mailbox.put("cam", "bad")
    wait_until(lambda: errors, 10, "the failing batch")
    mailbox.put("cam", "good")
    assert done.wait(10)
    assert processed == ["good"] and str(errors[0]) == "boom"
    assert worker.stop(timeout=10)
