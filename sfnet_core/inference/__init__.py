"""Inference: ``Segmenter`` (uint8 camera frames in, labels out) and ``predict_logits`` (tensors).

``segmenter``    the Segmenter: settings, ``segment`` routed to the eager or the static pipeline
``validation``   what the Segmenter refuses (settings, images, flow requests)
``preprocess``   uint8 frames -> normalised canvas on the device (upload, resize policy, padding)
``eager``        the step-by-step pipeline: any sizes, multi-scale + flip, flows, batching
``static_pipeline``  the whole step as one torch.compile region or one CUDA graph
``result``       ``SegmentationResult``
``geometry``     resize policies (stretch / letterbox / crop), output resolution, camera_info mapping
``postprocess``  scores -> labels / confidence at another resolution in row bands of bounded memory
``backends``     PyTorch and ONNX Runtime (CPU, CUDA, TensorRT providers) behind one call
``openvino_backend``  the same ``.onnx`` files in OpenVINO on the CPU (fp32, bf16 where native, int8)
``loader``       a ``.pt`` or self-describing ``.onnx`` file -> a backend (``open_model``); what
                 ``backend="auto"`` picks (``choose_backend``)
``cache``        the export cache (``~/.cache/sfnet_ros``) for a ``.pt`` run in ONNX Runtime or
                 OpenVINO, and OpenVINO's compiled models
                 (the export itself and the ONNX metadata: ``sfnet_core.onnx``)
``predict``      whole-image / sliding-window / multi-scale + flip inference shared with sfnet-eval
"""
from __future__ import annotations

from sfnet_core.checkpoint import STRIDE
from sfnet_core.inference.geometry import OUTPUT_RESOLUTIONS, RESIZE_POLICIES, UNLABELED, FrameGeometry
from sfnet_core.inference.predict import pad_to_multiple, predict_logits
from sfnet_core.inference.result import SegmentationResult
from sfnet_core.inference.segmenter import Segmenter
from sfnet_core.inference.validation import PIPELINES

__all__ = ["Segmenter", "SegmentationResult", "FrameGeometry", "RESIZE_POLICIES", "OUTPUT_RESOLUTIONS",
           "UNLABELED", "PIPELINES", "predict_logits", "pad_to_multiple", "STRIDE"]
