"""Inference: ``Segmenter`` (uint8 camera frames in, labels out) and ``predict_logits`` (tensors).

``segmenter``    the Segmenter: upload, normalise, resize policy, forward, banded resample + argmax
``geometry``     resize policies (stretch / letterbox / crop), output resolution, camera_info mapping
``postprocess``  scores -> labels / confidence at another resolution in row bands of bounded memory
``backends``     PyTorch and ONNX Runtime (CPU, CUDA, TensorRT providers) behind one call
``loader``       a ``.pt`` or self-describing ``.onnx`` file -> a backend (``open_model``)
``onnx_model``   the ONNX metadata that makes an exported model self-describing
``cache``        the export cache (``~/.cache/sfnet_ros``) for a ``.pt`` run in ONNX Runtime
``predict``      whole-image / sliding-window / multi-scale + flip inference shared with sfnet-eval
"""
from __future__ import annotations

from sfnet_core.inference.geometry import OUTPUT_RESOLUTIONS, RESIZE_POLICIES, UNLABELED, FrameGeometry
from sfnet_core.inference.predict import STRIDE, pad_to_multiple, predict_logits
from sfnet_core.inference.segmenter import PIPELINES, SegmentationResult, Segmenter

__all__ = ["Segmenter", "SegmentationResult", "FrameGeometry", "RESIZE_POLICIES", "OUTPUT_RESOLUTIONS",
           "UNLABELED", "PIPELINES", "predict_logits", "pad_to_multiple", "STRIDE"]
