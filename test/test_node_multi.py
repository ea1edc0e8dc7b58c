"""sfnet_node with two cameras and compressed transport: one model serves both, outputs land under
each camera's namespace, PNG input (lossless) gives exactly the Segmenter's labels, a corrupt
JPEG is dropped and counted, and SIGTERM stops the process cleanly."""
from __future__ import annotations

import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from node_harness import (
    NodeProcess,
    RosClient,
    diagnostic_values,
    header,
    image_array,
    sample_image,
    wait_until,
)
from sensor_msgs.msg import CompressedImage, Image

from sfnet_ros.conversions import rgb_to_compressed

H, W = 64, 128
NS = "/rig"
CAMERAS = ["front", "left"]


@pytest.fixture(scope="module")
def env(ros_domain_module):
    return ros_domain_module


@pytest.fixture(scope="module")
def node(env, checkpoint, tmp_path_factory):
    process = NodeProcess(
        env, tmp_path_factory.mktemp("node_logs"),
        parameters={"checkpoint": str(checkpoint), "cameras": CAMERAS, "transport": "compressed",
                    "qos_reliability": "reliable", "diagnostics_period": 0.5},
        namespace=NS)
    with process:
        process.wait_for_log("active:")
        yield process


@pytest.fixture(scope="module")
def rig(env, node):
    with RosClient() as ros:
        inputs = {c: ros.publisher(CompressedImage, f"{NS}/{c}/image/compressed") for c in CAMERAS}
        labels = {c: ros.collect(Image, f"{NS}/{c}/segmentation/labels") for c in CAMERAS}
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        for camera in CAMERAS:
            ros.wait_for_subscribers(inputs[camera])
            ros.wait_for_publishers(f"{NS}/{camera}/segmentation/labels")
        yield ros, inputs, labels, diagnostics


def _png(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> CompressedImage:
    return rgb_to_compressed(rgb, "png", header=header(stamp_ns, frame_id))


def _wait_served(rig, camera: str, stamp_ns: int) -> Image:
    """Publish PNG frames (stamps from ``stamp_ns`` on) until the node, which may not have
    discovered our labels subscription yet, answers one; returns that labels message."""
    ros, inputs, labels, _ = rig
    stamps = iter(range(stamp_ns, stamp_ns + 1000))

    def attempt() -> Image | None:
        stamp = next(stamps)
        inputs[camera].publish(_png(sample_image(H, W, 0), stamp, camera))
        try:
            return labels[camera].wait_for_stamp(stamp, timeout=20)
        except TimeoutError:
            return None
    return wait_until(attempt, 120, f"the node to serve {camera}")


@pytest.mark.ros_api
def test_two_cameras_png_input(rig, segmenter):
    ros, inputs, labels, _ = rig
    for camera in CAMERAS:
        _wait_served(rig, camera, stamp_ns=10_000 if camera == "front" else 20_000)
    images = {c: sample_image(H, W, seed=i + 1) for i, c in enumerate(CAMERAS)}
    # Both cameras' frames go out back to back, so the node usually batches them.
    for i, camera in enumerate(CAMERAS):
        inputs[camera].publish(_png(images[camera], 5_000_000_000 + i, f"{camera}_optical"))
    for i, camera in enumerate(CAMERAS):
        msg = labels[camera].wait_for_stamp(5_000_000_000 + i)
        assert msg.header.frame_id == f"{camera}_optical"
        assert (msg.height, msg.width, msg.encoding) == (H, W, "mono8")
        np.testing.assert_array_equal(image_array(msg), segmenter.segment(images[camera]).labels)


def test_corrupt_jpeg_dropped_then_next_frame_processed(rig, node, segmenter):
    ros, inputs, labels, diagnostics = rig
    jpeg = rgb_to_compressed(sample_image(H, W, 7), "jpeg", header=header(6_000_000_000, "front"))
    truncated = CompressedImage(header=jpeg.header, format=jpeg.format, data=bytes(jpeg.data)[: len(jpeg.data) // 2])
    inputs["front"].publish(truncated)

    def bad_count() -> int | None:
        for msg in reversed(diagnostics.messages):
            values = diagnostic_values(msg, f"{NS}/front/image/compressed")
            if values is not None and int(values["dropped_bad_input_total"]) >= 1:
                return int(values["dropped_bad_input_total"])
        return None
    assert wait_until(bad_count, 60, "the corrupt JPEG to be counted") == 1
    rgb = sample_image(H, W, 8)
    inputs["front"].publish(_png(rgb, 6_000_000_001, "front"))
    msg = labels["front"].wait_for_stamp(6_000_000_001)
    np.testing.assert_array_equal(image_array(msg), segmenter.segment(rgb).labels)
    assert not labels["front"].has_stamp(6_000_000_000)
    assert "corrupt compressed image" in node.log()


@pytest.mark.ros_api
def test_sigterm_stops_cleanly(node):
    code = node.stop(signal.SIGTERM, timeout=30)
    assert code == 0, node.log()
    assert not node.running()
    assert "stop requested (SIGINT/SIGTERM): shutting down" in node.log()
    assert "Traceback" not in node.log()
