"""The node's side messages on their own (sfnet_ros/node/outputs.py), with real sensor_msgs /
diagnostic_msgs types and the Segmenter's own FrameGeometry; and the harness's shared-memory
clean-up. No ROS graph: the same rules run over DDS in test_node_geometry.py."""
from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass, field, replace
from decimal import Decimal

import numpy as np
import pytest
from node_harness import clean_shm_segments, header, shm_files_locked_by
from sensor_msgs.msg import CameraInfo, RegionOfInterest

from sfnet_core.inference.geometry import plan_geometry
from sfnet_ros.node import outputs, params

pytestmark = pytest.mark.ros_api  # ROS messages and rclpy: run on every distribution CI tests

K = [500.0, 0.0, 300.0, 0.0, 520.0, 140.0, 0.0, 0.0, 1.0]
P = [500.0, 0.0, 300.0, -25.0, 0.0, 520.0, 140.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _info(width: int, height: int, binning: int = 0, roi: tuple[int, int, int, int] = (0, 0, 0, 0)) -> CameraInfo:
    x, y, w, h = roi
    return CameraInfo(header=header(5, "cam"), width=width, height=height, distortion_model="plumb_bob",
                      d=[0.1, 0.01, 0.0, 0.0, 0.0], k=K, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=P,
                      binning_x=binning, binning_y=binning,
                      roi=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h))


