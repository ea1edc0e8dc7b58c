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
cameras) and publishes (``frame_pipeline.py``). See docs/node.md.
"""
from __future__ import annotations

import inspect
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

try:
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, UnsupportedEventTypeError
except ImportError:  # Humble: the same classes, in their older module
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks, UnsupportedEventTypeError

try:  # on every ROS install with the vision packages; optional here (not on PyPI)
    from vision_msgs.msg import LabelInfo, VisionClass  # not on PyPI: absent here (mypy.ini)
except ImportError:
    LabelInfo = VisionClass = None

from sfnet_core.errors import ConfigError, SFNetError
from sfnet_ros.node import diagnostics, outputs
from sfnet_ros.node.camera_io import CameraIO, OutputGate
from sfnet_ros.node.frame_pipeline import WARN_THROTTLE_S, DrawOptions, FramePipeline
from sfnet_ros.node.model_setup import LoadedModel, free_cuda_cache, input_size_text, load_model
from sfnet_ros.node.parameter_declaration import declare_parameters, parameter_values, refusal, runtime_changes
from sfnet_ros.node.params import (
    camera_prefix,
    config_from_values,
    spec,
    topic_token,
)
from sfnet_ros.node.qos import CLASSES_QOS, data_qos
from sfnet_ros.node.qos_report import QosReport
from sfnet_ros.node.status_report import WORKER_THREAD_NAME, NodeFacts, StatusReport
from sfnet_ros.node.worker import Frame, InferenceWorker, LatestFrameMailbox

__all__ = ["SegmentationNode", "NODE_NAME"]

# The DDS message-lost event (rcl RCL_SUBSCRIPTION_MESSAGE_LOST): SubscriptionEventCallbacks takes
# ``message_lost`` from Galactic on (Humble's rclpy 3.3 included); an rclpy without it (Foxy) or an
# RMW that does not implement the event (UnsupportedEventTypeError) leaves the stamp gaps only.
MESSAGE_LOST_IN_RCLPY = "message_lost" in inspect.signature(SubscriptionEventCallbacks.__init__).parameters

NODE_NAME = "sfnet_node"

# After a lifecycle shutdown, the process exits this much later: the change_state response has
# been handed to DDS by then, and is on the wire before the participant goes away.
SHUTDOWN_EXIT_DELAY_S = 0.3


class SegmentationNode(LifecycleNode):
    """Managed node segmenting one or more camera streams with one SFNet model."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_errors = declare_parameters(self)  # overrides rejected at declaration time
        self._draw = DrawOptions.from_values(parameter_values(self))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._state = "unconfigured"
        self._last_error = ""
        self._model: LoadedModel | None = None  # what configure loaded; None while unconfigured
        # One mailbox and one inference thread for the node's whole life (see worker.py): a new
        # activation never starts a second forward pass next to one that is still running.
        self._mailbox = LatestFrameMailbox()
        self._worker: InferenceWorker | None = None
        # The current activation's cameras and generation (camera_io.py): activate/deactivate
        # switch it, the pipeline publishes only on a live generation's publishers.
        self._gate = OutputGate()
        self._pipeline = FramePipeline(self._gate, self.get_logger(), lambda: self.get_clock().now().nanoseconds,
                                       self.get_fully_qualified_name())
        self._qos_report = QosReport(self)
        # Called (from the executor thread) when the process should end after a lifecycle
        # shutdown; main() sets it. None: nothing happens (the node stays finalized).
        self.on_exit_request: Callable[[], None] | None = None
        self._exit_timer: Timer | None = None

        # The large-frame Fast DDS profile this process runs with (main.py sets it from
        # sfnet_ros.transport_profile before rclpy.init); reported on /diagnostics.
        self.transport_profile = "unknown"
        # "yes", or why frames lost by DDS cannot be counted (set when the first input subscribes).
        self._message_lost_event = "yes" if MESSAGE_LOST_IN_RCLPY else (
            "no: this rclpy's SubscriptionEventCallbacks has no message_lost (before Galactic)")
        self._status = StatusReport(self, self._gate, self._qos_report)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_period = self._initial_diagnostics_period()
        self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)

    # -- parameters ------------------------------------------------------------------------

    def _initial_diagnostics_period(self) -> float:
        value = self.get_parameter("diagnostics_period").value
        return float(value) if "diagnostics_period" not in self._param_errors else spec("diagnostics_period").default

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept configure-time parameters only while unconfigured; runtime ones any time."""
        reason = refusal(parameters, self._state)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        for param in parameters:
            self._param_errors.pop(param.name, None)
        runtime = runtime_changes(parameters)
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
            model = load_model(config_from_values(parameter_values(self)), self.get_logger())
        except (SFNetError, ValueError, OSError, RuntimeError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:  # an unforeseen cause must still fail cleanly
            self.get_logger().debug(traceback.format_exc())
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        self._model = model
        config, segmenter = model.config, model.segmenter
        if config.diagnostics_period != self._diag_period:
            self.destroy_timer(self._diag_timer)
            self._diag_period = config.diagnostics_period
            self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics)
        self._last_error = ""
        self._state = "inactive"
        self.get_logger().info(
            f"configured in {time.monotonic() - started:.1f} s: {segmenter.model_name or 'model'} "
            f"from {config.checkpoint} on {segmenter.device} ({segmenter.precision}), backend "
            f"{model.backend_text}, input size {input_size_text(model)}, "
            f"resize {config.resize}, output resolution {config.output_resolution}, "
            f"cameras {list(config.cameras) or ['<namespace>']}")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self._last_error = f"configure failed: {message}"
        self.get_logger().error(self._last_error)
        self._state = "unconfigured"
        return TransitionCallbackReturn.FAILURE

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
            "active: " + "; ".join(
                f"{io.input_topic} -> {self.resolve_topic_name(camera_prefix(io.name) + 'segmentation/labels')}"
                for io in self._gate.cameras.values()))
        # What discovery knows now; the diagnostics timer checks again every period (a duplicate
        # discovered later, or started later, is reported then).
        self._status.check_duplicates()
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
        model, self._model = self._model, None
        on_cuda = model is not None and model.segmenter.device.type == "cuda"
        del model  # the last reference, unless a batch in flight holds one (freed when it ends)
        if on_cuda:
            free_cuda_cache()

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
        self._pipeline.quiet = True

    def destroy_node(self) -> None:
        self._mailbox.close()
        super().destroy_node()

    # -- subscriptions, publishers, worker -------------------------------------------------

    def _open_io(self) -> None:
        model = self._model
        assert model is not None, "activate follows a successful configure"
        config = model.config
        qos = data_qos(config)
        classes_json = outputs.classes_json(model.segmenter.classes, model.mask_ids)
        self._mailbox.reset(config.camera_names, self._gate.begin())
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
                for name, class_id in model.mask_ids.items():
                    token = topic_token(name)
                    io.masks[token] = (class_id, self._output(io, Image, f"{out}mask/{token}", qos))
                io.classes = classes = self._output(io, String, out + "classes", CLASSES_QOS)
                classes.publish(String(data=classes_json))
                if LabelInfo is not None:
                    io.label_info = label_info = self._output(io, LabelInfo, out + "label_info", CLASSES_QOS)
                    label_info.publish(outputs.fill_label_info(
                        LabelInfo, VisionClass, model.segmenter.classes.names,
                        Header(stamp=self.get_clock().now().to_msg())))
            self._gate.open(cameras)
            for io in cameras.values():
                # camera_info first: the info of a camera's first frame may then already be here.
                io.camera_info_subscription = info_subscription = self.create_subscription(
                    CameraInfo, io.camera_info_topic, partial(self._on_camera_info, io), qos,
                    event_callbacks=SubscriptionEventCallbacks(incompatible_qos=partial(
                        self._qos_report.on_input_incompatible, io, qos, "camera_info")))
                io.camera_info_topic = info_subscription.topic_name
                msg_type = CompressedImage if config.transport == "compressed" else Image
                io.subscription = subscription = self._input_subscription(io, msg_type, qos)
                io.input_topic = subscription.topic_name  # resolved: what remaps made of it
        except Exception:
            # _close_io (called by on_activate) destroys what the gate holds.
            with self._gate.lock:
                self._gate.cameras = cameras
            raise
        if self._worker is None or not self._worker.alive():
            self._worker = InferenceWorker(self._mailbox, self._process, self._on_worker_error,
                                           name=WORKER_THREAD_NAME)
            self._worker.start()

    def _process(self, frames: list[Frame]) -> None:
        """The worker's batch: the pipeline, with the model and draw options of this moment."""
        self._pipeline.process(frames, self._model, self._draw)

    def _input_subscription(self, io: CameraIO, msg_type: type, qos: QoSProfile) -> Subscription:
        """The camera's image subscription, with the incompatible-QoS and (where the rclpy and the
        RMW have it) message-lost events."""
        incompatible = partial(self._qos_report.on_input_incompatible, io, qos, "input")
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

    def _output(self, io: CameraIO, msg_type: type, topic: str, qos: QoSProfile) -> Publisher:
        """A publisher whose incompatible-QoS events land in ``io``'s diagnostics."""
        return self.create_publisher(
            msg_type, topic, qos,
            event_callbacks=PublisherEventCallbacks(
                incompatible_qos=partial(self._qos_report.on_output_incompatible, io, topic, qos)))

    def _close_io(self) -> None:
        # First the switch, under the lock: from here on the worker neither looks at nor
        # publishes on these publishers (it may be in the middle of a forward pass; its results
        # will carry an old generation). Then the entities go, without waiting for anybody.
        generation, cameras = self._gate.close()
        for frame in self._mailbox.reset((), generation):
            if frame.camera in cameras:
                cameras[frame.camera].stats.dropped_stale()
        for io in cameras.values():
            for subscription in (io.subscription, io.camera_info_subscription):
                if subscription is not None:
                    self.destroy_subscription(subscription)
            io.subscription = io.camera_info_subscription = None
            for publisher in io.publishers():
                if isinstance(publisher, Publisher):  # always, in the node (the type is wider for tests)
                    self.destroy_publisher(publisher)

    def _on_image(self, io: CameraIO, msg: Image | CompressedImage) -> None:
        """Subscription callback: no conversion, no waiting, just the newest-frame slot."""
        try:
            replaced = self._mailbox.put(io.name, msg)
        except KeyError:
            return  # a late callback of an earlier activation's subscription
        try:
            stamp_ns = outputs.stamp_ns(msg.header)
        except (AttributeError, TypeError, ValueError):
            stamp_ns = 0
        io.stats.received(replaced_stale=replaced is not None, stamp_ns=stamp_ns)

    def _on_message_lost(self, io: CameraIO, event: Any) -> None:
        """Event: DDS lost messages between a matched publisher and this input."""
        diagnostics.count_message_lost(io.stats, event, io.input_topic, self.get_logger(), WARN_THROTTLE_S)

    def _on_camera_info(self, io: CameraIO, msg: CameraInfo) -> None:
        """Subscription callback: keep it for the frames of the same stamp (or later ones)."""
        io.camera_infos.put(msg)
        io.stats.camera_info_received()

    def _on_worker_error(self, exc: BaseException) -> None:
        if self._pipeline.quiet:
            return
        self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=WARN_THROTTLE_S)
        self.get_logger().debug(traceback.format_exc())

    # -- diagnostics -----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(self._status.array(NodeFacts(
            self._state, self._last_error, self._model, self.worker_busy_for(), self._pipeline.discarded_total,
            self.transport_profile, self._message_lost_event)))

    # -- start-up --------------------------------------------------------------------------

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    @property
    def exit_on_shutdown(self) -> bool:
        if "exit_on_shutdown" in self._param_errors:
            return bool(spec("exit_on_shutdown").default)
        return bool(self.get_parameter("exit_on_shutdown").value)
