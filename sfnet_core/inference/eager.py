"""The eager pipeline: any frame sizes, multi-scale + flip, flows; one forward per canvas size.

Images whose canvases are the same go through one batched forward (several cameras at one
``input_size``: one forward per call). Images whose canvases differ run as one forward per
canvas size rather than being padded further onto a common canvas: the network's global context
(pyramid pooling over the whole canvas) would otherwise see the extra border, so a frame's
labels would depend on what else was in the batch (on a randomly initialised ResNet-18 SFNet, a
64x128 image padded to 96x160 changed 53% of its labels). This way every image gets exactly the
labels it gets alone.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sfnet_core.inference.backends import InferenceBackend
from sfnet_core.inference.geometry import FrameGeometry
from sfnet_core.inference.postprocess import frame_labels
from sfnet_core.inference.predict import predict_logits
from sfnet_core.inference.preprocess import DevicePreprocessor, canvas_size
from sfnet_core.inference.result import SegmentationResult

__all__ = ["EagerPipeline"]


class EagerPipeline:
    """uint8 frames -> ``SegmentationResult``s through ``backend``, step by step on its device."""

    def __init__(self, backend: InferenceBackend, prep: DevicePreprocessor, band_bytes: int) -> None:
        self.backend, self.prep, self.band_bytes = backend, prep, band_bytes

    def __call__(self, batch: list[np.ndarray], geoms: list[FrameGeometry], bgr: bool, confidence: bool | str,
                 return_flows: bool | str, scales: tuple[float, ...], flip: bool) -> list[SegmentationResult]:
        """One result per frame of ``batch`` (see ``Segmenter.segment``); requests already checked."""
        tta = scales != (1.0,) or flip
        groups: dict[tuple[int, int], list[int]] = {}
        for i, geom in enumerate(geoms):
            groups.setdefault(canvas_size(geom), []).append(i)
        results: dict[int, SegmentationResult] = {}
        with torch.inference_mode():
            for canvas_hw, index in groups.items():
                sub_geoms = [geoms[i] for i in index]
                canvas = self.prep.fill(self.prep.upload([batch[i] for i in index]), sub_geoms, canvas_hw, bgr)
                flows: list[torch.Tensor] | None = None
                if tta:
                    # predict_logits only calls its model, but its hint says nn.Module (predict.py)
                    scores = predict_logits(self.backend, canvas, scales, flip)
                elif return_flows:
                    scores, flows = self.backend.forward_with_flows(canvas)
                    if return_flows == "finest":
                        flows = flows[-1:]
                else:
                    scores = self.backend(canvas)
                out = self._results(sub_geoms, canvas_hw, scores, flows, tta, confidence)
                results.update(zip(index, out))
        return [results[i] for i in range(len(batch))]

    def _results(self, geoms: list[FrameGeometry], canvas_hw: tuple[int, int], scores: torch.Tensor,
                 flows: list[torch.Tensor] | None, are_probs: bool, confidence: bool | str,
                 ) -> list[SegmentationResult]:
        """Crop, resample to the output size, argmax on the device; download uint8 only."""
        # Frames of one geometry (a camera stream) take one resample/argmax/download for all.
        by_geom: dict[FrameGeometry, list[int]] = {}
        for i, geom in enumerate(geoms):
            by_geom.setdefault(geom, []).append(i)
        results: dict[int, SegmentationResult] = {}
        for geom, index in by_geom.items():
            sel = scores[index[0] : index[-1] + 1] if index == list(range(index[0], index[-1] + 1)) else \
                scores[torch.tensor(index, device=scores.device)]
            labels, conf = frame_labels(sel, geom, confidence, are_probs, self.band_bytes)
            labels_np = labels.cpu().numpy()
            conf_np = conf.cpu().numpy() if conf is not None else None
            for j, i in enumerate(index):
                results[i] = SegmentationResult(labels_np[j], conf_np[j] if conf_np is not None else None,
                                                geometry=geom)
        ordered = [results[i] for i in range(len(geoms))]
        if flows is not None:  # asked for; an empty list for networks without FAMs
            for i, (geom, result) in enumerate(zip(geoms, ordered)):
                result.flows, result.flow_strides = _crop_flows(flows, i, geom, canvas_hw)
        return ordered


def _crop_flows(flows: list[torch.Tensor], i: int, geom: FrameGeometry,
                canvas_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[float]]:
    """Frame ``i``'s flows (2, h, w) float32, each cropped to the content box on its own grid,
    and the network-input pixels per cell of each."""
    top, left, ch, cw = geom.content
    cropped, strides = [], []
    for flow in flows:
        gy, gx = flow.shape[-2] / canvas_hw[0], flow.shape[-1] / canvas_hw[1]
        r0, r1 = math.floor(top * gy), math.ceil((top + ch) * gy)
        c0, c1 = math.floor(left * gx), math.ceil((left + cw) * gx)
        cropped.append(flow[i, :, r0:r1, c0:c1].float().contiguous().cpu().numpy())
        strides.append(canvas_hw[0] / flow.shape[-2])
    return cropped, strides
