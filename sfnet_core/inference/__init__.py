"""Inference: ``Segmenter`` (uint8 camera frames in, labels out) and ``predict_logits`` (tensors).

``segmenter``  the Segmenter: upload, normalise, resize, forward, upsample + argmax on the device
``predict``    whole-image / sliding-window / multi-scale + flip inference shared with sfnet-eval
"""
from __future__ import annotations

from sfnet_core.inference.predict import STRIDE, pad_to_multiple, predict_logits
from sfnet_core.inference.segmenter import SegmentationResult, Segmenter

__all__ = ["Segmenter", "SegmentationResult", "predict_logits", "pad_to_multiple", "STRIDE"]