def _project(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    u = matrix @ point
    return u[:2] / u[2]


def test_parameter_choices_are_the_segmenters():
    from sfnet_core.inference.backends import BACKENDS  # lazy: torch, for this test only
    from sfnet_core.inference.geometry import OUTPUT_RESOLUTIONS, RESIZE_POLICIES  # lazy: torch (as above)

    assert params.BACKENDS == BACKENDS
    assert params.RESIZE_POLICIES == RESIZE_POLICIES
    assert params.OUTPUT_RESOLUTIONS == OUTPUT_RESOLUTIONS
    assert params.spec("resize").choices == RESIZE_POLICIES


def test_camera_info_at_input_resolution_is_passed_on():
    info = _info(640, 320, binning=2, roi=(10, 20, 600, 280))
    geometry = plan_geometry((140, 300), (64, 128), "crop", "input")  # labels in the frame's pixels
    out = outputs.output_camera_info(info, geometry, header(99, "labels"))
    assert (out.header.stamp.nanosec, out.header.frame_id) == (99, "labels")
    assert (out.width, out.height, out.binning_x, out.binning_y) == (640, 320, 2, 2)
    assert (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height) == (10, 20, 600, 280)
    np.testing.assert_array_equal(out.k, K)
    np.testing.assert_array_equal(out.p, P)


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
def test_camera_info_at_network_resolution_projects_onto_the_labels(resize):
    """A 3D point projected with the label image's camera_info lands where the frame's pixel of
    that point lands in the label image (geometry.to_output, the corner convention), for a camera
    whose frames are binned 2x from an ROI of the calibrated resolution."""
    info = _info(700, 400, binning=2, roi=(40, 30, 600, 300))  # frames: 300x150
    geometry = plan_geometry((150, 300), (96, 128), resize, "network")
    out = outputs.output_camera_info(info, geometry, header(1))
    assert (out.height, out.width) == geometry.output_size == (96, 128)
    assert (out.binning_x, out.binning_y) == (0, 0)
    assert (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height) == (0, 0, 0, 0)
    np.testing.assert_array_equal(out.d, info.d)
    np.testing.assert_array_equal(out.r, info.r)
    # The frame's camera matrix by image_geometry's rule: ROI offset off, then binning divided out.
    k_frame = np.array([[250.0, 0, (300 - 40) / 2], [0, 260.0, (140 - 30) / 2], [0, 0, 1]])
    k_out = np.asarray(out.k).reshape(3, 3)
    p_out = np.asarray(out.p).reshape(3, 4)
    for point in ([0.3, -0.2, 2.0], [-1.0, 0.4, 5.0], [0.0, 0.0, 1.0]):
        u_frame = _project(k_frame, np.array(point))
        # pixel centre u (ROS convention) is the corner-convention coordinate u + 0.5
        x, y = geometry.to_output(u_frame[0] + 0.5, u_frame[1] + 0.5)
        np.testing.assert_allclose(_project(k_out, np.array(point)), [x - 0.5, y - 0.5], atol=1e-9)
        # P: the same pixel for the same camera (no rectification rotation), translation scaled.
        np.testing.assert_allclose(_project(p_out, np.array([*point, 1.0])),
                                   _project(k_out, np.array(point)) + np.array([-25.0 / 2 * geometry.scale_x, 0])
                                   / point[2], atol=1e-9)


def test_image_size_of_a_camera_info():
    assert outputs.info_image_size(_info(640, 480)) == (480, 640)
    assert outputs.info_image_size(_info(640, 480, binning=2)) == (240, 320)
    assert outputs.info_image_size(_info(640, 480, binning=2, roi=(0, 0, 320, 200))) == (100, 160)


def test_camera_info_cache_matches_stamps_and_falls_back_to_the_newest():
    cache = outputs.CameraInfoCache(keep=3)
    assert cache.lookup(1) == (None, False)
    infos = {}
    for stamp in (1, 2, 3, 4):
        infos[stamp] = CameraInfo(header=header(stamp))
        cache.put(infos[stamp])
    assert cache.lookup(3) == (infos[3], True)
    assert cache.lookup(4) == (infos[4], True)
    assert cache.lookup(1) == (infos[4], False)  # evicted (keep=3): the newest stands in
    assert cache.lookup(7) == (infos[4], False)


@dataclass
class _VisionClass:  # vision_msgs/VisionClass's fields
    class_id: int = 0
    class_name: str = ""


@dataclass
class _LabelInfo:  # vision_msgs/LabelInfo's fields
    header: object = None
    class_map: list = field(default_factory=list)
    threshold: float = 0.0


def test_label_info_lists_every_class_and_unlabeled():
    names = ["road", "sidewalk", "traffic light"]
    msg = outputs.fill_label_info(_LabelInfo, _VisionClass, names, header(3, "x"))
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [
        (0, "road"), (1, "sidewalk"), (2, "traffic light"), (255, "unlabeled")]
    assert msg.threshold == 0.0 and msg.header.frame_id == "x"
    with pytest.raises(ValueError, match="do not fit"):
        outputs.fill_label_info(_LabelInfo, _VisionClass, [str(i) for i in range(255)], header(0))


def test_label_info_of_the_node_uses_its_class_table(checkpoint):
    from sfnet_core.checkpoint import load_checkpoint  # lazy: torch, for this test only

    classes = load_checkpoint(checkpoint).classes
    msg = outputs.fill_label_info(_LabelInfo, _VisionClass, classes.names, header(0))
    assert len(msg.class_map) == classes.num_classes + 1
    assert {c.class_id: c.class_name for c in msg.class_map}[classes.index("person")] == "person"


def test_timing_array_places_every_instant_on_the_ros_clock():
    ms = 1_000_000
    timing = outputs.FrameTiming(received_ns=100 * ms, taken_ns=102 * ms, decoded_ns=103 * ms,
                                 inference_start_ns=104 * ms, inference_end_ns=154 * ms, published_ns=160 * ms,
                                 published_ros_ns=5_000_000_000, batch_size=2)
    frame_header = header(4_900_000_000, "cam")
    msg = outputs.timing_array(frame_header, "/n: /image", "cpu fp32", timing)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 4
    (status,) = msg.status
    values = {kv.key: kv.value for kv in status.values}
    assert values["publish_time"] == "5.000000000"
    assert values["receive_time"] == "4.940000000"
    assert Decimal(values["inference_end_time"]) - Decimal(values["inference_start_time"]) == Decimal("0.05")
    assert values["stamp_to_receive_ms"] == "40.000"
    assert values["stamp_to_publish_ms"] == "100.000"
    assert (values["queue_ms"], values["decode_ms"], values["wait_for_batch_ms"]) == ("2.000", "1.000", "1.000")
    assert (values["inference_ms"], values["publish_ms"], values["receive_to_publish_ms"]) == (
        "50.000", "6.000", "60.000")
    assert values["batch_size"] == "2" and status.hardware_id == "cpu fp32"
    assert "render_ms" not in values and "send_ms" not in values  # the rendered instant was not recorded
    timing = replace(timing, rendered_ns=157 * ms)  # images rendered, messages built: publish_ms in two
    values = {kv.key: kv.value for kv in outputs.timing_array(frame_header, "/n", "cpu", timing).status[0].values}
    assert (values["render_ms"], values["send_ms"], values["publish_ms"]) == ("3.000", "3.000", "6.000")


def test_frame_and_flow_in_the_output_geometry():
    frame = np.full((64, 128, 3), 200, np.uint8)
    letterbox = plan_geometry((64, 128), (48, 64), "letterbox", "network")  # content rows 8..39
    under = outputs.frame_in_output(frame, letterbox)
    assert under.shape == (48, 64, 3)
    assert (under[:8] == 0).all() and (under[40:] == 0).all() and (under[8:40] == 200).all()
    assert outputs.frame_in_output(frame, plan_geometry((64, 128), (48, 64), "crop", "input")) is frame

    crop = plan_geometry((64, 128), (48, 64), "crop", "input")  # window columns 21..105
    flow = np.zeros((2, 12, 16), np.float32)
    flow[0] = 1.0  # to the right everywhere
    image = outputs.flow_image(flow, crop)
    assert image.shape == (64, 128, 3)
    assert (image[:, :21] == 0).all() and (image[:, 106:] == 0).all()
    inside = image[:, 21:106].reshape(-1, 3)
    assert len(np.unique(inside, axis=0)) == 1 and inside[0, 0] > inside[0, 2]  # one colour, reddish


# -- the harness's Fast DDS shared-memory clean-up ---------------------------------------------------


def _segment(folder, tag: str) -> tuple:
    name = f"fastdds_{secrets.token_hex(8)}"
    segment, lock = folder / name, folder / f"{name}_el"
    segment.write_bytes(tag.encode())
    lock.write_bytes(b"")
    return segment, lock


def test_shm_clean_removes_only_unlocked_segments(tmp_path):
    # In a folder of its own: a real /dev/shm sweep with no grace period could catch another
    # process's segment between its creation and its lock.
    zombie, live, young = (_segment(tmp_path, tag) for tag in ("zombie", "live", "young"))
    port = [tmp_path / "fastdds_port7411", tmp_path / "sem.fastdds_port7411_mutex", tmp_path / "fastdds_port7411_el"]
    for path in port:
        path.write_bytes(b"")
    unrelated = tmp_path / "other_el"
    unrelated.write_bytes(b"")
    fd = os.open(live[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live participant holds
    try:
        assert set(shm_files_locked_by(os.getpid(), tmp_path)) == set(live)
        # Inside the grace period (a creator locks right after creating): nothing is touched.
        assert clean_shm_segments(tmp_path, min_age_s=3600.0) == []
        removed = set(clean_shm_segments(tmp_path, min_age_s=0.0))
        assert removed == {*zombie, *young, *port}
        assert all(path.exists() for path in live) and unrelated.exists()
    finally:
        os.close(fd)
    assert set(clean_shm_segments(tmp_path, min_age_s=0.0)) == set(live)  # released: now a zombie
