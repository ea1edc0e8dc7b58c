"""The segmentation node: the process (main), the lifecycle node and its wiring, its parameter
table, the loaded model, frame mailboxes + inference thread, the per-frame pipeline
(frame_pipeline), camera endpoints (camera_io), output messages, QoS (qos, qos_report) and
/diagnostics (status_report, diagnostics).

``SegmentationNode`` and ``main`` resolve lazily, so importing ``sfnet_ros.node.params`` (the
parameter table, used by tests and tools) does not load rclpy's node machinery.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SegmentationNode", "main", "NODE_NAME"]
_LAZY = {"SegmentationNode": "sfnet_ros.node.segmentation_node", "NODE_NAME": "sfnet_ros.node.segmentation_node",
         "main": "sfnet_ros.node.main"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sfnet_ros.node' has no attribute {name!r}")
