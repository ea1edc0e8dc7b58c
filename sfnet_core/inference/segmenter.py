"""Run a trained SFNet on camera images: ``Segmenter``.

Everything between the uint8 upload and the uint8 download runs on the inference device:
conversion to float, normalisation, optional resize to the network input size, padding to a
multiple of 32, the forward pass, upsampling of the scores to the original resolution and the
argmax. Only the label maps (and, on request, confidences and flow fields) come back.

Batching: images are resized to ``input_size`` (when set), then padded, top-left aligned, with
zeros after normalisation (= the mean colour) to the next multiple of 32, and every image whose
padded canvas is the same goes through one batched forward; scores are cropped back before the
upsampling to the original size. With ``input_size`` set, or for a camera stream, that is one
forward per call. Images whose padded canvases differ run as one forward per canvas size rather
than being padded further onto a common canvas: the network's global context (pyramid pooling
over the whole canvas) would otherwise see the extra border, so a frame's labels would depend on
what else was in the batch (on a randomly initialised ResNet-18 SFNet, a 64x128 image padded to
96x160 changed 53% of its labels). This way every image gets exactly the labels it gets alone.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.devices import autocast, resolve_device, resolve_precision
from sfnet_core.inference.predict import STRIDE, predict_logits

__all__ = ["SegmentationResult", "Segmenter"]

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    labels: np.ndarray  # (H, W) uint8 train ids at the original resolution
    confidence: np.ndarray | None = None  # (H, W) uint8, max softmax * 255 (when asked)
    flows: list[np.ndarray] | None = None  # per FAM, coarse to fine, (2, h, w) float32 (when asked)


class Segmenter:
    """A network ready to label camera images: ``segment(images) -> SegmentationResult(s)``.

    ``input_size=(H, W)`` resizes every image to the network input size (the labels still come
    back at the original resolution); ``None`` runs at the native size. ``scales`` / ``flip``
    turn on multi-scale + flip inference (paper, Table 4) for every call; ``segment`` can
    override them per call.

    The Segmenter takes over the model (eval mode, moved to the device). It is not thread-safe
    (it reuses an upload buffer): use one per thread, or call it from one thread.
    """

    def __init__(
        self,
        model: torch.nn.Module,
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
    ) -> None:
        self.classes = classes
        self.device = resolve_device(device, "Segmenter: device")
        self.precision = resolve_precision(precision, self.device, "Segmenter: precision")
        if input_size is not None:
            if len(input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in input_size):
                raise ValueError(f"Segmenter: input_size must be (height, width) positive ints, got {input_size!r}")
            input_size = (int(input_size[0]), int(input_size[1]))
        self.input_size = input_size
        self.channels_last = channels_last
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Segmenter: mean and std need 3 values, got {mean!r}, {std!r}")
        # Folding the 1/255 into the statistics saves one pass over every pixel.
        self._mean = torch.tensor([255.0 * m for m in mean], device=self.device).view(3, 1, 1)
        self._std = torch.tensor([255.0 * s for s in std], device=self.device).view(3, 1, 1)
        self.num_classes = int(getattr(model, "num_classes", classes.num_classes))
        if self.num_classes != classes.num_classes:
            raise ValueError(
                f"Segmenter: the model predicts {self.num_classes} classes, the class table has {classes.num_classes}"
            )
        # The Segmenter owns the model from here: eval mode, on the device (in place, as
        # nn.Module.to is). Gradients need no switching off: every forward runs in inference_mode.
        model = model.eval().to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self._staging: torch.Tensor | None = None  # pinned upload buffer (CUDA), grown on demand
        self.checkpoint_path: Path | None = None
        self.model_name: str | None = getattr(model, "variant", None)
        if self.device.type == "cuda":
            # Camera streams have a fixed size: let cuDNN pick the fastest kernels per shape.
            torch.backends.cudnn.benchmark = True
        log.info(
            "Segmenter: device %s, precision %s, input size %s, channels_last %s, compile %s",
            self.device, self.precision, input_size or "native", channels_last, compile,
        )
        if warmup:
            h, w = input_size or (256, 512)
            self.segment(np.zeros((h, w, 3), np.uint8))

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
    ) -> Segmenter:
        """Load a checkpoint (see ``sfnet_core.checkpoint``) and get ready to segment."""
        ckpt = load_checkpoint(path, expected_num_classes=expected_num_classes)
        segmenter = cls(
            ckpt.build_model(), ckpt.classes, ckpt.mean, ckpt.std, device=device, precision=precision,
            input_size=input_size, compile=compile, warmup=warmup, channels_last=channels_last,
            scales=scales, flip=flip,
        )
        segmenter.checkpoint_path = ckpt.path
        segmenter.model_name = ckpt.model_name
        return segmenter

    # -- preprocessing ---------------------------------------------------------------------

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

    def _preprocess(
        self, images: list[np.ndarray], sizes: list[tuple[int, int]], canvas_hw: tuple[int, int], bgr: bool
    ) -> torch.Tensor:
        """Images -> normalised canvas (N, 3, Hc, Wc), image i resized to ``sizes[i]`` at top left."""
        canvas_h, canvas_w = canvas_hw
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # Zeros after normalisation = the mean colour: padding looks like "nothing" to the network.
        canvas = torch.empty((len(images), 3, canvas_h, canvas_w), device=self.device, memory_format=fmt).zero_()
        for i, (u8, (h, w)) in enumerate(zip(self._upload(images), sizes)):
            src = u8.permute(2, 0, 1)  # (3, H, W) view, no copy
            if bgr:
                src = src.flip(0)
            region = canvas[i, :, :h, :w]
            if src.shape[1:] == (h, w):
                region.copy_(src)  # uint8 -> float32 conversion happens in this copy
            else:
                region.copy_(F.interpolate(src.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False)[0])
            region.sub_(self._mean).div_(self._std)
        return canvas

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
        return_flows: bool = False,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Label one (H, W, 3) uint8 image (-> one result) or a list (-> a list), batched.

        ``bgr``: the images are BGR (OpenCV order). ``scales`` / ``flip`` override the
        Segmenter's multi-scale + flip setting for this call. Flows (one (2, h, w) float32 array
        per FAM, coarse to fine, in pixels of their own grid, cropped to the image's area of the
        padded canvas) need single-scale, unflipped inference.
        """
        batch, single = self._check(images)
        scales = self.scales if scales is None else tuple(float(s) for s in scales)
        flip = self.flip if flip is None else bool(flip)
        tta = scales != (1.0,) or flip
        if return_flows and tta:
            raise ValueError("segment(): return_flows needs single-scale inference without flip (scales=(1.0,), flip=False)")
        sizes = [self.input_size or img.shape[:2] for img in batch]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault((math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE), []).append(i)
        results: list[SegmentationResult] = [None] * len(batch)  # type: ignore[list-item]
        with torch.inference_mode():
            for canvas_hw, index in groups.items():
                sub, sub_sizes = [batch[i] for i in index], [sizes[i] for i in index]
                canvas = self._preprocess(sub, sub_sizes, canvas_hw, bgr)
                flows: list[torch.Tensor] | None = None
                with autocast(self.device, self.precision):
                    if tta:
                        scores = predict_logits(self.model, canvas, scales, flip)  # probabilities
                    elif return_flows:
                        scores, flows = self.model(canvas, return_flows=True)
                    else:
                        scores = self.model(canvas)
                out = self._postprocess(sub, sub_sizes, canvas_hw, scores, flows, tta, return_confidence)
                for i, result in zip(index, out):
                    results[i] = result
        return results[0] if single else results

    def _postprocess(
        self,
        batch: list[np.ndarray],
        sizes: list[tuple[int, int]],
        canvas_hw: tuple[int, int],
        scores: torch.Tensor,
        flows: list[torch.Tensor] | None,
        are_probs: bool,
        return_confidence: bool,
    ) -> list[SegmentationResult]:
        """Crop, upsample to the original size, argmax on the device; download uint8 only."""
        originals = [img.shape[:2] for img in batch]
        # Same-size batches (a camera stream) take one crop/upsample/argmax/download for all.
        groups = [list(range(len(batch)))] if len(set(originals)) == 1 and len(set(sizes)) == 1 else [[i] for i in range(len(batch))]
        results: list[SegmentationResult | None] = [None] * len(batch)
        for group in groups:
            (h, w), (oh, ow) = sizes[group[0]], originals[group[0]]
            sel = scores[group[0] : group[-1] + 1, :, :h, :w]
            if (h, w) != (oh, ow):
                sel = F.interpolate(sel.float(), size=(oh, ow), mode="bilinear", align_corners=False)
            if return_confidence:
                probs = sel.float() if are_probs else sel.float().softmax(1)
                conf, labels = probs.max(1)
                conf_np = conf.mul_(255).round_().to(torch.uint8).cpu().numpy()
            else:
                labels = sel.argmax(1)
            labels_np = labels.to(torch.uint8).cpu().numpy()
            for j, i in enumerate(group):
                results[i] = SegmentationResult(labels_np[j], conf_np[j] if return_confidence else None)
        if flows is not None:  # asked for; an empty list for networks without FAMs
            for i, result in enumerate(results):
                h, w = sizes[i]
                cropped = []
                for flow in flows:
                    fh = math.ceil(h * flow.shape[-2] / canvas_hw[0])
                    fw = math.ceil(w * flow.shape[-1] / canvas_hw[1])
                    cropped.append(flow[i, :, :fh, :fw].float().contiguous().cpu().numpy())
                result.flows = cropped
        return results  # type: ignore[return-value]
