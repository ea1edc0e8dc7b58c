"""The inference thread's work on one batch of frames: plan, decode, segment, render, publish.

``FramePipeline.process(frames, model, draw)`` is what the node's worker thread (worker.py) runs
for every batch it takes from the mailbox. Per frame, in order:

1. plan (under the gate's lock): drop frames of an earlier activation (counted as discarded);
   drop a raw frame over ``max_input_pixels`` (counted, logged); find which outputs have
   subscribers; a frame nobody listens to is skipped (counted) before it is decoded;
2. decode (outside the lock): Image or CompressedImage to an (H, W, 3) uint8 array; bgr8 stays
   BGR (the network flips channels on the device); a compressed frame over the limit is dropped
   now that its size is known;
3. segment: one ``Segmenter.segment`` call per input colour order for every waiting camera;
4. render: labels, colour (or overlay), confidence, class masks, flow, only those listened to;
5. publish (under the lock, only while the frame's activation is still the live one): the
   images, the scaled camera_info of the frame's stamp; then counters and the per-frame timing.

Nothing here creates a ROS entity: publishers come in through the ``OutputGate``'s cameras
(anything with ``publish`` and ``get_subscription_count``), the ROS clock and the logger are
handed in, so test/test_frame_pipeline.py drives it without DDS.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sfnet_core.threads import follow_threads
from sfnet_core.viz import render_outputs
from sfnet_ros.conversions import ImageConversionError, compressed_to_rgb, image_to_numpy, image_to_rgb, numpy_to_image
from sfnet_ros.node import outputs
from sfnet_ros.node.camera_io import CameraIO, OutputGate, OutputPublisher
from sfnet_ros.node.model_setup import LoadedModel
from sfnet_ros.node.params import NodeConfig
from sfnet_ros.node.worker import Frame

if TYPE_CHECKING:  # importing sfnet_core.inference loads torch; the node loads it at configure
    from sfnet_core.inference import FrameGeometry, SegmentationResult

__all__ = ["DrawOptions", "FramePipeline", "Log", "WARN_THROTTLE_S"]

# Bad frames can arrive at camera rate; one warning per this many seconds is enough to notice.
WARN_THROTTLE_S = 5.0


class Log(Protocol):
    """The logging the pipeline does (rclpy's node logger; a list in tests)."""

    def info(self, message: str, *, throttle_duration_sec: float = ...) -> object: ...

    def warning(self, message: str, *, throttle_duration_sec: float = ...) -> object: ...


@dataclass(frozen=True)
class DrawOptions:
    """The runtime-settable parameters: read by the worker for every batch."""

    publish_color: bool
    color_overlay: bool
    overlay_alpha: float
    publish_confidence: bool
    publish_timing: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DrawOptions:
        """The options among the node's parameter values (name -> value)."""
        return cls(publish_color=bool(values["publish_color"]), color_overlay=bool(values["color_overlay"]),
                   overlay_alpha=float(values["overlay_alpha"]), publish_confidence=bool(values["publish_confidence"]),
                   publish_timing=bool(values["publish_timing"]))


@dataclass
class _Pending:
    """A frame on its way through the network (``image`` None until decoded)."""

    frame: Frame
    io: CameraIO
    image: np.ndarray | None  # (H, W, 3) uint8, RGB or BGR
    bgr: bool
    want_color: bool
    want_confidence: bool
    want_labels: bool
    masks: list[tuple[int, OutputPublisher]]
    want_flow: bool = False
    taken_ns: int = 0         # time.monotonic_ns() when the inference thread took the frame
    decoded_ns: int = 0


def _listeners(publisher: OutputPublisher | None) -> int:
    return 0 if publisher is None else publisher.get_subscription_count()


class FramePipeline:
    """Runs batches of frames through the model and onto the live activation's publishers.

    ``gate``: the activation switch shared with the node; ``log``: the node's logger;
    ``ros_now_ns``: the ROS clock (timing messages put the monotonic instants on it);
    ``node_name``: the node's fully qualified name, naming its timing statuses.
    """

    def __init__(self, gate: OutputGate, log: Log, ros_now_ns: Callable[[], int], node_name: str) -> None:
        self._gate = gate
        self._log = log
        self._ros_now_ns = ros_now_ns
        self._node_name = node_name
        self.discarded_total = 0  # frames whose results were discarded (earlier activation)
        self.quiet = False        # set on the way out: the logger may be gone, log nothing more

    def process(self, frames: list[Frame], model: LoadedModel | None, draw: DrawOptions) -> None:
        """Convert, segment (one forward per input colour order), publish; runs in the worker."""
        taken_ns = time.monotonic_ns()
        with self._gate.lock:
            generation = self._gate.live_generation()
            current = [frame for frame in frames if frame.generation == generation]
            # Under the lock: the publishers _plan asks for subscribers exist until it is released.
            plans = [] if model is None else [
                p for p in (self._plan(frame, draw, model.config) for frame in current) if p is not None]
        if len(current) < len(frames):
            self.discard(len(frames) - len(current))
        if model is None or not plans:
            return
        follow_threads(model.threads)  # torch's count is per thread; configure ran in another one
        pending = [p for p in (self._decode(replace(plan, taken_ns=taken_ns), model.config) for plan in plans)
                   if p is not None]
        for bgr in (False, True):
            group = [p for p in pending if p.bgr == bgr]
            if not group:
                continue
            start_ns = time.monotonic_ns()
            results = model.segmenter.segment(
                [p.image for p in group if p.image is not None], bgr=bgr,
                return_confidence=any(p.want_confidence for p in group),
                return_flows="finest" if any(p.want_flow for p in group) else False)
            end_ns = time.monotonic_ns()
            assert isinstance(results, list), "a list of images gives a list of results"
            for item, result in zip(group, results):
                self._publish(item, result, model, draw, generation, (start_ns, end_ns, len(group)))

    def discard(self, count: int) -> None:
        """Count ``count`` frames whose results go nowhere (their activation ended)."""
        with self._gate.lock:
            self.discarded_total += count
        if not self.quiet:
            self._log.info(f"discarding the results of {count} frame(s) of an earlier activation",
                           throttle_duration_sec=WARN_THROTTLE_S)

    def _too_large(self, io: CameraIO, width: int, height: int, limit: int) -> None:
        reason = f"{width}x{height} frame ({width * height} pixels) is larger than max_input_pixels {limit}"
        io.stats.too_large(reason)
        self._log.warning(f"dropping a frame from {io.input_topic}: {reason}", throttle_duration_sec=WARN_THROTTLE_S)

    def _plan(self, frame: Frame, draw: DrawOptions, config: NodeConfig) -> _Pending | None:
        """Decide what this frame must produce (called under the gate's lock)."""
        io = self._gate.cameras.get(frame.camera)
        if io is None:
            return None
        msg = frame.msg
        limit = config.max_input_pixels
        if limit and isinstance(msg, Image) and int(msg.height) * int(msg.width) > limit:
            self._too_large(io, int(msg.width), int(msg.height), limit)
            return None
        want_labels = _listeners(io.labels) > 0
        want_color = draw.publish_color and _listeners(io.color) > 0
        want_confidence = draw.publish_confidence and _listeners(io.confidence) > 0
        want_flow = _listeners(io.flow) > 0
        masks = [(cid, pub) for cid, pub in io.masks.values() if pub.get_subscription_count() > 0]
        if not (want_labels or want_color or want_confidence or want_flow or masks):
            io.stats.skipped()
            return None
        return _Pending(frame, io, None, False, want_color, want_confidence, want_labels, masks, want_flow)

    def _decode(self, item: _Pending, config: NodeConfig) -> _Pending | None:
        """Decode the frame of a planned item (outside the lock); None when it is dropped."""
        io, msg = item.io, item.frame.msg
        try:
            if isinstance(msg, CompressedImage):
                image, bgr = compressed_to_rgb(msg), False
            elif msg.encoding == "bgr8":
                # The network takes BGR directly (channel flip on the device): no CPU conversion.
                image, bgr = image_to_numpy(msg), True
            else:
                image, bgr = image_to_rgb(msg), False
        except ImageConversionError as exc:
            io.stats.bad_input(str(exc))
            self._log.warning(f"dropping a frame from {io.input_topic}: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
            return None
        limit = config.max_input_pixels
        if limit and image.shape[0] * image.shape[1] > limit:  # compressed: known once decoded
            self._too_large(io, image.shape[1], image.shape[0], limit)
            return None
        return replace(item, image=image, bgr=bgr, decoded_ns=time.monotonic_ns())

    def _camera_info_for(self, item: _Pending, geometry: FrameGeometry, header: Any) -> tuple[CameraInfo | None, bool]:
        """The segmentation/camera_info of this frame's outputs, and whether it matched the stamp."""
        io = item.io
        info, matched = io.camera_infos.lookup(outputs.stamp_ns(header))
        if info is None:
            return None, False
        if not io.camera_info_warned and outputs.info_image_size(info) != tuple(geometry.input_size):
            # Passed on (scaled) as received: the camera's calibration is not ours to correct.
            io.camera_info_warned = True
            h, w = outputs.info_image_size(info)
            self._log.warning(
                f"{io.camera_info_topic} describes a {w}x{h} image (after binning and ROI), but the frames on "
                f"{io.input_topic} are {geometry.input_size[1]}x{geometry.input_size[0]}: the published "
                "camera_info is scaled from it all the same")
        return outputs.output_camera_info(info, geometry, header), matched

    def _render(self, item: _Pending, result: SegmentationResult, model: LoadedModel, draw: DrawOptions,
                geometry: FrameGeometry) -> dict[str, np.ndarray]:
        """The output images this frame's listeners want, by output name ("labels", "mask/<id>", ...)."""
        overlay_on = None
        if item.want_color and draw.color_overlay and item.image is not None:
            overlay_on = outputs.frame_in_output(item.image[..., ::-1] if item.bgr else item.image, geometry)
        images = render_outputs(
            result.labels, model.palette if item.want_color else None, with_labels=item.want_labels,
            masks={str(class_id): class_id for class_id, _ in item.masks},
            confidence=result.confidence if item.want_confidence else None,
            overlay_on=overlay_on, overlay_alpha=draw.overlay_alpha)
        if item.want_flow and result.flows:
            images["flow"] = outputs.flow_image(result.flows[-1], geometry)
        return images

    def _publish(self, item: _Pending, result: SegmentationResult, model: LoadedModel, draw: DrawOptions,
                 generation: int, inference: tuple[int, int, int]) -> None:
        io = item.io
        header = item.frame.msg.header
        geometry = result.geometry
        assert geometry is not None, "Segmenter.segment sets every result's geometry"
        publishers: dict[str, OutputPublisher | None] = {
            "labels": io.labels, "color": io.color, "confidence": io.confidence, "flow": io.flow,
            **{f"mask/{class_id}": pub for class_id, pub in item.masks}}
        messages: list[tuple[OutputPublisher | None, Any]] = [
            (publishers[name], numpy_to_image(image, "mono8" if image.ndim == 2 else "rgb8", header=header))
            for name, image in self._render(item, result, model, draw, geometry).items()]
        rendered_ns = time.monotonic_ns()
        info_msg, info_matched, want_timing = None, False, False
        with self._gate.lock:
            # The publishers of an earlier activation are destroyed: only look at them while live.
            live = self._gate.is_live(generation)
            if live:
                if _listeners(io.camera_info) > 0:
                    info_msg, info_matched = self._camera_info_for(item, geometry, header)
                    if info_msg is not None:
                        messages.append((io.camera_info, info_msg))
                for publisher, msg in messages:
                    if publisher is not None:
                        publisher.publish(msg)
                now_ns = time.monotonic_ns()
                now_ros_ns = self._ros_now_ns()
                want_timing = draw.publish_timing and _listeners(io.timing) > 0
        if not live:
            # Deactivated (or re-activated) while this frame was in the network.
            self.discard(1)
            return
        if info_msg is not None:
            io.stats.camera_info_published(info_matched)
        elif io.camera_info_subscription is not None and io.camera_infos.lookup(0)[0] is None:
            io.stats.camera_info_missing()
        receive_ms = (now_ns - item.frame.received_ns) / 1e6
        stamp_ms = (now_ros_ns - outputs.stamp_ns(header)) / 1e6
        io.stats.published(receive_ms, stamp_ms)
        if want_timing:
            self._publish_timing(item, model, generation, inference, rendered_ns, now_ns, now_ros_ns)

    def _publish_timing(self, item: _Pending, model: LoadedModel, generation: int, inference: tuple[int, int, int],
                        rendered_ns: int, now_ns: int, now_ros_ns: int) -> None:
        start_ns, end_ns, batch = inference
        io = item.io
        timing = outputs.FrameTiming(
            received_ns=item.frame.received_ns, taken_ns=item.taken_ns, decoded_ns=item.decoded_ns,
            inference_start_ns=start_ns, inference_end_ns=end_ns, published_ns=now_ns,
            published_ros_ns=now_ros_ns, batch_size=batch, rendered_ns=rendered_ns)
        msg = outputs.timing_array(item.frame.msg.header, f"{self._node_name}: {io.input_topic}",
                                   model.device_text, timing)
        with self._gate.lock:
            if self._gate.is_live(generation) and io.timing is not None:
                io.timing.publish(msg)
