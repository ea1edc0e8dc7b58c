"""``sfnet_node``: the SFNet semantic segmentation node (a ROS 2 managed / lifecycle node).

Lifecycle:
  configure   read and validate the parameters, load the checkpoint, warm the network up
  activate    create the image subscription(s) and the output publishers, start the worker
  deactivate  destroy subscriptions and publishers at once; a batch still in the network is
              finished by the worker and its results are discarded (nobody waits for it)
  cleanup     release the network (and the GPU memory)
  shutdown    release everything; with ``exit_on_shutdown`` (default) the process then exits 0
With ``autostart`` (default) the node walks itself to active at start-up, in a thread of its own,
so the lifecycle and parameter services answer while the model loads. A failed configure
(missing checkpoint, invalid parameter) logs one line saying why and leaves the node
unconfigured and alive, so a lifecycle manager or ``change_state`` can retry after the cause is
fixed (configure-time parameters may be changed while unconfigured).

Topics, relative to the node's namespace and ``<camera>/`` for each entry of ``cameras``:
  in   image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage),
       camera_info (sensor_msgs/CameraInfo, optional)
  out  segmentation/labels, segmentation/color, segmentation/mask/<class>,
       segmentation/confidence, segmentation/flow (opt-in) (sensor_msgs/Image),
       segmentation/camera_info (sensor_msgs/CameraInfo of the label image),
       segmentation/classes (std_msgs/String JSON, transient local), segmentation/label_info
       (vision_msgs/LabelInfo, transient local, when vision_msgs is installed),
       segmentation/timing (diagnostic_msgs/DiagnosticArray per output frame);
       /diagnostics (diagnostic_msgs/DiagnosticArray)

Threads: the main thread only waits for a stop request (SIGINT, SIGTERM, lifecycle shutdown) and
then leaves (see ``main.py``); the executor thread runs subscription callbacks (which only drop the
message into the camera's one-slot mailbox), QoS event callbacks, services, lifecycle transitions
requested over ``change_state`` and the diagnostics timer; the autostart thread runs the start-up
configure + activate; one inference thread converts, segments (one batch for all waiting
cameras) and publishes. See docs/node.md.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

try:
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, UnsupportedEventTypeError
except ImportError:  # Humble: the same classes, in their older module
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks, UnsupportedEventTypeError

try:  # on every ROS install with the vision packages; optional here (not on PyPI)
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

from sfnet_core.errors import ConfigError, SFNetError
from sfnet_core.viz import render_outputs
from sfnet_ros.conversions import ImageConversionError, compressed_to_rgb, image_to_numpy, image_to_rgb, numpy_to_image
from sfnet_ros.node import diagnostics, outputs
from sfnet_ros.node.params import (
    APPLIED_AT_CONFIGURE,
    APPLIED_AT_RUNTIME,
    PARAMETERS,
    NodeConfig,
    camera_prefix,
    config_from_values,
    non_finite_error,
    parameter_descriptor,
    spec,
    topic_token,
)
from sfnet_ros.node.qos import CLASSES_QOS, data_qos, endpoint_name, enum_name, incompatible_policies, policy_name
from sfnet_ros.node.worker import Frame, InferenceWorker, LatestFrameMailbox

__all__ = ["SegmentationNode", "NODE_NAME"]

# The DDS message-lost event (rcl RCL_SUBSCRIPTION_MESSAGE_LOST): SubscriptionEventCallbacks takes
# ``message_lost`` from Galactic on (Humble's rclpy 3.3 included); an rclpy without it (Foxy) or an
# RMW that does not implement the event (UnsupportedEventTypeError) leaves the stamp gaps only.
MESSAGE_LOST_IN_RCLPY = "message_lost" in inspect.signature(SubscriptionEventCallbacks.__init__).parameters

NODE_NAME = "sfnet_node"

# Bad frames can arrive at camera rate; one warning per this many seconds is enough to notice.
WARN_THROTTLE_S = 5.0
# The main thread checks for a stop request this often, and the executor thread comes back from
# its wait this often to see whether it must stop.
SPIN_STEP_S = 0.1
# On the way out: how long to wait for the executor callback in progress (callbacks are short;
# only a configure requested over change_state can take seconds) ...
EXIT_CALLBACK_GRACE_S = 1.0
# ... and for the batch in flight. Its results could not be published anyway (the publishers are
# gone by then); the wait only lets a batch that is about to end end, so the interpreter can exit
# the ordinary way. A forward pass on a large frame on a CPU takes seconds and is not waited for.
EXIT_WORKER_GRACE_S = 0.5
# After a lifecycle shutdown, the process exits this much later: the change_state response has
# been handed to DDS by then, and is on the wire before the participant goes away.
SHUTDOWN_EXIT_DELAY_S = 0.3
# An incompatible-QoS event is kept on /diagnostics at least this long before the graph check may
# clear it (discovery data can lag behind the matching event).
QOS_EVENT_MIN_AGE_S = 2.0

# A message-lost event's total_count_change at or above this is not a count (see _on_message_lost).
MESSAGE_LOST_INVALID = 2**31 - 1

WORKER_THREAD_NAME = "sfnet_inference"
STOP_SIGNAL_MESSAGE = "stop requested (SIGINT/SIGTERM): shutting down"
STOP_SHUTDOWN_MESSAGE = "lifecycle shutdown: exiting (exit_on_shutdown)"


def _input_size_text(configured: Any, segmenter: Any) -> str:
    """The network input size the node runs at, as its log says it: the parameter's, the fixed
    size of an exported model when the parameter is empty, or each frame's own ("native")."""
    effective = getattr(segmenter, "input_size", None)
    if configured:
        return str(list(configured))
    if effective:
        return f"{list(effective)} (the model's fixed size; input_size is empty)"
    return "native"


