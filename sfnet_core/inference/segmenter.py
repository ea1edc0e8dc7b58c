"""Run a trained SFNet on camera images: ``Segmenter``.

Everything between the uint8 upload and the uint8 download runs on the inference device:
conversion to float, normalisation, the resize policy towards the network input size, padding to
a multiple of 32, the forward pass (PyTorch or ONNX Runtime: ``sfnet_core.inference.backends``),
resampling of the scores to the output resolution and the argmax, in row bands of bounded memory
(``sfnet_core.inference.postprocess``). Only the label maps (and, on request, confidences and
flow fields) come back.

Batching: images are placed on their network canvas (``input_size`` when set, else their own
size, padded with zeros after normalisation = the mean colour to the next multiple of 32, the
content at the top left unless the letterbox policy centres it), and every image whose canvas is
the same goes through one batched forward (several cameras at one ``input_size``: one forward per
call). Images whose canvases differ run as one forward per canvas size rather than being padded
further onto a common canvas: the network's global context (pyramid pooling over the whole
canvas) would otherwise see the extra border, so a frame's labels would depend on what else was
in the batch (on a randomly initialised ResNet-18 SFNet, a 64x128 image padded to 96x160 changed
53% of its labels). This way every image gets exactly the labels it gets alone.
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.devices import resolve_device, resolve_precision
from sfnet_core.errors import ConfigError
from sfnet_core.inference.backends import InferenceBackend, TorchBackend
from sfnet_core.inference.geometry import OUTPUT_RESOLUTIONS, RESIZE_POLICIES, UNLABELED, FrameGeometry, plan_geometry
from sfnet_core.inference.postprocess import DEFAULT_BAND_BYTES, resample_argmax, row_table
from sfnet_core.inference.predict import STRIDE, predict_logits

__all__ = ["SegmentationResult", "Segmenter", "PIPELINES", "FLOW_MODES"]

log = logging.getLogger(__name__)

PIPELINES = ("eager", "compiled", "cuda_graph")
FLOW_MODES = (False, True, "all", "finest")


@dataclass
class SegmentationResult:
    """What ``Segmenter.segment`` returns for one image (sizes: see ``geometry``)."""

    labels: np.ndarray  # (Ho, Wo) uint8 train ids at geometry.output_size; UNLABELED (255) outside geometry.valid
    confidence: np.ndarray | None = None  # (Ho, Wo) uint8, max softmax * 255 (when asked); 0 outside geometry.valid
    flows: list[np.ndarray] | None = None  # (2, h, w) float32 per FAM, coarse to fine (or the finest only)
    geometry: FrameGeometry | None = None  # frame -> output pixel mapping (camera_info: geometry.camera_matrix)
    flow_strides: list[float] | None = None  # network-input pixels per flow cell, one per entry of ``flows``


def _ceil32(v: int) -> int:
    return math.ceil(v / STRIDE) * STRIDE


class Segmenter:
    """A network ready to label camera images: ``segment(images) -> SegmentationResult(s)``.

    Construction: ``Segmenter.from_checkpoint(path, ...)`` for a ``.pt`` checkpoint or an ``.onnx``
    model exported by ``sfnet-export`` (``backend="auto" | "torch" | "onnxruntime"``: see
    ``sfnet_core.inference.loader``), or ``Segmenter(model, classes, mean, std, ...)`` for a network
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
      backend runs its model's precision (fp32 or int8).
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
        if isinstance(model, InferenceBackend):
            self.backend = model
        else:
            dev = resolve_device(device, "Segmenter: device")
            self.backend = TorchBackend(model, dev, resolve_precision(precision, dev, "Segmenter: precision"),
                                        channels_last=channels_last, compile=compile and pipeline == "eager")
            self.backend.num_classes = int(getattr(model, "num_classes", classes.num_classes))
        self.device = self.backend.device
        self.precision = self.backend.precision
        if input_size is not None:
            if len(input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in input_size):
                raise ConfigError(f"Segmenter: input_size must be (height, width) positive ints, got {input_size!r}")
            input_size = (int(input_size[0]), int(input_size[1]))
        if resize not in RESIZE_POLICIES:
            raise ConfigError(f"Segmenter: resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
        if output not in OUTPUT_RESOLUTIONS:
            raise ConfigError(f"Segmenter: output must be one of {', '.join(OUTPUT_RESOLUTIONS)}, got {output!r}")
        if pipeline not in PIPELINES:
            raise ConfigError(f"Segmenter: pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        if pipeline != "eager":
            if input_size is None:
                raise ConfigError(f"Segmenter: pipeline {pipeline} needs a fixed input_size (static shapes)")
            if not isinstance(self.backend, TorchBackend):
                raise ConfigError(f"Segmenter: pipeline {pipeline} needs the torch backend, not {self.backend.name}")
            if pipeline == "cuda_graph" and self.device.type != "cuda":
                raise ConfigError(f"Segmenter: pipeline cuda_graph needs a CUDA device, got {self.device}")
        fixed = self.backend.fixed_size
        if fixed is not None and (input_size is None or (_ceil32(input_size[0]), _ceil32(input_size[1])) != fixed):
            raise ConfigError(f"Segmenter: the model takes {fixed[0]}x{fixed[1]} inputs only; set input_size to it")
        self.input_size = input_size
        self.resize = resize
        self.output = output
        self.pipeline = pipeline
        self.channels_last = self.backend.memory_format == torch.channels_last
        self.band_bytes = int(band_bytes) if band_bytes else DEFAULT_BAND_BYTES.get(self.device.type, 4 << 20)
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"Segmenter: mean and std need 3 values, got {mean!r}, {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Folding the 1/255 into the statistics saves one pass over every pixel.
        self._mean = torch.tensor([255.0 * m for m in mean], device=self.device).view(3, 1, 1)
        self._std = torch.tensor([255.0 * s for s in std], device=self.device).view(3, 1, 1)
        self.num_classes = int(self.backend.num_classes or classes.num_classes)
        if self.num_classes != classes.num_classes:
            raise ConfigError(
                f"Segmenter: the model predicts {self.num_classes} classes, the class table has {classes.num_classes}"
            )
        self._staging: torch.Tensor | None = None  # pinned upload buffer (CUDA), grown on demand
        self._static: OrderedDict[tuple, _StaticStep] = OrderedDict()
        self.checkpoint_path: Path | None = None
        self.model_name: str | None = getattr(getattr(self.backend, "module", None), "variant", None)
        if self.device.type == "cuda":
            # Camera streams have a fixed size: let cuDNN pick the fastest kernels per shape.
            torch.backends.cudnn.benchmark = True
        log.info(
            "Segmenter: device %s, precision %s, backend %s, input size %s, resize %s, output %s, pipeline %s, "
            "channels_last %s, compile %s",
            self.device, self.precision, self.backend.describe(), input_size or "native", resize, output, pipeline,
            self.channels_last, getattr(self.backend, "compiled", False) or pipeline == "compiled",
        )
        if warmup:
            h, w = input_size or (256, 512)
            self.segment(np.zeros((h, w, 3), np.uint8))

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
    ) -> Segmenter:
        """Load a ``.pt`` checkpoint or a self-describing ``.onnx`` and get ready to segment.

        ``backend``: ``auto`` (torch for ``.pt``, onnxruntime for ``.onnx``), ``torch`` or
        ``onnxruntime`` (a ``.pt`` is then exported once into the export cache, ``cache_dir`` or
        ``$SFNET_ROS_CACHE`` or ``~/.cache/sfnet_ros``). A fixed-size ``.onnx`` sets
        ``input_size`` to its size when none is given. ``threads``: ONNX Runtime intra-op threads
        (default ``torch.get_num_threads()``). The other arguments: see the class docstring.
        """
        from sfnet_core.inference.loader import open_model

        loaded = open_model(path, backend=backend, device=device, precision=precision, input_size=input_size,
                            channels_last=channels_last, compile=compile and pipeline == "eager", threads=threads,
                            cache_dir=cache_dir, expected_num_classes=expected_num_classes)
        segmenter = cls(
            loaded.backend, loaded.classes, loaded.mean, loaded.std, input_size=loaded.input_size or input_size,
            warmup=False, scales=scales, flip=flip, resize=resize, output=output, pipeline=pipeline,
            band_bytes=band_bytes,
        )
        segmenter.checkpoint_path = loaded.path
        segmenter.model_name = loaded.model_name
        if warmup:
            h, w = segmenter.input_size or (256, 512)
            segmenter.segment(np.zeros((h, w, 3), np.uint8))
        return segmenter

    # -- geometry and preprocessing ----------------------------------------------------------

    def geometry(self, frame_hw: tuple[int, int]) -> FrameGeometry:
        """How a frame of ``frame_hw`` (H, W) maps to the network input and the output."""
        return plan_geometry(frame_hw, self.input_size, self.resize, self.output)

    def _canvas_hw(self, geom: FrameGeometry) -> tuple[int, int]:
        return _ceil32(geom.network_size[0]), _ceil32(geom.network_size[1])

    def _upload(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8 (H, W, 3) arrays -> uint8 (H, W, 3) tensors on the device."""
        if self.device.type != "cuda":
            return [torch.from_numpy(np.ascontiguousarray(img)) for img in images]
        # One memcpy per image into a reused pinned buffer, then asynchronous uploads. Reuse is
        # safe: every call synchronises when it downloads its results.
        total = sum(img.size for img in images)
        if self._staging is None or self._staging.numel() < total:
            self._staging = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        out, offset = [], 0
        for img in images:
            view = self._staging[offset : offset + img.size].view(img.shape)
            np.copyto(view.numpy(), img)
            out.append(view.to(self.device, non_blocking=True))
            offset += img.size
        return out

    def _fill(self, frames: list[torch.Tensor], geoms: list[FrameGeometry], canvas_hw: tuple[int, int],
              bgr: bool) -> torch.Tensor:
        """uint8 (H, W, 3) device tensors -> normalised canvas (N, 3, Hc, Wc) (see the module docstring)."""
        canvas_h, canvas_w = canvas_hw
        # Zeros after normalisation = the mean colour: padding and letterbox bands look like "nothing".
        canvas = torch.empty((len(frames), 3, canvas_h, canvas_w), device=self.device,
                             memory_format=self.backend.memory_format).zero_()
        for i, (u8, geom) in enumerate(zip(frames, geoms)):
            y, x, wh, ww = geom.window
            top, left, ch, cw = geom.content
            src = u8.permute(2, 0, 1)[:, y : y + wh, x : x + ww]  # (3, h, w) view, no copy
            if bgr:
                src = src.flip(0)
            region = canvas[i, :, top : top + ch, left : left + cw]
            if not geom.resized:
                region.copy_(src)  # uint8 -> float32 conversion happens in this copy
            elif ch < wh:
                region.copy_(self._shrink_rows(src, ch, cw))
            else:
                region.copy_(F.interpolate(src.unsqueeze(0).float(), size=(ch, cw), mode="bilinear",
                                           align_corners=False)[0])
            region.sub_(self._mean).div_(self._std)
        return canvas

    def _shrink_rows(self, src: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Bilinear resize of uint8 (3, H, W) to float (3, h, w) for h < H, converting to float only
        the 2h source rows the resize reads (a 4000x3000 frame as float is 144 MB; its rows read
        for a 240-row network input are 23 MB). Separable: ``F.interpolate`` across the width,
        then ``w0 * row[i0] + w1 * row[i1]`` (the ``postprocess.RowTable`` weights) down the rows."""
        table = row_table(src.shape[1], h, src.device)
        top, bottom = src.index_select(1, table.i0).float(), src.index_select(1, table.i1).float()
        if src.shape[2] != w:
            top = F.interpolate(top.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False)[0]
            bottom = F.interpolate(bottom.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False)[0]
        return top.mul_(table.w0.view(1, h, 1)).add_(bottom.mul_(table.w1.view(1, h, 1)))

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> torch.Tensor:
        """The normalised network input of ``images`` (N, 3, Hc, Wc) float32, exactly as ``segment``
        feeds the network (resize policy, normalisation, padding). All images must share one
        canvas (true at a fixed ``input_size``). Used to calibrate int8 models."""
        batch, _ = self._check(images)
        geoms = [self.geometry(img.shape[:2]) for img in batch]
        canvases = {self._canvas_hw(g) for g in geoms}
        if len(canvases) != 1:
            raise ConfigError(f"preprocess(): the images need different canvases {sorted(canvases)}; set input_size")
        with torch.inference_mode():
            return self._fill(self._upload(batch), geoms, canvases.pop(), bgr).contiguous()

    # -- inference -------------------------------------------------------------------------

    @staticmethod
    def _check(images: np.ndarray | Sequence[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("segment(): got an empty list of images")
        for i, img in enumerate(batch):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                desc = f"shape {img.shape}, dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"segment(): image {i}: expected an (H, W, 3) uint8 array, got {desc}")
            if img.shape[0] < 1 or img.shape[1] < 1:
                raise ValueError(f"segment(): image {i}: empty image of shape {img.shape}")
        return batch, single

    def segment(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        bgr: bool = False,
        return_confidence: bool = False,
        return_flows: bool | str = False,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Label one (H, W, 3) uint8 image (-> one result) or a list (-> a list), batched.

        ``bgr``: the images are BGR (OpenCV order). ``scales`` / ``flip`` override the
        Segmenter's multi-scale + flip setting for this call. ``return_flows``: ``True`` / ``"all"``
        every FAM's flow, coarse to fine, ``"finest"`` only the finest (the cheap one for a debug
        topic): (2, h, w) float32 arrays in pixels *of their own grid*, cropped to the frame's
        content box of the network canvas, ``result.flow_strides`` network pixels per cell (so at
        ``output="network"`` a flow upsampled by its stride lines up with the labels' content
        window ``geometry.content``). Flows need the torch backend and single-scale, unflipped
        inference.
        """
        batch, single = self._check(images)
        scales = self.scales if scales is None else tuple(float(s) for s in scales)
        flip = self.flip if flip is None else bool(flip)
        tta = scales != (1.0,) or flip
        if return_flows not in FLOW_MODES:
            raise ValueError(f"segment(): return_flows must be False, True, 'all' or 'finest', got {return_flows!r}")
        if return_flows and tta:
            raise ValueError("segment(): return_flows needs single-scale inference without flip "
                             "(scales=(1.0,), flip=False)")
        if return_flows and not self.backend.supports_flows:
            raise ConfigError(f"segment(): return_flows needs the torch backend, not {self.backend.name}")
        geoms = [self.geometry(img.shape[:2]) for img in batch]
        if self.pipeline != "eager" and not tta and not return_flows:
            return self._segment_static(batch, geoms, bgr, return_confidence, single)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, geom in enumerate(geoms):
            groups.setdefault(self._canvas_hw(geom), []).append(i)
        results: list[SegmentationResult] = [None] * len(batch)  # type: ignore[list-item]
        with torch.inference_mode():
            for canvas_hw, index in groups.items():
                sub_geoms = [geoms[i] for i in index]
                canvas = self._fill(self._upload([batch[i] for i in index]), sub_geoms, canvas_hw, bgr)
                flows: list[torch.Tensor] | None = None
                if tta:
                    scores = predict_logits(self.backend, canvas, scales, flip)  # probabilities
                elif return_flows:
                    scores, flows = self.backend.forward_with_flows(canvas)
                    if return_flows == "finest":
                        flows = flows[-1:]
                else:
                    scores = self.backend(canvas)
                out = self._postprocess(sub_geoms, canvas_hw, scores, flows, tta, return_confidence)
                for i, result in zip(index, out):
                    results[i] = result
        return results[0] if single else results

    def _labels(self, scores: torch.Tensor, geom: FrameGeometry, confidence: bool,
                are_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (n, C, Hc, Wc) of frames sharing ``geom`` -> labels, confidence (n, Ho, Wo) uint8 on the device."""
        n = scores.shape[0]
        top, left, ch, cw = geom.content
        out_h, out_w = geom.output_size
        vy, vx, vh, vw = geom.valid
        partial = (vy, vx, vh, vw) != (0, 0, out_h, out_w)
        make = torch.full if partial else (lambda size, _fill, **kw: torch.empty(size, **kw))
        labels = make((n, out_h, out_w), UNLABELED, dtype=torch.uint8, device=scores.device)
        conf = make((n, out_h, out_w), 0, dtype=torch.uint8, device=scores.device) if confidence else None
        resample_argmax(
            scores[:, :, top : top + ch, left : left + cw], (vh, vw), confidence=confidence, are_probs=are_probs,
            band_bytes=self.band_bytes, out=labels[:, vy : vy + vh, vx : vx + vw],
            conf_out=conf[:, vy : vy + vh, vx : vx + vw] if conf is not None else None)
        return labels, conf

    def _postprocess(
        self,
        geoms: list[FrameGeometry],
        canvas_hw: tuple[int, int],
        scores: torch.Tensor,
        flows: list[torch.Tensor] | None,
        are_probs: bool,
        return_confidence: bool,
    ) -> list[SegmentationResult]:
        """Crop, resample to the output size, argmax on the device; download uint8 only."""
        # Frames of one geometry (a camera stream) take one resample/argmax/download for all.
        by_geom: dict[FrameGeometry, list[int]] = {}
        for i, geom in enumerate(geoms):
            by_geom.setdefault(geom, []).append(i)
        results: list[SegmentationResult | None] = [None] * len(geoms)
        for geom, index in by_geom.items():
            sel = scores[index[0] : index[-1] + 1] if index == list(range(index[0], index[-1] + 1)) else \
                scores[torch.tensor(index, device=scores.device)]
            labels, conf = self._labels(sel, geom, return_confidence, are_probs)
            labels_np = labels.cpu().numpy()
            conf_np = conf.cpu().numpy() if conf is not None else None
            for j, i in enumerate(index):
                conf_j = conf_np[j] if conf_np is not None else None
                results[i] = SegmentationResult(labels_np[j], conf_j, geometry=geom)
        if flows is not None:  # asked for; an empty list for networks without FAMs
            for i, result in enumerate(results):
                top, left, ch, cw = geoms[i].content
                cropped, strides = [], []
                for flow in flows:
                    gy, gx = flow.shape[-2] / canvas_hw[0], flow.shape[-1] / canvas_hw[1]
                    r0, r1 = math.floor(top * gy), math.ceil((top + ch) * gy)
                    c0, c1 = math.floor(left * gx), math.ceil((left + cw) * gx)
                    cropped.append(flow[i, :, r0:r1, c0:c1].float().contiguous().cpu().numpy())
                    strides.append(canvas_hw[0] / flow.shape[-2])
                result.flows, result.flow_strides = cropped, strides
        return results  # type: ignore[return-value]

    # -- the static pipeline: one compiled region or one CUDA graph per set of frame sizes ----

    def _device_step(self, frames: list[torch.Tensor], geoms: list[FrameGeometry], bgr: bool,
                     confidence: bool) -> list[torch.Tensor]:
        """uint8 frames on the device -> [labels (1, Ho, Wo), (confidence)] per frame, on the device."""
        canvas = self._fill(frames, geoms, self._canvas_hw(geoms[0]), bgr)
        scores = self.backend(canvas)
        outs: list[torch.Tensor] = []
        for i, geom in enumerate(geoms):
            labels, conf = self._labels(scores[i : i + 1], geom, confidence, False)
            outs.append(labels)
            if conf is not None:
                outs.append(conf)
        return outs

    def _segment_static(self, batch: list[np.ndarray], geoms: list[FrameGeometry], bgr: bool, confidence: bool,
                        single: bool) -> SegmentationResult | list[SegmentationResult]:
        key = (tuple(img.shape for img in batch), bgr, confidence)
        step = self._static.get(key)
        if step is None:
            if len(self._static) >= 8:  # camera sets are few; random sizes must not grow memory
                self._static.popitem(last=False)
            step = self._static[key] = _StaticStep(self, [img.shape for img in batch], geoms, bgr, confidence)
        self._static.move_to_end(key)
        outs = step(batch)
        per = 2 if confidence else 1
        results = [SegmentationResult(outs[per * i][0], outs[per * i + 1][0] if confidence else None, geometry=g)
                   for i, g in enumerate(geoms)]
        return results[0] if single else results


class _StaticStep:
    """The whole Segmenter step for one list of frame shapes, compiled or captured (``pipeline``)."""

    def __init__(self, seg: Segmenter, shapes: list[tuple[int, ...]], geoms: list[FrameGeometry], bgr: bool,
                 confidence: bool) -> None:
        self.mode, self.device = seg.pipeline, seg.device
        for geom in geoms:  # build the row tables outside the compiled / captured region
            valid_h, content_h = geom.valid[2], geom.content[2]
            if valid_h != content_h:
                row_table(content_h, valid_h, seg.device)

        def step(*frames: torch.Tensor) -> list[torch.Tensor]:
            return seg._device_step(list(frames), geoms, bgr, confidence)

        self.fn = torch.compile(step, dynamic=False) if self.mode == "compiled" else step
        if self.mode != "cuda_graph":
            return
        self.host_in = [torch.empty(s, dtype=torch.uint8, pin_memory=True) for s in shapes]
        self.dev_in = [torch.empty(s, dtype=torch.uint8, device=self.device) for s in shapes]
        for p in getattr(seg.backend, "module", torch.nn.Module()).parameters():
            p.requires_grad_(False)  # no autocast weight cache inside the captured graph
        with torch.inference_mode():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, allocations) off the capture
                for _ in range(2):
                    outs = self.fn(*self.dev_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.host_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs]
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                for dev, host in zip(self.dev_in, self.host_in):
                    dev.copy_(host, non_blocking=True)
                outs = self.fn(*self.dev_in)
                for host, out in zip(self.host_out, outs):
                    host.copy_(out, non_blocking=True)

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        if self.mode == "cuda_graph":
            for host, img in zip(self.host_in, batch):
                np.copyto(host.numpy(), img)
            self.graph.replay()
            torch.cuda.current_stream(self.device).synchronize()
            return [h.numpy().copy() for h in self.host_out]  # the buffers are reused by the next replay
        with torch.inference_mode():
            frames = [torch.from_numpy(np.ascontiguousarray(img)).to(self.device) for img in batch]
            return [o.cpu().numpy() for o in self.fn(*frames)]
