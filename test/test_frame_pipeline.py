"""The node's per-frame pipeline (sfnet_ros/node/frame_pipeline.py) without DDS: plain publishers
that record what they get, a segmenter that labels each pixel by its row, the real geometry and
message conversions. What the DDS tests (test_node*.py) check end to end, here rule by rule."""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import header, make_image, sample_image, stamp_ns_of
from sensor_msgs.msg import CameraInfo

from sfnet_core.inference import SegmentationResult
from sfnet_core.inference.geometry import plan_geometry
from sfnet_ros.conversions import image_to_numpy
from sfnet_ros.node import diagnostics
from sfnet_ros.node.camera_io import CameraIO, OutputGate
from sfnet_ros.node.frame_pipeline import DrawOptions, FramePipeline
from sfnet_ros.node.model_setup import LoadedModel
from sfnet_ros.node.params import config_from_values
from sfnet_ros.node.worker import Frame

pytestmark = pytest.mark.ros_api  # ROS messages and rclpy: run on every distribution CI tests

HEIGHT, WIDTH = 24, 32
DRAW = DrawOptions(publish_color=True, color_overlay=True, overlay_alpha=0.5, publish_confidence=True,
                   publish_timing=True)


class FakePublisher:
    def __init__(self, listeners: int = 1) -> None:
        self.listeners = listeners
        self.sent: list = []

    def publish(self, msg) -> None:
        self.sent.append(msg)

    def get_subscription_count(self) -> int:
        return self.listeners


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str, **kwargs) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str, **kwargs) -> None:
        self.lines.append(("warning", message))


class RowSegmenter:
    """Labels = row index % 19, confidence 200; records every call."""

    def __init__(self, on_segment=None) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.on_segment = on_segment

    def segment(self, images, bgr=False, return_confidence=False, return_flows=False):
        self.calls.append((len(images), bgr))
        if self.on_segment is not None:
            self.on_segment()
        results = []
        for image in images:
            h, w = image.shape[:2]
            labels = np.repeat((np.arange(h) % 19).astype(np.uint8)[:, None], w, axis=1)
            confidence = np.full((h, w), 200, np.uint8) if return_confidence else None
            results.append(SegmentationResult(labels, confidence, geometry=plan_geometry((h, w), None)))
        return results


def _camera(listeners: int = 1) -> CameraIO:
    io = CameraIO(name="", input_topic="/cam/image", stats=diagnostics.CameraStats(),
                  camera_info_topic="/cam/camera_info")
    io.labels, io.color, io.confidence = FakePublisher(listeners), FakePublisher(listeners), FakePublisher(listeners)
    io.camera_info, io.timing = FakePublisher(listeners), FakePublisher(listeners)
    io.masks = {"road": (0, FakePublisher(listeners))}
    return io


def _rig(tmp_path, io: CameraIO, segmenter: RowSegmenter | None = None, **parameters):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    config = config_from_values({"checkpoint": str(checkpoint), **parameters})
    palette = np.zeros((256, 3), np.uint8)
    palette[:19, 0] = np.arange(19) * 10
    model = LoadedModel(segmenter or RowSegmenter(), config, {"road": 0}, palette, "cpu fp32", "torch eager")
    gate, log = OutputGate(), FakeLog()
    gate.begin()
    gate.open({"": io})
    pipeline = FramePipeline(gate, log, lambda: 5_000_000_000, "/veh/sfnet_node")
    return pipeline, model, gate, log


def _frame(gate: OutputGate, stamp: int = 1, height: int = HEIGHT, width: int = WIDTH, generation: int | None = None):
    msg = make_image(sample_image(height, width), "rgb8", stamp_ns=stamp)
    return Frame("", msg, received_ns=0, generation=gate.generation if generation is None else generation)


