"""Datasets, transforms, class tables and the synthetic scene generator.

Names resolve lazily so ``from sfnet_core.data.classes import ClassTable`` (used by the ROS
nodes and checkpoints) does not pull in OpenCV or the dataset code.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ClassTable": "sfnet_core.data.classes",
    "FolderDataset": "sfnet_core.data.datasets",
    "CityscapesDataset": "sfnet_core.data.datasets",
    "SyntheticDataset": "sfnet_core.data.datasets",
    "SegmentationDataset": "sfnet_core.data.datasets",
    "read_image": "sfnet_core.data.datasets",
    "read_label": "sfnet_core.data.datasets",
    "TrainTransform": "sfnet_core.data.transforms",
    "EvalTransform": "sfnet_core.data.transforms",
    "DataConfig": "sfnet_core.data.config",
    "SyntheticConfig": "sfnet_core.data.config",
    "ClassUniformConfig": "sfnet_core.data.config",
    "CentroidIndex": "sfnet_core.data.class_uniform",
    "load_or_build_index": "sfnet_core.data.class_uniform",
    "epoch_plan": "sfnet_core.data.class_uniform",
    "build_datasets": "sfnet_core.data.factory",
    "render_scene": "sfnet_core.data.synthetic_scenes.render",
    "render_sequence": "sfnet_core.data.synthetic_scenes.render",
    "write_folder_dataset": "sfnet_core.data.synthetic_scenes.dataset_writer",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sfnet_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
