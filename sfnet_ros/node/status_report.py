"""What the node says about itself on /diagnostics every ``diagnostics_period``.

One status for the node (lifecycle state, model, device, inference thread, memory, Fast DDS
profile, nodes of the same name on the domain) and one per camera (``diagnostics.camera_status``
over the window of its counters), plus the checks against the ROS graph they need: nodes of this
node's name (two nodes of one name both run, but their services, parameters and /diagnostics
names collide), publishers matched on each input, and incompatible-QoS peers still present
(``qos_report.py``). The message building itself is ``diagnostics.py``'s.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from sfnet_ros.node import diagnostics
from sfnet_ros.node.camera_io import CameraIO, OutputGate
from sfnet_ros.node.model_setup import LoadedModel
from sfnet_ros.node.qos_report import QosReport

__all__ = ["NodeFacts", "StatusReport", "WORKER_THREAD_NAME"]

WORKER_THREAD_NAME = "sfnet_inference"


@dataclass(frozen=True)
class NodeFacts:
    """The node's own state at the moment of a report."""

    state: str                  # lifecycle state label, "configuring" during configure
    last_error: str             # why the last transition failed ("" after a success)
    model: LoadedModel | None
    busy_s: float | None        # how long the batch in flight has run (None: idle)
    discarded_total: int        # frames whose results were discarded (earlier activation)
    transport_profile: str      # the Fast DDS profile this process runs with
    message_lost_event: str     # "yes", or why DDS losses cannot be counted


class StatusReport:
    """Builds the node's DiagnosticArray; ``node`` answers the graph queries and logs."""

    def __init__(self, node: Node, gate: OutputGate, qos_report: QosReport) -> None:
        self._node = node
        self._gate = gate
        self._qos_report = qos_report
        # Nodes of this node's fully qualified name on the domain, this one included, as the last
        # graph check saw them (check_duplicates).
        self.same_name_count = 1

    def array(self, facts: NodeFacts) -> DiagnosticArray:
        node, model = self._node, facts.model
        config = model.config if model is not None else None
        hardware_id = model.device_text if model is not None else "none"
        name = node.get_fully_qualified_name()
        details: dict[str, object] = {"device": hardware_id}
        if model is not None:
            details.update(checkpoint=str(model.config.checkpoint), model=model.segmenter.model_name or "",
                           backend=model.backend_text, cameras=", ".join(model.config.cameras) or "<namespace>")
        details["inference_busy_s"] = 0.0 if facts.busy_s is None else float(facts.busy_s)
        details["results_discarded_total"] = facts.discarded_total
        # Counted by name over all live threads, so a worker that outlived its activation would
        # show up here too (by design there is never more than one).
        details["inference_threads"] = sum(1 for t in threading.enumerate() if t.name == WORKER_THREAD_NAME)
        details.update(diagnostics.process_memory_mb())
        details["fastdds_profile"] = facts.transport_profile
        self.check_duplicates()
        details["nodes_with_this_name"] = self.same_name_count
        warnings = [self.duplicate_text(self.same_name_count)] if self.same_name_count > 1 else []
        statuses = [diagnostics.node_status(name, hardware_id, facts.state, facts.last_error, details, warnings)]
        now = time.monotonic()
        for io in list(self._gate.cameras.values()):
            try:
                if config is not None:
                    self._qos_report.refresh(io, config)
                subscribers = sum(p.get_subscription_count() for p in io.image_outputs())
            except Exception:  # entities of a deactivation happening right now
                subscribers = -1
            publishers = self.input_publishers(io)
            io.stats.publishers_seen(publishers, now)
            statuses.append(diagnostics.camera_status(
                f"{name}: {io.input_topic}", hardware_id, io.stats.take_window(), io.stats,
                active=facts.state == "active",
                input_timeout_warn=config.input_timeout_warn if config else 0.0,
                input_timeout_error=config.input_timeout_error if config else 0.0,
                output_subscribers=subscribers, now=now, input_publishers=publishers,
                input_loss_warn=config.input_loss_warn if config else 1.0,
                message_lost_event=facts.message_lost_event))
        return diagnostics.diagnostic_array(node.get_clock().now().to_msg(), statuses)

    def input_publishers(self, io: CameraIO) -> int:
        """Publishers matched on the camera's input (-1 if unknown)."""
        subscription = io.subscription
        if subscription is None:
            return -1
        count = getattr(subscription, "get_publisher_count", None)  # rclpy >= Iron
        try:
            return int(count()) if count is not None else int(self._node.count_publishers(io.input_topic))
        except Exception:  # entities of a deactivation happening right now
            return -1

    def check_duplicates(self) -> None:
        """Count the nodes of this node's fully qualified name on the domain (the ROS graph, as
        discovery knows it); log when another one appears or goes."""
        node = self._node
        name, namespace = node.get_name(), node.get_namespace()
        try:
            count = sum(1 for n, ns in node.get_node_names_and_namespaces() if n == name and ns == namespace)
        except Exception:  # the context is going away
            return
        count = max(count, 1)
        previous, self.same_name_count = self.same_name_count, count
        if count > previous:
            node.get_logger().warning(self.duplicate_text(count))
        elif count < previous and count == 1:
            node.get_logger().info(f"no other node named {node.get_fully_qualified_name()} on the domain any more")

    def duplicate_text(self, count: int) -> str:
        domain = os.environ.get("ROS_DOMAIN_ID", "0")
        return (f"{count} nodes named {self._node.get_fully_qualified_name()} on ROS domain {domain}: their "
                "services, parameters and /diagnostics collide (a second instance started? give each its own "
                "name or namespace: -r __node:=<name> / -r __ns:=<namespace>)")
