"""One camera's endpoints and counters, and the gate saying which activation's endpoints are live.

``CameraIO`` is filled by the node's ``activate`` (``segmentation_node.py``: subscriptions,
publishers) and read by the inference thread (``frame_pipeline.py``: who listens, where to
publish), the QoS report (``qos_report.py``) and the diagnostics timer. Publishers are typed by
what the pipeline calls on them (``OutputPublisher``), so the pipeline runs on plain fakes in tests.

``OutputGate`` is the activation switch (see worker.py, "Activations"): activate and deactivate
flip it under its lock, and the inference thread looks at or publishes on a camera's publishers
only under that lock and only while the frame's generation is the current one. A batch that was
in the network while the node was deactivated carries an old generation, and its results go
nowhere (the publishers it would use are destroyed by then).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sfnet_ros.node import diagnostics, outputs

if TYPE_CHECKING:  # rclpy's entity types, for the fields the node fills; nothing here needs them at run time
    from rclpy.subscription import Subscription

__all__ = ["CameraIO", "OutputGate", "OutputPublisher"]


class OutputPublisher(Protocol):
    """What the node asks of a publisher (rclpy's ``Publisher`` has both)."""

    def publish(self, msg: Any) -> None: ...

    def get_subscription_count(self) -> int: ...


@dataclass
class CameraIO:
    """Subscriptions, publishers and counters of one camera (of one activation).

    The publishers are None only while ``activate`` builds the camera; once the gate is open the
    image, camera_info and timing outputs are all set (``flow`` only with ``publish_flow``,
    ``label_info`` only where vision_msgs is installed).
    """

    name: str                          # "" = the node's own namespace
    input_topic: str                   # as subscribed (relative, or resolved for compressed)
    stats: diagnostics.CameraStats
    camera_info_topic: str = ""        # as subscribed (resolved once subscribed)
    camera_infos: outputs.CameraInfoCache = field(default_factory=outputs.CameraInfoCache)
    subscription: Subscription | None = None
    camera_info_subscription: Subscription | None = None
    labels: OutputPublisher | None = None
    color: OutputPublisher | None = None
    confidence: OutputPublisher | None = None
    flow: OutputPublisher | None = None         # only with publish_flow
    camera_info: OutputPublisher | None = None
    timing: OutputPublisher | None = None
    classes: OutputPublisher | None = None
    label_info: OutputPublisher | None = None   # only when vision_msgs is installed
    masks: dict[str, tuple[int, OutputPublisher]] = field(default_factory=dict)  # token -> (class id, publisher)
    camera_info_warned: bool = False   # a camera_info / frame size mismatch was logged

    def image_outputs(self) -> list[OutputPublisher]:
        return [p for p in (self.labels, self.color, self.confidence, self.flow) if p is not None] + [
            pub for _, pub in self.masks.values()]

    def publishers(self) -> list[OutputPublisher]:
        return self.image_outputs() + [p for p in (self.camera_info, self.timing, self.classes, self.label_info)
                                       if p is not None]


class OutputGate:
    """The current activation: its cameras, its generation, and whether its publishers are live.

    ``lock`` is held by the inference thread while it looks at or publishes on the publishers,
    and by activate/deactivate while they switch; read ``generation``/``is_open``/``cameras``
    under it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.is_open = False
        self.generation = 0
        self.cameras: dict[str, CameraIO] = {}

    def begin(self) -> int:
        """Start a new activation (closed, no cameras yet); returns its generation."""
        with self.lock:
            self.generation += 1
            self.is_open = False
            self.cameras = {}
            return self.generation

    def open(self, cameras: dict[str, CameraIO]) -> None:
        """The activation's endpoints exist: from now on the inference thread may use them."""
        with self.lock:
            self.cameras = cameras
            self.is_open = True

    def close(self) -> tuple[int, dict[str, CameraIO]]:
        """End the activation: a new generation, no cameras; returns both (the cameras are the
        caller's to destroy, without waiting for anybody)."""
        with self.lock:
            self.is_open = False
            self.generation += 1
            cameras, self.cameras = self.cameras, {}
            return self.generation, cameras

    def live_generation(self) -> int:
        """The generation whose publishers are live, -1 when closed (call under ``lock``)."""
        return self.generation if self.is_open else -1

    def is_live(self, generation: int) -> bool:
        """Whether ``generation``'s publishers may still be used (call under ``lock``)."""
        return self.is_open and self.generation == generation
