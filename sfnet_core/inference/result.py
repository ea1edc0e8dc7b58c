"""What ``Segmenter.segment`` returns for one image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfnet_core.inference.geometry import FrameGeometry

__all__ = ["SegmentationResult"]


@dataclass
class SegmentationResult:
    """What ``Segmenter.segment`` returns for one image (sizes: see ``geometry``)."""

    labels: np.ndarray  # (Ho, Wo) uint8 train ids at geometry.output_size; UNLABELED (255) outside geometry.valid
    confidence: np.ndarray | None = None  # (Ho, Wo) uint8, max softmax * 255 (when asked); 0 outside geometry.valid
    flows: list[np.ndarray] | None = None  # (2, h, w) float32 per FAM, coarse to fine (or the finest only)
    geometry: FrameGeometry | None = None  # frame -> output pixel mapping (camera_info: geometry.camera_matrix)
    flow_strides: list[float] | None = None  # network-input pixels per flow cell, one per entry of ``flows``
