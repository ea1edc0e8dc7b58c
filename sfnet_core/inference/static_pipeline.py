"""The static pipelines: the whole Segmenter step as one compiled region or one CUDA graph.

At a fixed ``input_size`` every shape of the step (upload, normalise, resize, network, resample,
argmax) is known once the frame sizes are: ``"compiled"`` makes the step one ``torch.compile``
region with static shapes (CPU or CUDA); ``"cuda_graph"`` captures it, *including* the upload
from pinned memory and the download, as one CUDA graph replayed per call. A step is built per
list of frame shapes (a set of cameras) on first use and kept in a small LRU.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from sfnet_core.inference.backends import InferenceBackend
from sfnet_core.inference.geometry import FrameGeometry
from sfnet_core.inference.postprocess import frame_labels, row_table
from sfnet_core.inference.preprocess import DevicePreprocessor, canvas_size
from sfnet_core.inference.result import SegmentationResult

__all__ = ["StaticPipelines"]

MAX_STEPS = 8  # camera sets are few; random frame sizes must not grow memory without bound


class StaticPipelines:
    """``mode`` (``"compiled"`` or ``"cuda_graph"``) steps, one per (frame shapes, bgr, confidence)."""

    def __init__(self, mode: str, backend: InferenceBackend, prep: DevicePreprocessor, band_bytes: int) -> None:
        self.mode, self.backend, self.prep, self.band_bytes = mode, backend, prep, band_bytes
        self._steps: OrderedDict[tuple, _StaticStep] = OrderedDict()

    def __len__(self) -> int:
        """How many steps are built (compiled or captured) now."""
        return len(self._steps)

    def __call__(self, batch: list[np.ndarray], geoms: list[FrameGeometry], bgr: bool,
                 confidence: bool) -> list[SegmentationResult]:
        key = (tuple(img.shape for img in batch), bgr, confidence)
        step = self._steps.get(key)
        if step is None:
            if len(self._steps) >= MAX_STEPS:
                self._steps.popitem(last=False)
            step = self._steps[key] = _StaticStep(self, [img.shape for img in batch], geoms, bgr, confidence)
        self._steps.move_to_end(key)
        outs = step(batch)
        per = 2 if confidence else 1
        return [SegmentationResult(outs[per * i][0], outs[per * i + 1][0] if confidence else None, geometry=g)
                for i, g in enumerate(geoms)]

    def device_step(self, frames: list[torch.Tensor], geoms: list[FrameGeometry], bgr: bool,
                    confidence: bool) -> list[torch.Tensor]:
        """uint8 frames on the device -> [labels (1, Ho, Wo), (confidence)] per frame, on the device."""
        canvas = self.prep.fill(frames, geoms, canvas_size(geoms[0]), bgr)
        scores = self.backend(canvas)
        outs: list[torch.Tensor] = []
        for i, geom in enumerate(geoms):
            labels, conf = frame_labels(scores[i : i + 1], geom, confidence, False, self.band_bytes)
            outs.append(labels)
            if conf is not None:
                outs.append(conf)
        return outs


class _StaticStep:
    """The whole step for one list of frame shapes, compiled or captured (``pipelines.mode``)."""

    def __init__(self, pipelines: StaticPipelines, shapes: list[tuple[int, ...]], geoms: list[FrameGeometry],
                 bgr: bool, confidence: bool) -> None:
        self.mode, self.device = pipelines.mode, pipelines.prep.device
        for geom in geoms:  # build the row tables outside the compiled / captured region
            valid_h, content_h = geom.valid[2], geom.content[2]
            if valid_h != content_h:
                row_table(content_h, valid_h, self.device)

        def step(*frames: torch.Tensor) -> list[torch.Tensor]:
            return pipelines.device_step(list(frames), geoms, bgr, confidence)

        self.fn = torch.compile(step, dynamic=False) if self.mode == "compiled" else step
        if self.mode != "cuda_graph":
            return
        self.host_in = [torch.empty(s, dtype=torch.uint8, pin_memory=True) for s in shapes]
        self.dev_in = [torch.empty(s, dtype=torch.uint8, device=self.device) for s in shapes]
        for p in getattr(pipelines.backend, "module", torch.nn.Module()).parameters():
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