def test_a_frame_comes_out_on_every_listened_output(tmp_path):
    io = _camera()
    pipeline, model, gate, _ = _rig(tmp_path, io)
    info = CameraInfo(header=header(1), height=HEIGHT, width=WIDTH, k=[20.0, 0, 16, 0, 20, 12, 0, 0, 1],
                      p=[20.0, 0, 16, 0, 0, 20, 12, 0, 0, 0, 1, 0])
    io.camera_infos.put(info)
    pipeline.process([_frame(gate, stamp=1)], model, DRAW)

    (labels,) = io.labels.sent
    assert stamp_ns_of(labels) == 1 and labels.encoding == "mono8"
    assert np.array_equal(image_to_numpy(labels)[:, 0], np.arange(HEIGHT) % 19)
    (color,) = io.color.sent
    assert color.encoding == "rgb8" and (color.height, color.width) == (HEIGHT, WIDTH)
    (mask,) = io.masks["road"][1].sent
    assert np.array_equal(image_to_numpy(mask)[:, 0] > 0, np.arange(HEIGHT) % 19 == 0)
    (confidence,) = io.confidence.sent
    assert int(image_to_numpy(confidence).max()) == 200
    (camera_info,) = io.camera_info.sent  # same size, no resize: passed on as received, with the frame's header
    assert stamp_ns_of(camera_info) == 1 and list(camera_info.k) == list(info.k)
    (timing,) = io.timing.sent
    assert timing.status[0].name == "/veh/sfnet_node: /cam/image"
    steps = {kv.key: float(kv.value) for kv in timing.status[0].values if kv.key.endswith("_ms")}
    # publish_ms split at the instant the images were rendered and their messages built
    assert abs(steps["render_ms"] + steps["send_ms"] - steps["publish_ms"]) < 0.002 and steps["render_ms"] > 0
    totals = io.stats.totals
    assert (totals.published, io.stats.camera_info_published_total, pipeline.discarded_total) == (1, 1, 0)


def test_outputs_without_listeners_are_not_computed(tmp_path):
    io = _camera(listeners=0)
    segmenter = RowSegmenter()
    pipeline, model, gate, _ = _rig(tmp_path, io, segmenter)
    pipeline.process([_frame(gate)], model, DRAW)
    assert segmenter.calls == [] and io.stats.totals.skipped_no_subscribers == 1
    assert all(not publisher.sent for publisher in io.publishers())


def test_a_too_large_frame_is_refused_and_counted(tmp_path):
    io = _camera()
    segmenter = RowSegmenter()
    pipeline, model, gate, log = _rig(tmp_path, io, segmenter, max_input_pixels=HEIGHT * WIDTH - 1)
    pipeline.process([_frame(gate)], model, DRAW)
    assert segmenter.calls == [] and not io.labels.sent
    assert io.stats.totals.dropped_too_large == 1
    assert any(level == "warning" and "larger than max_input_pixels" in text for level, text in log.lines)


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_frame_of_an_earlier_activation_is_discarded(tmp_path, when):
    """``before``: taken from the mailbox after a deactivate; ``during``: deactivated while the
    frame was in the network. Either way nothing is published and the frame is counted."""
    io = _camera()
    segmenter = RowSegmenter(on_segment=(lambda: gate.close()) if when == "during" else None)
    pipeline, model, gate, log = _rig(tmp_path, io, segmenter)
    frame = _frame(gate)
    if when == "before":
        gate.close()
    pipeline.process([frame], model, DRAW)
    assert all(not publisher.sent for publisher in io.publishers())
    assert pipeline.discarded_total == 1 and io.stats.totals.published == 0
    assert segmenter.calls == ([] if when == "before" else [(1, False)])
    assert any("earlier activation" in text for _, text in log.lines)


def test_bgr_and_rgb_frames_go_through_one_forward_each(tmp_path):
    io_a, io_b = _camera(), _camera()
    segmenter = RowSegmenter()
    pipeline, model, gate, _ = _rig(tmp_path, io_a, segmenter)
    gate.open({"a": io_a, "b": io_b})
    bgr = Frame("b", make_image(sample_image(HEIGHT, WIDTH), "bgr8", stamp_ns=2), 0, gate.generation)
    pipeline.process([Frame("a", _frame(gate).msg, 0, gate.generation), bgr], model, DRAW)
    assert segmenter.calls == [(1, False), (1, True)]
    assert len(io_a.labels.sent) == len(io_b.labels.sent) == 1
