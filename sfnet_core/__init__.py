"""SFNet (Semantic Flow, Li et al., ECCV 2020) as a plain PyTorch library.

This package never imports ROS. The public names below are resolved lazily so that
``import sfnet_core`` stays cheap for tools that only need, say, the class tables.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "build_model",
    "MODEL_VARIANTS",
    "Segmenter",
    "SegmentationResult",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "CheckpointError",
    "ClassTable",
]

_LAZY = {
    "build_model": "sfnet_core.models",
    "MODEL_VARIANTS": "sfnet_core.models",
    "Segmenter": "sfnet_core.inference",
    "SegmentationResult": "sfnet_core.inference",
    "save_checkpoint": "sfnet_core.checkpoint",
    "load_checkpoint": "sfnet_core.checkpoint",
    "Checkpoint": "sfnet_core.checkpoint",
    "CheckpointError": "sfnet_core.checkpoint",
    "ClassTable": "sfnet_core.data.classes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sfnet_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
