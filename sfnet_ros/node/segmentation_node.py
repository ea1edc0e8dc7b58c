"""``sfnet_node``: the SFNet semantic segmentation node (a ROS 2 managed / lifecycle node).

Lifecycle:
  configure   read and validate the parameters, load the checkpoint, warm the network up
  activate    create the image subscription(s) and the output publishers, start the worker
  deactivate  stop the worker (after the batch in flight), destroy subscriptions and publishers
  cleanup     release the network (and the GPU memory)
With ``autostart`` (default) the node walks itself to active at start-up. A failed configure
(missing checkpoint, invalid parameter) logs one line saying why and leaves the node
unconfigured and alive, so a lifecycle manager or ``change_state`` can retry after the cause is
fixed (configure-time parameters may be changed while unconfigured).

Topics, relative to the node's namespace and ``<camera>/`` for each entry of ``cameras``:
  in   image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage)
  out  segmentation/labels, segmentation/color, segmentation/mask/<class>,
       segmentation/confidence (sensor_msgs/Image), segmentation/classes (std_msgs/String JSON,
       transient local); /diagnostics (diagnostic_msgs/DiagnosticArray)

Threads: the executor thread runs subscription callbacks (which only drop the message into the
camera's one-slot mailbox), services and the diagnostics timer; one worker thread converts,
segments (one batch for all waiting cameras) and publishes. See the README, section "The ROS 2 node".
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from sfnet_core.errors import ConfigError, SFNetError
from sfnet_core.viz import render_outputs
from sfnet_ros.node import diagnostics
from sfnet_ros.conversions import ImageConversionError, compressed_to_rgb, image_to_numpy, image_to_rgb, numpy_to_image
from sfnet_ros.node.params import (
    APPLIED_AT_CONFIGURE,
    APPLIED_AT_RUNTIME,
    PARAMETERS,
    NodeConfig,
    camera_prefix,
    config_from_values,
    parameter_descriptor,
    spec,
    topic_token,
)
from sfnet_ros.node.worker import Frame, InferenceWorker, LatestFrameMailbox

__all__ = ["SegmentationNode", "main", "NODE_NAME"]

NODE_NAME = "sfnet_node"

# How long deactivate / shutdown wait for the batch in flight before giving up on it. A forward
# pass on a loaded CPU can take seconds; on a GPU it is milliseconds.
WORKER_JOIN_TIMEOUT_S = 10.0
# Bad frames can arrive at camera rate; one warning per this many seconds is enough to notice.
WARN_THROTTLE_S = 5.0


@dataclass(frozen=True)
class DrawOptions:
    """The runtime-settable parameters: read by the worker for every batch."""

    publish_color: bool
    color_overlay: bool
    overlay_alpha: float
    publish_confidence: bool


@dataclass
class CameraIO:
    """Subscription, publishers and counters of one camera."""

    name: str                          # "" = the node's own namespace
    input_topic: str                   # as subscribed (relative, or resolved for compressed)
    stats: diagnostics.CameraStats
    subscription: Any = None
    labels: Any = None
    color: Any = None
    confidence: Any = None
    classes: Any = None
    masks: dict[str, tuple[int, Any]] = field(default_factory=dict)  # token -> (class id, publisher)

    def publishers(self) -> list[Any]:
        return [p for p in (self.labels, self.color, self.confidence, self.classes) if p is not None] + [
            pub for _, pub in self.masks.values()]


@dataclass
class _Pending:
    """A decoded frame on its way through the network."""

    frame: Frame
    io: CameraIO
    image: np.ndarray        # (H, W, 3) uint8, RGB or BGR
    bgr: bool
    want_color: bool
    want_confidence: bool
    want_labels: bool
    masks: list[tuple[int, Any]]


def _data_qos(config: NodeConfig) -> QoSProfile:
    reliability = ReliabilityPolicy.RELIABLE if config.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.qos_depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


# Late joiners (rviz, a recorder started later) must still learn what the label ids mean.
CLASSES_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


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
        self._cameras: dict[str, CameraIO] = {}
        self._mailbox: LatestFrameMailbox | None = None
        self._worker: InferenceWorker | None = None
        # Held by the worker while publishing and by deactivate while it tears publishers down,
        # so a batch that outlived the join timeout never publishes on a destroyed publisher.
        self._io_lock = threading.Lock()
        self._io_open = False

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

    def _parameter_values(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in PARAMETERS}

    def _read_draw_options(self) -> DrawOptions:
        return DrawOptions(
            publish_color=bool(self.get_parameter("publish_color").value),
            color_overlay=bool(self.get_parameter("color_overlay").value),
            overlay_alpha=float(self.get_parameter("overlay_alpha").value),
            publish_confidence=bool(self.get_parameter("publish_confidence").value),
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
        try:
            if self._param_errors:
                raise ConfigError(next(iter(self._param_errors.values())))
            config = config_from_values(self._parameter_values())
            segmenter = self._load_segmenter(config)
            try:
                mask_ids = {name: segmenter.classes.index(name) for name in config.mask_classes}
            except ConfigError as exc:
                raise ConfigError(f"parameter 'mask_classes': {exc}") from None
        except (SFNetError, ValueError, OSError, RuntimeError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - an unforeseen cause must still fail cleanly
            self.get_logger().debug(traceback.format_exc())
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        self._config, self._segmenter, self._mask_ids = config, segmenter, mask_ids
        self._palette = segmenter.classes.palette()
        self._device_text = f"{segmenter.device} {segmenter.precision}"
        if config.diagnostics_period != self._diag_period:
            self.destroy_timer(self._diag_timer)
            self._diag_period = config.diagnostics_period
            self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)
        self._last_error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured in {time.monotonic() - started:.1f} s: {getattr(segmenter, 'model_name', 'model')} "
            f"from {config.checkpoint} on {segmenter.device} ({segmenter.precision}), "
            f"input size {list(config.input_size) if config.input_size else 'native'}, "
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
            compile=config.compile, warmup=True)
        if segmenter.device.type == "cpu" and config.precision in ("auto", "fp16"):
            self.get_logger().warning("running on the CPU in fp32: expect a low frame rate")
        return segmenter

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._open_io()
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid remapped topic name
            self._close_io()
            self._last_error = f"activate failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._last_error = ""
        self._state = "active"
        self.get_logger().info(
            "active: " + "; ".join(f"{io.input_topic} -> {io.labels.topic_name}" for io in self._cameras.values()))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_io()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop the worker, drop the ROS entities of the active state and the model (idempotent)."""
        self._close_io()
        self._release_model()

    def _release_model(self) -> None:
        segmenter, self._segmenter, self._config = self._segmenter, None, None
        self._device_text = "none"
        if segmenter is not None and getattr(segmenter.device, "type", "cpu") == "cuda":
            import torch

            del segmenter
            torch.cuda.empty_cache()

    # -- subscriptions, publishers, worker -------------------------------------------------

    def _open_io(self) -> None:
        config = self._config
        assert config is not None and self._segmenter is not None
        qos = _data_qos(config)
        classes_json = self._classes_json()
        self._mailbox = LatestFrameMailbox(config.camera_names)
        for camera in config.camera_names:
            prefix = camera_prefix(camera)
            if config.transport == "compressed":
                # image_transport names the compressed topic after the *resolved* base topic, so
                # `-r image:=/camera/image_raw` must lead to /camera/image_raw/compressed.
                topic, msg_type = self.resolve_topic_name(f"{prefix}image") + "/compressed", CompressedImage
            else:
                topic, msg_type = f"{prefix}image", Image
            io = CameraIO(name=camera, input_topic=topic, stats=diagnostics.CameraStats())
            out = f"{prefix}segmentation/"
            io.labels = self.create_publisher(Image, out + "labels", qos)
            io.color = self.create_publisher(Image, out + "color", qos)
            io.confidence = self.create_publisher(Image, out + "confidence", qos)
            io.classes = self.create_publisher(String, out + "classes", CLASSES_QOS)
            for name, class_id in self._mask_ids.items():
                token = topic_token(name)
                io.masks[token] = (class_id, self.create_publisher(Image, f"{out}mask/{token}", qos))
            io.classes.publish(String(data=classes_json))
            self._cameras[camera] = io
            io.subscription = self.create_subscription(msg_type, topic, partial(self._on_image, camera), qos)
            io.input_topic = io.subscription.topic_name  # resolved: what remaps made of it
        with self._io_lock:
            self._io_open = True
        self._worker = InferenceWorker(self._mailbox, self._process, self._on_worker_error)
        self._worker.start()

    def _close_io(self) -> None:
        for io in self._cameras.values():
            if io.subscription is not None:
                self.destroy_subscription(io.subscription)
                io.subscription = None
        if self._worker is not None:
            for frame in self._mailbox.close() if self._mailbox is not None else []:
                if frame.camera in self._cameras:
                    self._cameras[frame.camera].stats.dropped_stale()
            if not self._worker.stop(WORKER_JOIN_TIMEOUT_S):
                self.get_logger().warning(
                    f"inference still running after {WORKER_JOIN_TIMEOUT_S:.0f} s; its results are discarded")
            self._worker = None
        self._mailbox = None
        with self._io_lock:
            self._io_open = False
            for io in self._cameras.values():
                for publisher in io.publishers():
                    self.destroy_publisher(publisher)
            self._cameras = {}

    def _classes_json(self) -> str:
        table = self._segmenter.classes
        return json.dumps({
            "classes": [{"id": i, "name": name, "color": list(color)}
                        for i, (name, color) in enumerate(zip(table.names, table.colors))],
            "ignore_index": table.ignore_index,
            "mask_topics": {name: f"segmentation/mask/{topic_token(name)}" for name in self._mask_ids},
        })

    def _on_image(self, camera: str, msg: Any) -> None:
        """Subscription callback: no conversion, no waiting, just the newest-frame slot."""
        mailbox = self._mailbox
        if mailbox is None:
            return
        replaced = mailbox.put(camera, msg)
        io = self._cameras.get(camera)
        if io is not None:
            io.stats.received(replaced_stale=replaced is not None)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=WARN_THROTTLE_S)
        self.get_logger().debug(traceback.format_exc())

    # -- the worker's batch ----------------------------------------------------------------

    def _process(self, frames: list[Frame]) -> None:
        """Convert, segment (one forward per input colour order), publish; runs in the worker."""
        segmenter, draw = self._segmenter, self._draw
        if segmenter is None:
            return
        pending = [p for p in (self._prepare(frame, draw) for frame in frames) if p is not None]
        for bgr in (False, True):
            group = [p for p in pending if p.bgr == bgr]
            if not group:
                continue
            results = segmenter.segment([p.image for p in group], bgr=bgr,
                                        return_confidence=any(p.want_confidence for p in group))
            for item, result in zip(group, results):
                self._publish(item, result, segmenter, draw)

    def _prepare(self, frame: Frame, draw: DrawOptions) -> _Pending | None:
        """Decide what this frame must produce; decode it only if someone listens."""
        io = self._cameras.get(frame.camera)
        if io is None:
            return None
        want_labels = io.labels.get_subscription_count() > 0
        want_color = draw.publish_color and io.color.get_subscription_count() > 0
        want_confidence = draw.publish_confidence and io.confidence.get_subscription_count() > 0
        masks = [(cid, pub) for cid, pub in io.masks.values() if pub.get_subscription_count() > 0]
        if not (want_labels or want_color or want_confidence or masks):
            io.stats.skipped()
            return None
        msg = frame.msg
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
        return _Pending(frame, io, image, bgr, want_color, want_confidence, want_labels, masks)

    def _publish(self, item: _Pending, result: Any, segmenter: Any, draw: DrawOptions) -> None:
        header = item.frame.msg.header
        overlay_on = None
        if item.want_color and draw.color_overlay:
            overlay_on = item.image[..., ::-1] if item.bgr else item.image
        images = render_outputs(
            result.labels, self._palette if item.want_color else None, with_labels=item.want_labels,
            masks={str(class_id): class_id for class_id, _ in item.masks},
            confidence=result.confidence if item.want_confidence else None,
            overlay_on=overlay_on, overlay_alpha=draw.overlay_alpha)
        publishers = {"labels": item.io.labels, "color": item.io.color, "confidence": item.io.confidence,
                      **{f"mask/{class_id}": pub for class_id, pub in item.masks}}
        outputs = [(publishers[name], numpy_to_image(image, "rgb8" if name == "color" else "mono8", header=header))
                   for name, image in images.items()]
        with self._io_lock:
            if not self._io_open:
                return
            for publisher, msg in outputs:
                publisher.publish(msg)
            now_ns = time.monotonic_ns()
        receive_ms = (now_ns - item.frame.received_ns) / 1e6
        stamp_ms = (self.get_clock().now().nanoseconds - _stamp_ns(header)) / 1e6
        item.io.stats.published(receive_ms, stamp_ms)

    # -- diagnostics -----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        hardware_id = self._device_text
        name = self.get_fully_qualified_name()
        details: dict[str, object] = {"device": hardware_id}
        if self._config is not None:
            details.update(checkpoint=str(self._config.checkpoint),
                           model=getattr(self._segmenter, "model_name", ""),
                           cameras=", ".join(self._config.cameras) or "<namespace>")
        statuses = [diagnostics.node_status(name, hardware_id, self._state, self._last_error, details)]
        for io in list(self._cameras.values()):
            statuses.append(diagnostics.camera_status(
                f"{name}: {io.input_topic}", hardware_id, io.stats.take_window(), io.stats,
                active=self._state == "active"))
        self._diag_pub.publish(diagnostics.diagnostic_array(self.get_clock().now().to_msg(), statuses))

    # -- start-up --------------------------------------------------------------------------

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    def autostart_transitions(self, stop: threading.Event | None = None) -> None:
        """configure + activate, stopping quietly (already logged) at the first failure or when
        ``stop`` was set meanwhile (a shutdown requested during the model load)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().info(
                "autostart: staying unconfigured; fix the cause, then trigger configure "
                "(lifecycle manager or <node>/change_state)")
            return
        if stop is None or not stop.is_set():
            self.trigger_activate()


def _install_core_logging() -> None:
    # sfnet_core reports (device choice, precision fallbacks) through `logging`; show them next to
    # the ROS log lines instead of losing them.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[sfnet_core] [%(levelname)s] %(message)s"))
    core = logging.getLogger("sfnet_core")
    core.addHandler(handler)
    core.setLevel(logging.INFO)
    core.propagate = False


def _stop_on_signals() -> threading.Event:
    """Ctrl-C / SIGTERM set the returned event instead of tearing the context down mid-work.

    rclpy's own handlers shut the context down at once: a signal during the (seconds long)
    checkpoint load then makes every later call fail noisily. Here the signal only asks the
    main loop to stop; it does so at the next check (after configure, or within SPIN_STEP_S).
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


# The main loop checks for a stop request this often (Python signal handlers cannot interrupt
# the executor's wait, so it must come back regularly).
SPIN_STEP_S = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM; returns the exit code (0 on a normal stop)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) and "--ros-args" not in args:
        print(__doc__)
        print("usage: sfnet_node [--ros-args --params-file config/sfnet.yaml -p checkpoint:=model.pt "
              "-r image:=/camera/image_raw -r __ns:=/perception]")
        return 0
    _install_core_logging()
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=["sfnet_node", *args], signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # an rclpy without SignalHandlerOptions: ours replace its handlers below
        rclpy.init(args=["sfnet_node", *args])
    stop = _stop_on_signals()
    node: SegmentationNode | None = None
    try:
        node = SegmentationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if node.autostart and not stop.is_set():
            node.autostart_transitions(stop)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_STEP_S)
        if stop.is_set():
            node.get_logger().info("stop requested (SIGINT/SIGTERM): shutting down")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # stopped from outside: the normal way to end
    finally:
        if node is not None:
            node.release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