@dataclass(frozen=True)
class DrawOptions:
    """The runtime-settable parameters: read by the worker for every batch."""

    publish_color: bool
    color_overlay: bool
    overlay_alpha: float
    publish_confidence: bool
    publish_timing: bool


@dataclass
class CameraIO:
    """Subscriptions, publishers and counters of one camera (of one activation)."""

    name: str                          # "" = the node's own namespace
    input_topic: str                   # as subscribed (relative, or resolved for compressed)
    stats: diagnostics.CameraStats
    camera_info_topic: str = ""        # as subscribed (resolved once subscribed)
    camera_infos: outputs.CameraInfoCache = field(default_factory=outputs.CameraInfoCache)
    subscription: Any = None
    camera_info_subscription: Any = None
    labels: Any = None
    color: Any = None
    confidence: Any = None
    flow: Any = None                   # only with publish_flow
    camera_info: Any = None
    timing: Any = None
    classes: Any = None
    label_info: Any = None             # only when vision_msgs is installed
    masks: dict[str, tuple[int, Any]] = field(default_factory=dict)  # token -> (class id, publisher)
    camera_info_warned: bool = False   # a camera_info / frame size mismatch was logged

    def image_outputs(self) -> list[Any]:
        return [p for p in (self.labels, self.color, self.confidence, self.flow) if p is not None] + [
            pub for _, pub in self.masks.values()]

    def publishers(self) -> list[Any]:
        return self.image_outputs() + [p for p in (self.camera_info, self.timing, self.classes, self.label_info)
                                       if p is not None]


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
    masks: list[tuple[int, Any]]
    want_flow: bool = False
    taken_ns: int = 0         # time.monotonic_ns() when the inference thread took the frame
    decoded_ns: int = 0


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class SegmentationNode(LifecycleNode):
    """Managed node segmenting one or more camera streams with one SFNet model."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_errors: dict[str, str] = {}  # overrides rejected at declaration time
        self._declare_parameters()
        self._draw = self._read_draw_options()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._state = "unconfigured"
        self._last_error = ""
        self._config: NodeConfig | None = None
        self._segmenter: Any = None
        self._mask_ids: dict[str, int] = {}
        self._palette: np.ndarray | None = None  # (256, 3) uint8 of the loaded class table
        self._device_text = "none"
        self._backend_text = "none"
        self._cameras: dict[str, CameraIO] = {}
        # One mailbox and one inference thread for the node's whole life (see worker.py): a new
        # activation never starts a second forward pass next to one that is still running.
        self._mailbox = LatestFrameMailbox()
        self._worker: InferenceWorker | None = None
        # Held by the worker while it looks at or publishes on the publishers of the activation
        # it works for, and by activate/deactivate while they switch activations. ``_generation``
        # changes with every activate and deactivate: a batch whose frames carry another one
        # belongs to an earlier activation, and its results go nowhere.
        self._io_lock = threading.Lock()
        self._io_open = False
        self._generation = 0
        self._discarded_total = 0  # frames whose results were discarded (earlier activation)
        self._leaving = False      # set on the way out: the worker then stays quiet
        # Called (from the executor thread) when the process should end after a lifecycle
        # shutdown; main() sets it. None: nothing happens (the node stays finalized).
        self.on_exit_request: Any = None
        self._exit_timer: Any = None

        # The large-frame Fast DDS profile this process runs with (main.py sets it from
        # sfnet_ros.transport_profile before rclpy.init); reported on /diagnostics.
        self.transport_profile = "unknown"
        # "yes", or why frames lost by DDS cannot be counted (set when the first input subscribes).
        self._message_lost_event = "yes" if MESSAGE_LOST_IN_RCLPY else (
            "no: this rclpy's SubscriptionEventCallbacks has no message_lost (before Galactic)")
        # Nodes of this node's fully qualified name on the domain, this one included, as the last
        # graph check saw them (_check_duplicates).
        self._same_name_count = 1
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_period = self._initial_diagnostics_period()
        self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)

    # -- parameters ------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

        for p in PARAMETERS:
            descriptor = parameter_descriptor(p)
            try:
                self.declare_parameter(p.name, p.default, descriptor)
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                # A bad override (e.g. qos_depth: 0, or a string for an integer) would otherwise
                # kill the process before it is even a lifecycle node. Keep the default, remember
                # why, and let configure fail with that message until the value is fixed.
                self.declare_parameter(p.name, p.default, descriptor, ignore_override=True)
                self._param_errors[p.name] = f"parameter '{p.name}': invalid value ({exc})"
                # NaN and infinity fail rclpy's range check: say so in params.py's own words.
                override = getattr(self, "_parameter_overrides", {}).get(p.name)  # rclpy Node internals
                value = getattr(override, "value", None)
                if isinstance(value, float) and not math.isfinite(value):
                    self._param_errors[p.name] = str(non_finite_error(p.name, value))

    def _parameter_values(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in PARAMETERS}

    def _read_draw_options(self) -> DrawOptions:
        return DrawOptions(
            publish_color=bool(self.get_parameter("publish_color").value),
            color_overlay=bool(self.get_parameter("color_overlay").value),
            overlay_alpha=float(self.get_parameter("overlay_alpha").value),
            publish_confidence=bool(self.get_parameter("publish_confidence").value),
            publish_timing=bool(self.get_parameter("publish_timing").value),
        )

    def _initial_diagnostics_period(self) -> float:
        value = self.get_parameter("diagnostics_period").value
        return float(value) if "diagnostics_period" not in self._param_errors else spec("diagnostics_period").default

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept configure-time parameters only while unconfigured; runtime ones any time."""
        for param in parameters:
            try:
                p = spec(param.name)
            except KeyError:
                continue
            if p.applied == APPLIED_AT_CONFIGURE and self._state != "unconfigured":
                return SetParametersResult(
                    successful=False,
                    reason=f"'{p.name}' is applied at configure: call cleanup first (node is {self._state})")
        for param in parameters:
            self._param_errors.pop(param.name, None)
        runtime = {param.name: param.value for param in parameters
                   if param.name in {q.name for q in PARAMETERS if q.applied == APPLIED_AT_RUNTIME}}
        if runtime:
            self._draw = replace(self._draw, **runtime)
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        # Refuses configure-time parameter changes while the values are being read and used.
        self._state = "configuring"
        try:
            if self._param_errors:
                raise ConfigError(next(iter(self._param_errors.values())))
            config = config_from_values(self._parameter_values())
            segmenter = self._load_segmenter(config)
            try:
                mask_ids = {name: segmenter.classes.index(name) for name in config.mask_classes}
            except ConfigError as exc:
                raise ConfigError(f"parameter 'mask_classes': {exc}") from None
            if config.publish_flow and not segmenter.backend.supports_flows:
                raise ConfigError(f"parameter 'publish_flow': needs the torch backend; the {segmenter.backend.name} "
                                  "backend returns class scores only")
        except (SFNetError, ValueError, OSError, RuntimeError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:  # an unforeseen cause must still fail cleanly
            self.get_logger().debug(traceback.format_exc())
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        self._config, self._segmenter, self._mask_ids = config, segmenter, mask_ids
        self._palette = segmenter.classes.palette()
        self._device_text = f"{segmenter.device} {segmenter.precision}"
        self._backend_text = segmenter.backend.describe()
        if config.diagnostics_period != self._diag_period:
            self.destroy_timer(self._diag_timer)
            self._diag_period = config.diagnostics_period
            self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)
        self._last_error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured in {time.monotonic() - started:.1f} s: {getattr(segmenter, 'model_name', 'model')} "
            f"from {config.checkpoint} on {segmenter.device} ({segmenter.precision}), backend "
            f"{self._backend_text}, input size {_input_size_text(config.input_size, segmenter)}, "
            f"resize {config.resize}, output resolution {config.output_resolution}, "
            f"cameras {list(config.cameras) or ['<namespace>']}")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self._last_error = f"configure failed: {message}"
        self.get_logger().error(self._last_error)
        self._state = "unconfigured"
        return TransitionCallbackReturn.FAILURE

    def _load_segmenter(self, config: NodeConfig) -> Any:
        from sfnet_core.devices import resolve_device
        from sfnet_core.inference import Segmenter

        # A vehicle whose GPU went missing keeps segmenting, slowly, rather than not at all.
        device = resolve_device(config.device, "parameter 'device'", fallback=True)
        segmenter = Segmenter.from_checkpoint(
            config.checkpoint, device=device, precision=config.precision, input_size=config.input_size,
            compile=config.compile, warmup=True, backend=config.backend, resize=config.resize,
            output=config.output_resolution)
        on_cpu = segmenter.device.type == "cpu"
        if segmenter.backend.name == "torch" and on_cpu and config.precision in ("auto", "fp16"):
            self.get_logger().warning("running on the CPU in fp32: expect a low frame rate")
        return segmenter

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._open_io()
        except Exception as exc:  # e.g. an invalid remapped topic name
            self._close_io()
            self._last_error = f"activate failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._last_error = ""
        self._state = "active"
        self.get_logger().info(
            "active: " + "; ".join(f"{io.input_topic} -> {io.labels.topic_name}" for io in self._cameras.values()))
        # What discovery knows now; the diagnostics timer checks again every period (a duplicate
        # discovered later, or started later, is reported then).
        self._check_duplicates()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Never waits for the worker: a forward pass on a large frame can take seconds, and the
        # executor (services, diagnostics) must not stop for it. Its results are discarded.
        self._close_io()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self._mailbox.close()  # a finalized node never activates again: let the worker end
        self._state = "finalized"
        if self.exit_on_shutdown and self.on_exit_request is not None:
            self.get_logger().info("finalized: the process exits (exit_on_shutdown)")
            # Not from inside this callback: the change_state response is sent after it returns.
            self._exit_timer = self.create_timer(SHUTDOWN_EXIT_DELAY_S, self._request_exit)
        else:
            self.get_logger().info("finalized: the process stays (exit_on_shutdown false)")
        return TransitionCallbackReturn.SUCCESS

    def _request_exit(self) -> None:
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        if self.on_exit_request is not None:
            self.on_exit_request()

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Drop the ROS entities of the active state and the model (idempotent). Does not wait
        for the batch in flight: its results are discarded."""
        self._close_io()
        self._release_model()

    def _release_model(self) -> None:
        segmenter, self._segmenter, self._config = self._segmenter, None, None
        self._device_text = "none"
        self._backend_text = "none"
        if segmenter is not None and getattr(segmenter.device, "type", "cpu") == "cuda":
            import torch

            # Memory the batch in flight still uses is freed when that batch ends.
            del segmenter
            torch.cuda.empty_cache()

    def stop_worker(self, timeout: float) -> bool:
        """End the inference thread: True once it has left, False if a batch is still running
        after ``timeout`` s (it then ends by itself, its results discarded)."""
        self._mailbox.close()
        return True if self._worker is None else self._worker.join(timeout)

    def worker_busy_for(self) -> float | None:
        """Seconds the batch in flight has been running (None when the worker is idle or gone)."""
        worker = self._worker
        return None if worker is None or not worker.alive() else worker.busy_for()

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def prepare_exit(self) -> None:
        """The process is about to end: the worker must not log any more (rclpy goes away)."""
        self._leaving = True

    def destroy_node(self) -> None:
        self._mailbox.close()
        super().destroy_node()

    # -- subscriptions, publishers, worker -------------------------------------------------

    def _open_io(self) -> None:
        config = self._config
        assert config is not None and self._segmenter is not None
        qos = data_qos(config)
        classes_json = self._classes_json()
        with self._io_lock:
            self._generation += 1
            self._io_open = False
            self._cameras = {}
        self._mailbox.reset(config.camera_names, self._generation)
        cameras: dict[str, CameraIO] = {}
        try:
            for camera in config.camera_names:
                prefix = camera_prefix(camera)
                if config.transport == "compressed":
                    # image_transport names the compressed topic after the *resolved* base topic,
                    # so `-r image:=/camera/image_raw` must lead to /camera/image_raw/compressed.
                    topic = self.resolve_topic_name(f"{prefix}image") + "/compressed"
                else:
                    topic = f"{prefix}image"
                io = CameraIO(name=camera, input_topic=topic, stats=diagnostics.CameraStats(),
                              camera_info_topic=f"{prefix}camera_info")
                cameras[camera] = io
                out = f"{prefix}segmentation/"
                io.labels = self._output(io, Image, out + "labels", qos)
                io.color = self._output(io, Image, out + "color", qos)
                io.confidence = self._output(io, Image, out + "confidence", qos)
                if config.publish_flow:
                    io.flow = self._output(io, Image, out + "flow", qos)
                io.camera_info = self._output(io, CameraInfo, out + "camera_info", qos)
                io.timing = self._output(io, DiagnosticArray, out + "timing", qos)
                io.classes = self._output(io, String, out + "classes", CLASSES_QOS)
                for name, class_id in self._mask_ids.items():
                    token = topic_token(name)
                    io.masks[token] = (class_id, self._output(io, Image, f"{out}mask/{token}", qos))
                io.classes.publish(String(data=classes_json))
                if LabelInfo is not None:
                    io.label_info = self._output(io, LabelInfo, out + "label_info", CLASSES_QOS)
                    io.label_info.publish(outputs.fill_label_info(
                        LabelInfo, VisionClass, self._segmenter.classes.names,
                        Header(stamp=self.get_clock().now().to_msg())))
            with self._io_lock:
                self._cameras = cameras
                self._io_open = True
            for io in cameras.values():
                # camera_info first: the info of a camera's first frame may then already be here.
                io.camera_info_subscription = self.create_subscription(
                    CameraInfo, io.camera_info_topic, partial(self._on_camera_info, io), qos,
                    event_callbacks=SubscriptionEventCallbacks(
                        incompatible_qos=partial(self._on_input_qos_incompatible, io, qos, "camera_info")))
                io.camera_info_topic = io.camera_info_subscription.topic_name
                msg_type = CompressedImage if config.transport == "compressed" else Image
                io.subscription = self._input_subscription(io, msg_type, qos)
                io.input_topic = io.subscription.topic_name  # resolved: what remaps made of it
        except Exception:
            # _close_io (called by on_activate) destroys what self._cameras holds.
            with self._io_lock:
                self._cameras = cameras
            raise
        if self._worker is None or not self._worker.alive():
            self._worker = InferenceWorker(self._mailbox, self._process, self._on_worker_error,
                                           name=WORKER_THREAD_NAME)
            self._worker.start()

    def _input_subscription(self, io: CameraIO, msg_type: Any, qos: QoSProfile) -> Any:
        """The camera's image subscription, with the incompatible-QoS and (where the rclpy and the
        RMW have it) message-lost events."""
        incompatible = partial(self._on_input_qos_incompatible, io, qos, "input")
        if MESSAGE_LOST_IN_RCLPY and self._message_lost_event == "yes":
            try:
                return self.create_subscription(
                    msg_type, io.input_topic, partial(self._on_image, io), qos,
                    event_callbacks=SubscriptionEventCallbacks(
                        incompatible_qos=incompatible, message_lost=partial(self._on_message_lost, io)))
            except UnsupportedEventTypeError:
                rmw = os.environ.get("RMW_IMPLEMENTATION") or "the default RMW"
                self._message_lost_event = f"no: {rmw} does not support the message-lost event"
                self.get_logger().warning(f"{self._message_lost_event}: frames lost in transport are counted by "
                                          "their header stamps only")
        return self.create_subscription(
            msg_type, io.input_topic, partial(self._on_image, io), qos,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=incompatible))

    def _input_publishers(self, io: CameraIO) -> int:
        """Publishers matched on the camera's input (-1 if unknown)."""
        subscription = io.subscription
        if subscription is None:
            return -1
        count = getattr(subscription, "get_publisher_count", None)  # rclpy >= Iron
        try:
            return int(count()) if count is not None else int(self.count_publishers(io.input_topic))
        except Exception:  # entities of a deactivation happening right now
            return -1

    def _check_duplicates(self) -> None:
        """Count the nodes of this node's fully qualified name on the domain (the ROS graph, as
        discovery knows it); log when another one appears or goes. Two nodes of one name both run,
        but their services, parameters and /diagnostics names collide."""
        name, namespace = self.get_name(), self.get_namespace()
        try:
            count = sum(1 for n, ns in self.get_node_names_and_namespaces() if n == name and ns == namespace)
        except Exception:  # the context is going away
            return
        count = max(count, 1)
        previous, self._same_name_count = self._same_name_count, count
        if count > previous:
            self.get_logger().warning(self._duplicate_text(count))
        elif count < previous and count == 1:
            self.get_logger().info(f"no other node named {self.get_fully_qualified_name()} on the domain any more")

    def _duplicate_text(self, count: int) -> str:
        domain = os.environ.get("ROS_DOMAIN_ID", "0")
        return (f"{count} nodes named {self.get_fully_qualified_name()} on ROS domain {domain}: their services, "
                "parameters and /diagnostics collide (a second instance started? give each its own name or "
                "namespace: -r __node:=<name> / -r __ns:=<namespace>)")

    def _output(self, io: CameraIO, msg_type: Any, topic: str, qos: QoSProfile) -> Any:
        """A publisher whose incompatible-QoS events land in ``io``'s diagnostics."""
        return self.create_publisher(
            msg_type, topic, qos,
            event_callbacks=PublisherEventCallbacks(
                incompatible_qos=partial(self._on_output_qos_incompatible, io, topic, qos)))

    def _close_io(self) -> None:
        # First the switch, under the lock: from here on the worker neither looks at nor
        # publishes on these publishers (it may be in the middle of a forward pass; its results
        # will carry an old generation). Then the entities go, without waiting for anybody.
        with self._io_lock:
            self._io_open = False
            self._generation += 1
            cameras, self._cameras = self._cameras, {}
        for frame in self._mailbox.reset((), self._generation):
            if frame.camera in cameras:
                cameras[frame.camera].stats.dropped_stale()
        for io in cameras.values():
            for subscription in (io.subscription, io.camera_info_subscription):
                if subscription is not None:
                    self.destroy_subscription(subscription)
            io.subscription = io.camera_info_subscription = None
            for publisher in io.publishers():
                self.destroy_publisher(publisher)

    def _classes_json(self) -> str:
        table = self._segmenter.classes
        return json.dumps({
            "classes": [{"id": i, "name": name, "color": list(color)}
                        for i, (name, color) in enumerate(zip(table.names, table.colors))],
            "ignore_index": table.ignore_index,
            "mask_topics": {name: f"segmentation/mask/{topic_token(name)}" for name in self._mask_ids},
        })

    def _on_image(self, io: CameraIO, msg: Any) -> None:
        """Subscription callback: no conversion, no waiting, just the newest-frame slot."""
        try:
            replaced = self._mailbox.put(io.name, msg)
        except KeyError:
            return  # a late callback of an earlier activation's subscription
        try:
            stamp_ns = _stamp_ns(msg.header)
        except (AttributeError, TypeError, ValueError):
            stamp_ns = 0
        io.stats.received(replaced_stale=replaced is not None, stamp_ns=stamp_ns)

    def _on_message_lost(self, io: CameraIO, event: Any) -> None:
        """Event: DDS lost messages between a matched publisher and this input (best effort: a
        frame missing a fragment, or overwritten in the writer's shared-memory segment)."""
        count = int(getattr(event, "total_count_change", 0) or 0)
        if count >= MESSAGE_LOST_INVALID:
            # Fast DDS 3.2 reports, when a writer resumes after a pause during which some of its
            # samples were lost, one event of 2**31 - 1 (a negative difference of sequence numbers,
            # saturated) next to the real ones: not a count (docs/transport.md).
            self.get_logger().debug(f"ignoring a message-lost event of {count} on {io.input_topic}")
            return
        io.stats.message_lost(count)
        if count > 0:
            self.get_logger().warning(
                f"{count} message(s) lost in transport on {io.input_topic} "
                f"({getattr(event, 'total_count', '?')} since it subscribed): see docs/transport.md",
                throttle_duration_sec=WARN_THROTTLE_S)

    def _on_camera_info(self, io: CameraIO, msg: CameraInfo) -> None:
        """Subscription callback: keep it for the frames of the same stamp (or later ones)."""
        io.camera_infos.put(msg)
        io.stats.camera_info_received()

    def _on_worker_error(self, exc: BaseException) -> None:
        if self._leaving:
            return
        self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=WARN_THROTTLE_S)
        self.get_logger().debug(traceback.format_exc())

    # -- incompatible QoS ------------------------------------------------------------------

    def _input_incompatibility(self, io: CameraIO, ours: QoSProfile, endpoint: str = "input") -> str:
        """Text naming each publisher of ``io``'s input (``endpoint`` "input" or "camera_info") whose
        QoS does not match ours ("" if none)."""
        topic = io.input_topic if endpoint == "input" else io.camera_info_topic
        bad = []
        for info in self.get_publishers_info_by_topic(topic):
            rules = incompatible_policies(info.qos_profile, ours)
            if rules:
                bad.append(f"publisher {endpoint_name(info)} on {topic}: {', '.join(rules)}")
        return "; ".join(bad)

    def _output_incompatibility(self, topic: str, ours: QoSProfile) -> str:
        """Text naming each subscription of our ``topic`` whose QoS does not match ours ("" if none)."""
        bad = []
        for info in self.get_subscriptions_info_by_topic(topic):
            rules = incompatible_policies(ours, info.qos_profile)
            if rules:
                bad.append(f"subscription {endpoint_name(info)} on {topic}: {', '.join(rules)}")
        return "; ".join(bad)

    def _on_input_qos_incompatible(self, io: CameraIO, ours: QoSProfile, endpoint: str, event: Any) -> None:
        """Event: a publisher of our input (``endpoint`` "input" or "camera_info") offers QoS our
        subscription cannot accept."""
        policy = policy_name(getattr(event, "last_policy_kind", "?"))
        topic = io.input_topic if endpoint == "input" else io.camera_info_topic
        text = self._input_incompatibility(io, ours, endpoint) or (
            f"a publisher on {topic} offers an incompatible {policy} "
            f"(this node requests {enum_name(ours.reliability)}, {enum_name(ours.durability)})")
        io.stats.qos_event(endpoint, text)
        what = "frames" if endpoint == "input" else "camera_info messages"
        self.get_logger().warning(f"incompatible QoS, no {what} will come from that publisher: {text}")

    def _on_output_qos_incompatible(self, io: CameraIO, relative_topic: str, ours: QoSProfile, event: Any) -> None:
        """Event: a subscription of one of our outputs requests QoS our publisher does not offer."""
        policy = policy_name(getattr(event, "last_policy_kind", "?"))
        topic = self.resolve_topic_name(relative_topic)
        text = self._output_incompatibility(topic, ours) or (
            f"a subscription on {topic} requests an incompatible {policy} "
            f"(this node offers {enum_name(ours.reliability)}, {enum_name(ours.durability)})")
        io.stats.qos_event(topic, text)
        self.get_logger().warning(f"incompatible QoS, that subscription receives nothing: {text}")

    def _refresh_qos(self, io: CameraIO, config: NodeConfig) -> None:
        """Keep a reported incompatibility while the incompatible peer exists (graph check)."""
        now = time.monotonic()
        for endpoint, (_, since) in io.stats.qos_entries().items():
            if now - since < QOS_EVENT_MIN_AGE_S:
                continue
            if endpoint in ("input", "camera_info"):
                text = self._input_incompatibility(io, data_qos(config), endpoint)
            else:
                ours = CLASSES_QOS if endpoint.endswith(("/classes", "/label_info")) else data_qos(config)
                text = self._output_incompatibility(endpoint, ours)
            if text:
                io.stats.qos_update(endpoint, text)
            else:
                io.stats.qos_resolved(endpoint)

    # -- the worker's batch ----------------------------------------------------------------

    def _process(self, frames: list[Frame]) -> None:
        """Convert, segment (one forward per input colour order), publish; runs in the worker."""
        taken_ns = time.monotonic_ns()
        segmenter, draw, config = self._segmenter, self._draw, self._config
        with self._io_lock:
            generation = self._generation if self._io_open else -1
            current = [frame for frame in frames if frame.generation == generation]
            # Under the lock: the publishers _plan asks for subscribers exist until it is released.
            plans = [] if config is None else [
                p for p in (self._plan(frame, draw, config) for frame in current) if p is not None]
        if len(current) < len(frames):
            self._discard(len(frames) - len(current))
        if segmenter is None or config is None or not plans:
            return
        pending = [p for p in (self._decode(replace(plan, taken_ns=taken_ns), config) for plan in plans)
                   if p is not None]
        for bgr in (False, True):
            group = [p for p in pending if p.bgr == bgr]
            if not group:
                continue
            flows = "finest" if any(p.want_flow for p in group) else False
            start_ns = time.monotonic_ns()
            results = segmenter.segment([p.image for p in group], bgr=bgr,
                                        return_confidence=any(p.want_confidence for p in group),
                                        return_flows=flows)
            end_ns = time.monotonic_ns()
            for item, result in zip(group, results):
                self._publish(item, result, draw, generation, (start_ns, end_ns, len(group)))

    def _discard(self, count: int) -> None:
        with self._io_lock:
            self._discarded_total += count
        if not self._leaving:
            self.get_logger().info(
                f"discarding the results of {count} frame(s) of an earlier activation",
                throttle_duration_sec=WARN_THROTTLE_S)

    def _too_large(self, io: CameraIO, width: int, height: int, limit: int) -> None:
        reason = f"{width}x{height} frame ({width * height} pixels) is larger than max_input_pixels {limit}"
        io.stats.too_large(reason)
        self.get_logger().warning(f"dropping a frame from {io.input_topic}: {reason}",
                                  throttle_duration_sec=WARN_THROTTLE_S)

    def _plan(self, frame: Frame, draw: DrawOptions, config: NodeConfig) -> _Pending | None:
        """Decide what this frame must produce (called under the IO lock)."""
        io = self._cameras.get(frame.camera)
        if io is None:
            return None
        msg = frame.msg
        limit = config.max_input_pixels
        if limit and isinstance(msg, Image) and int(msg.height) * int(msg.width) > limit:
            self._too_large(io, int(msg.width), int(msg.height), limit)
            return None
        want_labels = io.labels.get_subscription_count() > 0
        want_color = draw.publish_color and io.color.get_subscription_count() > 0
        want_confidence = draw.publish_confidence and io.confidence.get_subscription_count() > 0
        want_flow = io.flow is not None and io.flow.get_subscription_count() > 0
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
            self.get_logger().warning(f"dropping a frame from {io.input_topic}: {exc}",
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return None
        limit = config.max_input_pixels
        if limit and image.shape[0] * image.shape[1] > limit:  # compressed: known once decoded
            self._too_large(io, image.shape[1], image.shape[0], limit)
            return None
        return replace(item, image=image, bgr=bgr, decoded_ns=time.monotonic_ns())

    def _camera_info_for(self, item: _Pending, geometry: Any, header: Any) -> tuple[CameraInfo | None, bool]:
        """The segmentation/camera_info of this frame's outputs, and whether it matched the stamp."""
        io = item.io
        info, matched = io.camera_infos.lookup(_stamp_ns(header))
        if info is None:
            return None, False
        if not io.camera_info_warned and outputs.info_image_size(info) != tuple(geometry.input_size):
            # Passed on (scaled) as received: the camera's calibration is not ours to correct.
            io.camera_info_warned = True
            h, w = outputs.info_image_size(info)
            self.get_logger().warning(
                f"{io.camera_info_topic} describes a {w}x{h} image (after binning and ROI), but the frames on "
                f"{io.input_topic} are {geometry.input_size[1]}x{geometry.input_size[0]}: the published "
                "camera_info is scaled from it all the same")
        return outputs.output_camera_info(info, geometry, header), matched

    def _publish(self, item: _Pending, result: Any, draw: DrawOptions, generation: int,
                 inference: tuple[int, int, int]) -> None:
        header = item.frame.msg.header
        geometry = result.geometry
        overlay_on = None
        if item.want_color and draw.color_overlay:
            overlay_on = outputs.frame_in_output(item.image[..., ::-1] if item.bgr else item.image, geometry)
        images = render_outputs(
            result.labels, self._palette if item.want_color else None, with_labels=item.want_labels,
            masks={str(class_id): class_id for class_id, _ in item.masks},
            confidence=result.confidence if item.want_confidence else None,
            overlay_on=overlay_on, overlay_alpha=draw.overlay_alpha)
        if item.want_flow and result.flows:
            images["flow"] = outputs.flow_image(result.flows[-1], geometry)
        publishers = {"labels": item.io.labels, "color": item.io.color, "confidence": item.io.confidence,
                      "flow": item.io.flow, **{f"mask/{class_id}": pub for class_id, pub in item.masks}}
        messages = [(publishers[name], numpy_to_image(image, "mono8" if image.ndim == 2 else "rgb8", header=header))
                    for name, image in images.items()]
        io = item.io
        info_msg, info_matched, want_timing = None, False, False
        with self._io_lock:
            # The publishers of an earlier activation are destroyed: only look at them while current.
            current = self._io_open and self._generation == generation
            if current:
                if io.camera_info.get_subscription_count() > 0:
                    info_msg, info_matched = self._camera_info_for(item, geometry, header)
                    if info_msg is not None:
                        messages.append((io.camera_info, info_msg))
                for publisher, msg in messages:
                    publisher.publish(msg)
                now_ns = time.monotonic_ns()
                now_ros_ns = self.get_clock().now().nanoseconds
                want_timing = draw.publish_timing and io.timing.get_subscription_count() > 0
        if not current:
            # Deactivated (or re-activated) while this frame was in the network.
            self._discard(1)
            return
        if info_msg is not None:
            io.stats.camera_info_published(info_matched)
        elif io.camera_info_subscription is not None and io.camera_infos.lookup(0)[0] is None:
            io.stats.camera_info_missing()
        receive_ms = (now_ns - item.frame.received_ns) / 1e6
        stamp_ms = (now_ros_ns - _stamp_ns(header)) / 1e6
        io.stats.published(receive_ms, stamp_ms)
        if want_timing:
            start_ns, end_ns, batch = inference
            timing = outputs.FrameTiming(
                received_ns=item.frame.received_ns, taken_ns=item.taken_ns, decoded_ns=item.decoded_ns,
                inference_start_ns=start_ns, inference_end_ns=end_ns, published_ns=now_ns,
                published_ros_ns=now_ros_ns, batch_size=batch)
            msg = outputs.timing_array(header, f"{self.get_fully_qualified_name()}: {io.input_topic}",
                                       self._device_text, timing)
            with self._io_lock:
                if self._io_open and self._generation == generation:
                    io.timing.publish(msg)

    # -- diagnostics -----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        hardware_id = self._device_text
        name = self.get_fully_qualified_name()
        config = self._config
        details: dict[str, object] = {"device": hardware_id}
        if config is not None:
            details.update(checkpoint=str(config.checkpoint),
                           model=getattr(self._segmenter, "model_name", ""),
                           backend=self._backend_text,
                           cameras=", ".join(config.cameras) or "<namespace>")
        busy = self.worker_busy_for()
        details["inference_busy_s"] = 0.0 if busy is None else float(busy)
        details["results_discarded_total"] = self._discarded_total
        # Counted by name over all live threads, so a worker that outlived its activation would
        # show up here too (by design there is never more than one).
        details["inference_threads"] = sum(1 for t in threading.enumerate() if t.name == WORKER_THREAD_NAME)
        details.update(diagnostics.process_memory_mb())
        details["fastdds_profile"] = self.transport_profile
        self._check_duplicates()
        details["nodes_with_this_name"] = self._same_name_count
        warnings = [self._duplicate_text(self._same_name_count)] if self._same_name_count > 1 else []
        statuses = [diagnostics.node_status(name, hardware_id, self._state, self._last_error, details, warnings)]
        now = time.monotonic()
        for io in list(self._cameras.values()):
            try:
                if config is not None:
                    self._refresh_qos(io, config)
                subscribers = sum(p.get_subscription_count() for p in io.image_outputs())
            except Exception:  # entities of a deactivation happening right now
                subscribers = -1
            publishers = self._input_publishers(io)
            io.stats.publishers_seen(publishers, now)
            statuses.append(diagnostics.camera_status(
                f"{name}: {io.input_topic}", hardware_id, io.stats.take_window(), io.stats,
                active=self._state == "active",
                input_timeout_warn=config.input_timeout_warn if config else 0.0,
                input_timeout_error=config.input_timeout_error if config else 0.0,
                output_subscribers=subscribers, now=now, input_publishers=publishers,
                input_loss_warn=config.input_loss_warn if config else 1.0,
                message_lost_event=self._message_lost_event))
        self._diag_pub.publish(diagnostics.diagnostic_array(self.get_clock().now().to_msg(), statuses))

    # -- start-up --------------------------------------------------------------------------

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    @property
    def exit_on_shutdown(self) -> bool:
        if "exit_on_shutdown" in self._param_errors:
            return bool(spec("exit_on_shutdown").default)
        return bool(self.get_parameter("exit_on_shutdown").value)

    def autostart_transitions(self, stop: Any = None) -> None:
        """configure + activate, stopping quietly (already logged) at the first failure or when
        ``stop`` (anything with ``is_set()``) was set meanwhile (a shutdown requested during the
        model load). main() runs this in a thread of its own, so services answer meanwhile."""
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().info(
                    "autostart: staying unconfigured; fix the cause, then trigger configure "
                    "(lifecycle manager or <node>/change_state)")
                return
            if stop is None or not stop.is_set():
                self.trigger_activate()
        except Exception as exc:  # a thread must not die with a traceback
            if stop is not None and stop.is_set():
                return  # the process is leaving under us
            self.get_logger().error(f"autostart failed: {type(exc).__name__}: {exc}")
