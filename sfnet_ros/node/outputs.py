"""What the node publishes beside the label images: camera_info, classes, LabelInfo, timing, flow.

Pure functions of messages and arrays (no node, no publishers), so each rule is tested on its own
(test/test_node_messages.py) and over DDS (test/test_node_geometry.py).

camera_info (``output_camera_info``): the label image is the camera frame mapped by the
Segmenter's ``FrameGeometry``: ``x_out = A @ x_in`` for pixel centres (the ROS / OpenCV
convention), ``A = geometry.pixel_transform()``. So the camera model of the label image is
``K_out = A @ K_img`` and ``P_out = A @ P_img``, where ``K_img`` / ``P_img`` are the intrinsics of
the *received image* (the camera_info's ``K``/``P`` with its binning and ROI folded in, as
image_geometry's PinholeCameraModel reads them). When ``A`` is the identity (``output_resolution:
input``, whatever the resize policy: the labels are in the frame's own pixels) the received
camera_info is passed on untouched but for the header. Otherwise the result describes the label
image as a full-resolution image of its own: ``width``/``height`` = the label image's,
``binning_x = binning_y = 0`` and an empty ROI (nothing left to fold in), ``D`` and ``R``
unchanged (distortion acts on normalised coordinates, which an affine pixel map does not change).

LabelInfo (``fill_label_info``): vision_msgs/LabelInfo from the class table, ``255`` = ``unlabeled``
(vision_msgs' convention for uint8 label images), ``threshold`` 0.0 (every labelled pixel is the
arg max, no confidence threshold is applied). vision_msgs is optional: the message types are
passed in.

Timing (``timing_array``): one diagnostic_msgs/DiagnosticArray per output frame, header = the
frame's header (so it pairs with the labels by stamp), one status whose values are the times.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo, RegionOfInterest

from sfnet_core.data.classes import ClassTable
from sfnet_core.viz import flow_to_color
from sfnet_ros.node.params import topic_token

__all__ = [
    "UNLABELED",
    "UNLABELED_NAME",
    "CameraInfoCache",
    "FrameTiming",
    "classes_json",
    "fill_label_info",
    "flow_image",
    "frame_in_output",
    "image_intrinsics",
    "info_image_size",
    "output_camera_info",
    "stamp_ns",
    "timing_array",
]

UNLABELED = 255
UNLABELED_NAME = "unlabeled"


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in ns (frames and camera_info are matched by it)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# -- camera_info -----------------------------------------------------------------------------------


def _binning(value: int) -> int:
    return max(1, int(value))  # 0 means "no binning", as 1 does


def _roi_window(info: Any) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the ROI in full-resolution pixels; the whole image when empty."""
    roi = info.roi
    if roi.x_offset == 0 and roi.y_offset == 0 and roi.width == 0 and roi.height == 0:
        return 0, 0, int(info.width), int(info.height)
    return int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)


