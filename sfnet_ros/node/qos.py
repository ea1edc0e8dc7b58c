"""QoS of the node's topics, and what an incompatible-QoS event is about (for /diagnostics)."""
from __future__ import annotations

from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from sfnet_ros.node.params import NodeConfig

__all__ = ["CLASSES_QOS", "data_qos", "incompatible_policies", "policy_name", "endpoint_name", "enum_name"]


def data_qos(config: NodeConfig) -> QoSProfile:
    """The images' QoS, in and out: keep last ``qos_depth``, best effort (sensor data) or reliable."""
    reliability = ReliabilityPolicy.RELIABLE if config.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.qos_depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


# Late joiners (rviz, a recorder started later) must still learn what the label ids mean.
CLASSES_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


# -- QoS compatibility (what the incompatible-QoS events are about) -----------------------------


def policy_name(kind: Any) -> str:
    try:
        from rclpy.qos import QoSPolicyKind

        return QoSPolicyKind(int(kind)).name
    except (ImportError, ValueError, TypeError):
        return str(kind)


def enum_name(value: Any) -> str:
    return getattr(value, "name", str(value))


def _duration_ns(value: Any) -> int | None:
    """A QoS duration in ns; None for "infinite" (0, or the huge values DDS reports for it)."""
    ns = getattr(value, "nanoseconds", None)
    if ns is None:
        ns = int(getattr(value, "sec", 0)) * 1_000_000_000 + int(getattr(value, "nanosec", 0))
    return None if ns <= 0 or ns >= 10**15 else int(ns)


def _duration_text(ns: int | None) -> str:
    return "infinite" if ns is None else f"{ns / 1e9:g} s"


def incompatible_policies(offered: QoSProfile, requested: QoSProfile) -> list[str]:
    """The DDS request/offer rules a publisher (``offered``) and a subscription (``requested``)
    break, each as ``"<policy> offered <x>, requested <y>"``; [] when they match."""
    out: list[str] = []
    def rule(policy: str, offer: Any, request: Any) -> str:
        return f"{policy} offered {offer}, requested {request}"

    if offered.reliability == ReliabilityPolicy.BEST_EFFORT and requested.reliability == ReliabilityPolicy.RELIABLE:
        out.append(rule("reliability", enum_name(offered.reliability), enum_name(requested.reliability)))
    if offered.durability == DurabilityPolicy.VOLATILE and requested.durability == DurabilityPolicy.TRANSIENT_LOCAL:
        out.append(rule("durability", enum_name(offered.durability), enum_name(requested.durability)))
    offered_deadline, requested_deadline = _duration_ns(offered.deadline), _duration_ns(requested.deadline)
    if requested_deadline is not None and (offered_deadline is None or offered_deadline > requested_deadline):
        out.append(rule("deadline", _duration_text(offered_deadline), _duration_text(requested_deadline)))
    liveliness_order = {"AUTOMATIC": 0, "MANUAL_BY_TOPIC": 2}
    offered_live = liveliness_order.get(enum_name(offered.liveliness))
    requested_live = liveliness_order.get(enum_name(requested.liveliness))
    if offered_live is not None and requested_live is not None and offered_live < requested_live:
        out.append(rule("liveliness", enum_name(offered.liveliness), enum_name(requested.liveliness)))
    offered_lease, requested_lease = (_duration_ns(offered.liveliness_lease_duration),
                                      _duration_ns(requested.liveliness_lease_duration))
    if requested_lease is not None and (offered_lease is None or offered_lease > requested_lease):
        out.append(rule("liveliness lease", _duration_text(offered_lease), _duration_text(requested_lease)))
    return out


def endpoint_name(info: Any) -> str:
    namespace = getattr(info, "node_namespace", "") or "/"
    node = getattr(info, "node_name", "") or ""
    if not node or "_UNKNOWN_" in node or "_UNKNOWN_" in namespace:
        # The DDS endpoint is known before the ROS node that owns it (the graph check every
        # diagnostics period fills the name in once discovery has it).
        return "(node not yet known)"
    return namespace.rstrip("/") + "/" + node
