"""Incompatible-QoS peers of the node's topics: the event callbacks and the graph check.

DDS tells an endpoint that a peer's QoS does not match (the incompatible-QoS events), but not who
the peer is nor what it offers. ``QosReport`` asks the ROS graph for the peers of the topic and
names each one that breaks a rule (``qos.incompatible_policies``), logs it and records it in the
camera's diagnostics; ``refresh`` (every diagnostics period) keeps such an entry while the peer
is still there and clears it once it is gone or fixed.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rclpy.qos import QoSProfile

from sfnet_ros.node.camera_io import CameraIO
from sfnet_ros.node.params import NodeConfig
from sfnet_ros.node.qos import CLASSES_QOS, data_qos, endpoint_name, enum_name, incompatible_policies, policy_name

if TYPE_CHECKING:  # for the annotation only: the node module imports this one
    from rclpy.node import Node

__all__ = ["QOS_EVENT_MIN_AGE_S", "QosReport"]

# An incompatible-QoS event is kept on /diagnostics at least this long before the graph check may
# clear it (discovery data can lag behind the matching event).
QOS_EVENT_MIN_AGE_S = 2.0


class QosReport:
    """The incompatible-QoS events of ``node``'s endpoints, explained from its view of the graph."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def input_incompatibility(self, io: CameraIO, ours: QoSProfile, endpoint: str = "input") -> str:
        """Text naming each publisher of ``io``'s input (``endpoint`` "input" or "camera_info") whose
        QoS does not match ours ("" if none)."""
        topic = io.input_topic if endpoint == "input" else io.camera_info_topic
        bad = []
        for info in self._node.get_publishers_info_by_topic(topic):
            rules = incompatible_policies(info.qos_profile, ours)
            if rules:
                bad.append(f"publisher {endpoint_name(info)} on {topic}: {', '.join(rules)}")
        return "; ".join(bad)

    def output_incompatibility(self, topic: str, ours: QoSProfile) -> str:
        """Text naming each subscription of our ``topic`` whose QoS does not match ours ("" if none)."""
        bad = []
        for info in self._node.get_subscriptions_info_by_topic(topic):
            rules = incompatible_policies(ours, info.qos_profile)
            if rules:
                bad.append(f"subscription {endpoint_name(info)} on {topic}: {', '.join(rules)}")
        return "; ".join(bad)

    def on_input_incompatible(self, io: CameraIO, ours: QoSProfile, endpoint: str, event: Any) -> None:
        """Event: a publisher of our input (``endpoint`` "input" or "camera_info") offers QoS our
        subscription cannot accept."""
        policy = policy_name(getattr(event, "last_policy_kind", "?"))
        topic = io.input_topic if endpoint == "input" else io.camera_info_topic
        text = self.input_incompatibility(io, ours, endpoint) or (
            f"a publisher on {topic} offers an incompatible {policy} "
            f"(this node requests {enum_name(ours.reliability)}, {enum_name(ours.durability)})")
        io.stats.qos_event(endpoint, text)
        what = "frames" if endpoint == "input" else "camera_info messages"
        self._node.get_logger().warning(f"incompatible QoS, no {what} will come from that publisher: {text}")

    def on_output_incompatible(self, io: CameraIO, relative_topic: str, ours: QoSProfile, event: Any) -> None:
        """Event: a subscription of one of our outputs requests QoS our publisher does not offer."""
        policy = policy_name(getattr(event, "last_policy_kind", "?"))
        topic = self._node.resolve_topic_name(relative_topic)
        text = self.output_incompatibility(topic, ours) or (
            f"a subscription on {topic} requests an incompatible {policy} "
            f"(this node offers {enum_name(ours.reliability)}, {enum_name(ours.durability)})")
        io.stats.qos_event(topic, text)
        self._node.get_logger().warning(f"incompatible QoS, that subscription receives nothing: {text}")

    def refresh(self, io: CameraIO, config: NodeConfig) -> None:
        """Keep a reported incompatibility while the incompatible peer exists (graph check)."""
        now = time.monotonic()
        for endpoint, (_, since) in io.stats.qos_entries().items():
            if now - since < QOS_EVENT_MIN_AGE_S:
                continue
            if endpoint in ("input", "camera_info"):
                text = self.input_incompatibility(io, data_qos(config), endpoint)
            else:
                ours = CLASSES_QOS if endpoint.endswith(("/classes", "/label_info")) else data_qos(config)
                text = self.output_incompatibility(endpoint, ours)
            if text:
                io.stats.qos_update(endpoint, text)
            else:
                io.stats.qos_resolved(endpoint)