def image_intrinsics(info: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(K, P)`` (3x3, 3x4 float64) of the image a camera_info describes: its full-resolution
    ``K``/``P`` with the ROI offset subtracted and the binning divided out (image_geometry's rule)."""
    x, y, _, _ = _roi_window(info)
    bx, by = _binning(info.binning_x), _binning(info.binning_y)
    fold = np.array([[1.0 / bx, 0.0, -x / bx], [0.0, 1.0 / by, -y / by], [0.0, 0.0, 1.0]])
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    return fold @ k, fold @ p


def info_image_size(info: Any) -> tuple[int, int]:
    """(height, width) of the image a camera_info describes (ROI, then binning)."""
    _, _, width, height = _roi_window(info)
    return height // _binning(info.binning_y), width // _binning(info.binning_x)


def output_camera_info(info: Any, geometry: Any, header: Any) -> Any:
    """The camera_info of the label image made from a frame with camera_info ``info`` by
    ``geometry`` (a ``FrameGeometry``), carrying ``header`` (the frame's). See the module docstring."""
    transform = geometry.pixel_transform()
    if np.array_equal(transform, np.eye(3)):
        return CameraInfo(header=header, height=info.height, width=info.width,
                          distortion_model=info.distortion_model, d=list(info.d), k=list(info.k), r=list(info.r),
                          p=list(info.p), binning_x=info.binning_x, binning_y=info.binning_y, roi=info.roi)
    k, p = image_intrinsics(info)
    out_h, out_w = geometry.output_size
    return CameraInfo(header=header, height=int(out_h), width=int(out_w), distortion_model=info.distortion_model,
                      d=list(info.d), k=(transform @ k).reshape(-1).tolist(), r=list(info.r),
                      p=(transform @ p).reshape(-1).tolist(), binning_x=0, binning_y=0, roi=RegionOfInterest())


class CameraInfoCache:
    """The newest camera_info messages of one camera, looked up by the stamp of a frame.

    The callback (executor thread) ``put``s, the inference thread ``lookup``s after the forward
    pass, which gives a camera_info published just after its image (image_transport's order)
    time to arrive. ``keep`` covers the frames that can be in flight: stamps older than that
    fall back to the newest message.
    """

    def __init__(self, keep: int = 16) -> None:
        self._lock = threading.Lock()
        self._by_stamp: OrderedDict[int, Any] = OrderedDict()
        self._keep = keep
        self._newest: Any = None

    def put(self, info: Any) -> None:
        stamp = stamp_ns(info.header)
        with self._lock:
            self._by_stamp[stamp] = info
            self._by_stamp.move_to_end(stamp)
            while len(self._by_stamp) > self._keep:
                self._by_stamp.popitem(last=False)
            self._newest = info

    def lookup(self, stamp_ns: int) -> tuple[Any, bool]:
        """``(info, matched)``: the camera_info with this stamp (matched True), else the newest
        one (False), else ``(None, False)``."""
        with self._lock:
            info = self._by_stamp.get(stamp_ns)
            return (info, True) if info is not None else (self._newest, False)


# -- the class table -------------------------------------------------------------------------------


def classes_json(classes: ClassTable, mask_ids: Mapping[str, int]) -> str:
    """segmentation/classes: the class table (id, name, colour), the ignore index, and the topic
    of each mask class (relative to the camera's prefix)."""
    return json.dumps({
        "classes": [{"id": i, "name": name, "color": list(color)}
                    for i, (name, color) in enumerate(zip(classes.names, classes.colors))],
        "ignore_index": classes.ignore_index,
        "mask_topics": {name: f"segmentation/mask/{topic_token(name)}" for name in mask_ids},
    })


# -- LabelInfo -------------------------------------------------------------------------------------


def fill_label_info(label_info_type: Any, vision_class_type: Any, class_names: Sequence[str], header: Any,
                    threshold: float = 0.0) -> Any:
    """A vision_msgs/LabelInfo (``label_info_type``, ``vision_class_type`` = vision_msgs' LabelInfo
    and VisionClass, or types with the same fields): train id -> class name for every class, plus
    ``255 -> "unlabeled"``."""
    if len(class_names) >= UNLABELED:
        raise ValueError(f"{len(class_names)} classes do not fit a mono8 label image with {UNLABELED} = unlabeled")
    class_map = [vision_class_type(class_id=i, class_name=str(name)) for i, name in enumerate(class_names)]
    class_map.append(vision_class_type(class_id=UNLABELED, class_name=UNLABELED_NAME))
    return label_info_type(header=header, class_map=class_map, threshold=float(threshold))


# -- timing ----------------------------------------------------------------------------------------


@dataclass
class FrameTiming:
    """When one frame went through the node: ``time.monotonic_ns()`` readings, plus the ROS clock
    at publication (the other instants are placed on the ROS clock by their monotonic distance)."""

    received_ns: int         # the subscription callback stored the message
    taken_ns: int            # the inference thread took it from the mailbox
    decoded_ns: int          # converted to an RGB/BGR array
    inference_start_ns: int  # Segmenter.segment called (the frame's batch)
    inference_end_ns: int    # labels (and confidence / flow) on the host
    published_ns: int        # every output of the frame handed to DDS
    published_ros_ns: int    # ROS clock at published_ns
    batch_size: int          # frames in the forward pass
    rendered_ns: int = 0     # output images rendered and their messages built (0: not recorded)


def _ms(a: int, b: int) -> float:
    return (b - a) / 1e6


def _ros_time_text(ns: int) -> str:
    sec, nsec = divmod(ns, 1_000_000_000)
    return f"{sec}.{nsec:09d}"


def _publish_parts(t: FrameTiming) -> list[tuple[str, str]]:
    """``publish_ms`` split in two, when the instant between is known: ``render_ms`` (colour,
    masks, confidence images and their messages built) and ``send_ms`` (handed to DDS)."""
    if not t.inference_end_ns <= t.rendered_ns <= t.published_ns:
        return []
    return [("render_ms", f"{_ms(t.inference_end_ns, t.rendered_ns):.3f}"),
            ("send_ms", f"{_ms(t.rendered_ns, t.published_ns):.3f}")]


def timing_array(header: Any, name: str, hardware_id: str, timing: FrameTiming) -> Any:
    """diagnostic_msgs/DiagnosticArray for one output frame: ``header`` = the frame's header, one
    status with absolute ROS times (``receive_time``, ``inference_start_time``,
    ``inference_end_time``, ``publish_time``: seconds.nanoseconds) and the intervals in ms."""
    t = timing

    def ros(ns: int) -> str:
        return _ros_time_text(t.published_ros_ns - (t.published_ns - ns))

    stamp = stamp_ns(header)
    values = [
        ("receive_time", ros(t.received_ns)),
        ("inference_start_time", ros(t.inference_start_ns)),
        ("inference_end_time", ros(t.inference_end_ns)),
        ("publish_time", _ros_time_text(t.published_ros_ns)),
        ("stamp_to_receive_ms", f"{(t.published_ros_ns - (t.published_ns - t.received_ns) - stamp) / 1e6:.3f}"),
        ("queue_ms", f"{_ms(t.received_ns, t.taken_ns):.3f}"),
        ("decode_ms", f"{_ms(t.taken_ns, t.decoded_ns):.3f}"),
        ("wait_for_batch_ms", f"{_ms(t.decoded_ns, t.inference_start_ns):.3f}"),
        ("inference_ms", f"{_ms(t.inference_start_ns, t.inference_end_ns):.3f}"),
        ("publish_ms", f"{_ms(t.inference_end_ns, t.published_ns):.3f}"),
        *_publish_parts(t),
        ("receive_to_publish_ms", f"{_ms(t.received_ns, t.published_ns):.3f}"),
        ("stamp_to_publish_ms", f"{(t.published_ros_ns - stamp) / 1e6:.3f}"),
        ("batch_size", str(t.batch_size)),
    ]
    status = DiagnosticStatus(level=DiagnosticStatus.OK, name=name, hardware_id=hardware_id,
                              message=f"{_ms(t.received_ns, t.published_ns):.1f} ms receive to publish",
                              values=[KeyValue(key=k, value=v) for k, v in values])
    return DiagnosticArray(header=header, status=[status])


# -- images in the output geometry -----------------------------------------------------------------


def frame_in_output(image: np.ndarray, geometry: Any) -> np.ndarray:
    """The camera frame (H, W, 3) as it lies under the label image of ``geometry``: itself at
    ``output_resolution: input``; at ``network`` its window resized onto the content box of an
    output-size canvas (black outside: letterbox bands). For the colour overlay."""
    if tuple(image.shape[:2]) == tuple(geometry.output_size) and geometry.output == "input":
        return image
    y, x, wh, ww = geometry.window
    top, left, ch, cw = geometry.content
    canvas = np.zeros((*geometry.output_size, 3), np.uint8)
    canvas[top : top + ch, left : left + cw] = cv2.resize(
        np.ascontiguousarray(image[y : y + wh, x : x + ww]), (cw, ch), interpolation=cv2.INTER_AREA)
    return canvas


def flow_image(flow: np.ndarray, geometry: Any) -> np.ndarray:
    """(H_out, W_out, 3) uint8 RGB: the flow field (2, h, w) (the finest FAM's, covering the
    frame's content box of the network input) colour-coded by ``sfnet_core.viz.flow_to_color``
    (direction = hue, magnitude = saturation relative to the frame's largest vector) and resized
    (nearest: its cells stay visible) onto the labelled window of the output; black elsewhere."""
    color = flow_to_color(flow)
    vy, vx, vh, vw = geometry.valid
    canvas = np.zeros((*geometry.output_size, 3), np.uint8)
    canvas[vy : vy + vh, vx : vx + vw] = cv2.resize(color, (vw, vh), interpolation=cv2.INTER_NEAREST)
    return canvas
