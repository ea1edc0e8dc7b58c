"""The segmentation node: lifecycle node, parameter table, frame mailboxes + inference thread, diagnostics,
and the side messages beside the label images (outputs: camera_info, LabelInfo, timing, flow).

``SegmentationNode`` and ``main`` resolve lazily, so importing ``sfnet_ros.node.params`` (the
parameter table, used by tests and tools) does not load rclpy's node machinery.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SegmentationNode", "main", "NODE_NAME"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("sfnet_ros.node.segmentation_node"), name)
    raise AttributeError(f"module 'sfnet_ros.node' has no attribute {name!r}")
