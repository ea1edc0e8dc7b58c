"""The parameter table (``params.py``, ROS-free) applied to a live rclpy node: declaration with
descriptors, overrides that rclpy rejects, and the rule for changes while the node runs."""
from __future__ import annotations

import math
from typing import Any

from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from sfnet_ros.node.params import (
    APPLIED_AT_CONFIGURE,
    APPLIED_AT_RUNTIME,
    PARAMETERS,
    non_finite_error,
    parameter_descriptor,
    spec,
)

__all__ = ["declare_parameters", "parameter_values", "refusal", "runtime_changes"]

RUNTIME_NAMES = frozenset(p.name for p in PARAMETERS if p.applied == APPLIED_AT_RUNTIME)


def declare_parameters(node: Node) -> dict[str, str]:
    """Declare every parameter of the table; returns {name: why} for overrides that were refused.

    A bad override (e.g. ``qos_depth: 0``, or a string for an integer) would otherwise kill the
    process before it is even a lifecycle node. The default is kept, and configure fails with
    that message until the value is fixed."""
    errors: dict[str, str] = {}
    for p in PARAMETERS:
        descriptor = parameter_descriptor(p)
        try:
            node.declare_parameter(p.name, p.default, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            node.declare_parameter(p.name, p.default, descriptor, ignore_override=True)
            errors[p.name] = f"parameter '{p.name}': invalid value ({exc})"
            # NaN and infinity fail rclpy's range check: say so in params.py's own words.
            override = getattr(node, "_parameter_overrides", {}).get(p.name)  # rclpy Node internals
            value = getattr(override, "value", None)
            if isinstance(value, float) and not math.isfinite(value):
                errors[p.name] = str(non_finite_error(p.name, value))
    return errors


def parameter_values(node: Node) -> dict[str, Any]:
    return {p.name: node.get_parameter(p.name).value for p in PARAMETERS}


def refusal(parameters: list[Parameter], state: str) -> str | None:
    """Why a set-parameters request is refused: configure-time parameters change only while the
    node is unconfigured (runtime ones any time); None when it is accepted."""
    for param in parameters:
        try:
            p = spec(param.name)
        except KeyError:
            continue
        if p.applied == APPLIED_AT_CONFIGURE and state != "unconfigured":
            return f"'{p.name}' is applied at configure: call cleanup first (node is {state})"
    return None


def runtime_changes(parameters: list[Parameter]) -> dict[str, Any]:
    """The accepted changes that apply at once (the drawing options)."""
    return {param.name: param.value for param in parameters if param.name in RUNTIME_NAMES}
