"""Run a trained SFNet on camera images: ``Segmenter``.

Everything between the uint8 upload and the uint8 download runs on the inference device, in
modules of one concept each:

``validation``       what the Segmenter refuses: its settings, each call's images and requests
``preprocess``       upload, channel order, resize policy, normalisation, padding to a multiple of 32
``backends``         the forward pass: PyTorch, ONNX Runtime or OpenVINO
``postprocess``      resampling of the scores to the output resolution and the argmax, in row bands
                     of bounded memory
``eager``            the step by step pipeline: any sizes, multi-scale + flip, flows; batching
                     (one forward per canvas size, so a frame's labels never depend on the batch)
``static_pipeline``  the whole step as one ``torch.compile`` region or one CUDA graph
``geometry``         where a frame's pixels go (``FrameGeometry``); ``result``: ``SegmentationResult``

Only the label maps (and, on request, confidences and flow fields) come back.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.devices import resolve_device, resolve_precision
from sfnet_core.errors import ConfigError
from sfnet_core.inference.backends import InferenceBackend, TorchBackend
from sfnet_core.inference.eager import EagerPipeline
from sfnet_core.inference.geometry import FrameGeometry, plan_geometry
from sfnet_core.inference.loader import open_model
from sfnet_core.inference.postprocess import DEFAULT_BAND_BYTES
from sfnet_core.inference.preprocess import DevicePreprocessor, canvas_size
from sfnet_core.inference.result import SegmentationResult
from sfnet_core.inference.static_pipeline import StaticPipelines
from sfnet_core.inference.validation import check_flow_request, check_images, check_settings

__all__ = ["Segmenter"]

log = logging.getLogger(__name__)


class Segmenter:
    """A network ready to label camera images: ``segment(images) -> SegmentationResult(s)``.

    Construction: ``Segmenter.from_checkpoint(path, ...)`` for a ``.pt`` checkpoint or an ``.onnx``
    model exported by ``sfnet-export`` (``backend="auto" | "torch" | "onnxruntime" | "openvino"``:
    see ``sfnet_core.inference.loader``), or ``Segmenter(model, classes, mean, std, ...)`` for a network
    in memory (a ``torch.nn.Module``, or an ``InferenceBackend``).

    Geometry (``sfnet_core.inference.geometry``; ``geometry(frame_hw)`` or ``result.geometry``):

    * ``input_size=(h, w)``: the network input size; ``None`` runs every frame at its own size.
    * ``resize``: how a frame reaches ``input_size``: ``"stretch"`` (default: both axes scaled
      independently), ``"letterbox"`` (aspect kept, the frame centred, the bands filled with the
      mean colour), ``"crop"`` (aspect kept, the largest centred window of the frame with the
      network's aspect ratio is used; the rest is not seen).
    * ``output``: ``"input"`` (default): labels and confidence at the frame's resolution
      (resampled bilinearly from the scores before the argmax; with ``crop``, the pixels outside
      the window are ``UNLABELED`` = 255); ``"network"``: at ``input_size``, no resampling (with
      ``letterbox``, the bands are 255).
    * ``result.geometry`` gives the affine map frame pixel -> output pixel (``scale_x``,
      ``scale_y``, ``offset_x``, ``offset_y``, corner convention), ``output_size``, the labelled
      ``valid`` window, and ``camera_matrix(K)`` / ``projection_matrix(P)`` for a camera_info that
      matches the label image (``width, height = output_size[1], output_size[0]``).

    Execution:

    * ``device`` / ``precision`` follow ``sfnet_core.devices`` (torch backend); an ONNX Runtime
      backend runs its model's precision (fp32 or int8); OpenVINO an int8 model in int8, an fp32
      one in fp32 or bf16 where the CPU has it natively (``openvino_backend``).
    * ``scales`` / ``flip``: multi-scale + flip inference (paper, Table 4) for every call;
      ``segment`` can override them per call (eager pipeline only).
    * ``pipeline``: ``"eager"`` (default); ``"compiled"``: at a fixed ``input_size`` the whole step
      (normalise, resize, network, resample, argmax) is one ``torch.compile`` region with static
      shapes (CPU or CUDA); ``"cuda_graph"``: the whole step *including* the upload from pinned
      memory and the download is one captured CUDA graph, replayed per call. Both are built per
      set of frame sizes (cameras) on first use; calls asking for flows or test-time augmentation
      run eager.
    * ``band_bytes``: memory bound of the resampling + argmax (``postprocess``); the labels do not
      depend on it.

    The Segmenter takes over the model (eval mode, moved to the device). It is not thread-safe
    (it reuses upload buffers): use one per thread, or call it from one thread.
    """

    def __init__(
        self,
        model: torch.nn.Module | InferenceBackend,
        classes: ClassTable,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: tuple[int, int] | None = None,
        compile: bool = False,
        warmup: bool = False,
        channels_last: bool = True,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        resize: str = "stretch",
        output: str = "input",
        pipeline: str = "eager",
        band_bytes: int | None = None,
    ) -> None:
        self.classes = classes
        self.backend: InferenceBackend
        if isinstance(model, InferenceBackend):
            self.backend = model
        else:
            dev = resolve_device(device, "Segmenter: device")
            self.backend = TorchBackend(model, dev, resolve_precision(precision, dev, "Segmenter: precision"),
                                        channels_last=channels_last, compile=compile and pipeline == "eager")
            self.backend.num_classes = int(getattr(model, "num_classes", classes.num_classes))
        self.device = self.backend.device
        self.precision = self.backend.precision
        self.input_size = check_settings(self.backend, input_size, resize, output, pipeline, mean, std)
        self.resize = resize
        self.output = output
        self.pipeline = pipeline
        self.channels_last = self.backend.memory_format == torch.channels_last
        self.band_bytes = int(band_bytes) if band_bytes else DEFAULT_BAND_BYTES.get(self.device.type, 4 << 20)
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = int(self.backend.num_classes or classes.num_classes)
        if self.num_classes != classes.num_classes:
            raise ConfigError(
                f"Segmenter: the model predicts {self.num_classes} classes, the class table has {classes.num_classes}"
            )
        self._prep = DevicePreprocessor(self.device, self.mean, self.std, self.backend.memory_format)
        self._eager = EagerPipeline(self.backend, self._prep, self.band_bytes)
        self._static = StaticPipelines(pipeline, self.backend, self._prep, self.band_bytes)
        self.checkpoint_path: Path | None = None
        self.model_name: str | None = getattr(getattr(self.backend, "module", None), "variant", None)
        if self.device.type == "cuda":
            # Camera streams have a fixed size: let cuDNN pick the fastest kernels per shape.
            torch.backends.cudnn.benchmark = True
        log.info(
            "Segmenter: device %s, precision %s, backend %s, input size %s, resize %s, output %s, pipeline %s, "
            "channels_last %s, compile %s",
            self.device, self.precision, self.backend.describe(), self.input_size or "native", resize, output,
            pipeline, self.channels_last, getattr(self.backend, "compiled", False) or pipeline == "compiled",
        )
        if warmup:
            self._warm_up()

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch network (torch backend), else None."""
        return getattr(self.backend, "model", None)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: tuple[int, int] | None = None,
        compile: bool = False,
        warmup: bool = True,
        channels_last: bool = True,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        expected_num_classes: int | None = None,
        backend: str = "auto",
        resize: str = "stretch",
        output: str = "input",
        pipeline: str = "eager",
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        band_bytes: int | None = None,
        flows: bool = False,
    ) -> Segmenter:
        """Load a ``.pt`` checkpoint or a self-describing ``.onnx`` and get ready to segment.

        ``backend``: ``auto`` (the fastest path this machine offers: ``loader.choose_backend``),
        ``torch``, ``onnxruntime`` or ``openvino`` (a ``.pt`` is then exported once into the export
        cache, ``cache_dir`` or ``$SFNET_ROS_CACHE`` or ``~/.cache/sfnet_ros``). A fixed-size
        ``.onnx`` sets ``input_size`` to its size when none is given. ``threads``: ONNX Runtime /
        OpenVINO inference threads (default ``torch.get_num_threads()``). ``flows``: the caller
        will ask for ``return_flows``, so ``auto`` picks PyTorch (as it does for ``compile`` and
        the compiled / CUDA-graph pipelines). The other arguments: see the class docstring.
        """
        needs_torch = "return_flows" if flows else (f"pipeline {pipeline}" if pipeline != "eager" else "")
        loaded = open_model(path, backend=backend, device=device, precision=precision, input_size=input_size,
                            channels_last=channels_last, compile=compile and pipeline == "eager", threads=threads,
                            cache_dir=cache_dir, expected_num_classes=expected_num_classes, needs_torch=needs_torch)
        segmenter = cls(
            loaded.backend, loaded.classes, loaded.mean, loaded.std, input_size=loaded.input_size or input_size,
            warmup=False, scales=scales, flip=flip, resize=resize, output=output, pipeline=pipeline,
            band_bytes=band_bytes,
        )
        segmenter.checkpoint_path = loaded.path
        segmenter.model_name = loaded.model_name
        if warmup:
            segmenter._warm_up()
        return segmenter

    def _warm_up(self) -> None:
        """One call at the input size (or 256x512): allocations, cuDNN autotuning, compilation."""
        h, w = self.input_size or (256, 512)
        self.segment(np.zeros((h, w, 3), np.uint8))

    def geometry(self, frame_hw: tuple[int, int]) -> FrameGeometry:
        """How a frame of ``frame_hw`` (H, W) maps to the network input and the output."""
        return plan_geometry(frame_hw, self.input_size, self.resize, self.output)

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> torch.Tensor:
        """The normalised network input of ``images`` (N, 3, Hc, Wc) float32, exactly as ``segment``
        feeds the network (resize policy, normalisation, padding). All images must share one
        canvas (true at a fixed ``input_size``). Used to calibrate int8 models."""
        batch = check_images(images)
        geoms = [self.geometry(img.shape[:2]) for img in batch]
        canvases = {canvas_size(g) for g in geoms}
        if len(canvases) != 1:
            raise ConfigError(f"preprocess(): the images need different canvases {sorted(canvases)}; set input_size")
        with torch.inference_mode():
            return self._prep.fill(self._prep.upload(batch), geoms, canvases.pop(), bgr).contiguous()

    @overload
    def segment(self, images: np.ndarray, bgr: bool = False, return_confidence: bool | str = False,
                return_flows: bool | str = False, scales: Sequence[float] | None = None,
                flip: bool | None = None) -> SegmentationResult: ...

    @overload
    def segment(self, images: Sequence[np.ndarray], bgr: bool = False, return_confidence: bool | str = False,
                return_flows: bool | str = False, scales: Sequence[float] | None = None,
                flip: bool | None = None) -> list[SegmentationResult]: ...

    def segment(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        bgr: bool = False,
        return_confidence: bool | str = False,
        return_flows: bool | str = False,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Label one (H, W, 3) uint8 image (-> one result) or a list (-> a list), batched.

        ``bgr``: the images are BGR (OpenCV order). ``return_confidence``: True (or ``"max"``)
        the largest softmax probability per pixel, ``"margin"`` the largest minus the second
        largest (0 at a tie: how sure the network is of its first choice over the next), as
        ``result.confidence`` * 255. ``scales`` / ``flip`` override the
        Segmenter's multi-scale + flip setting for this call. ``return_flows``: ``True`` / ``"all"``
        every FAM's flow, coarse to fine, ``"finest"`` only the finest (the cheap one for a debug
        topic): (2, h, w) float32 arrays in pixels *of their own grid*, cropped to the frame's
        content box of the network canvas, ``result.flow_strides`` network pixels per cell (so at
        ``output="network"`` a flow upsampled by its stride lines up with the labels' content
        window ``geometry.content``). Flows need the torch backend and single-scale, unflipped
        inference.
        """
        if return_confidence not in (False, True, "max", "margin"):
            raise ConfigError(f"return_confidence: expected False, True, 'max' or 'margin', got {return_confidence!r}")
        batch = check_images(images)
        call_scales = self.scales if scales is None else tuple(float(s) for s in scales)
        call_flip = self.flip if flip is None else bool(flip)
        tta = call_scales != (1.0,) or call_flip
        check_flow_request(return_flows, tta, self.backend)
        geoms = [self.geometry(img.shape[:2]) for img in batch]
        # the compiled / CUDA-graph steps return the max-softmax confidence only
        if self.pipeline != "eager" and not tta and not return_flows and return_confidence != "margin":
            results = self._static(batch, geoms, bgr, bool(return_confidence))
        else:
            results = self._eager(batch, geoms, bgr, return_confidence, return_flows, call_scales, call_flip)
        return results[0] if isinstance(images, np.ndarray) else results
