"""uint8 camera frames -> the normalised network canvas, on the inference device.

The frames go up as uint8 (a quarter of the bytes of float32); conversion to float, the channel
order, the resize policy's window and resize (``geometry``), normalisation and the padding all
run on the device. A canvas is the network input of one or more frames: ``(N, 3, Hc, Wc)`` with
``Hc, Wc`` the network size rounded up to a multiple of ``STRIDE`` (32), zero after
normalisation (= the mean colour) outside each frame's content box.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sfnet_core.checkpoint import STRIDE
from sfnet_core.inference.geometry import FrameGeometry
from sfnet_core.inference.postprocess import row_table

__all__ = ["padded_size", "canvas_size", "DevicePreprocessor"]


def padded_size(hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) rounded up to multiples of ``STRIDE``: the canvas a network input of ``hw`` needs."""
    return math.ceil(hw[0] / STRIDE) * STRIDE, math.ceil(hw[1] / STRIDE) * STRIDE


def canvas_size(geom: FrameGeometry) -> tuple[int, int]:
    """(Hc, Wc) of the canvas a frame of ``geom`` is placed on."""
    return padded_size(geom.network_size)


class DevicePreprocessor:
    """Uploads frames and fills canvases on ``device`` with the network's ``mean`` / ``std`` (0..1 RGB).

    Not thread-safe: it reuses one pinned upload buffer (CUDA).
    """

    def __init__(self, device: torch.device, mean: Sequence[float], std: Sequence[float],
                 memory_format: torch.memory_format) -> None:
        self.device = device
        self.memory_format = memory_format
        # Folding the 1/255 into the statistics saves one pass over every pixel.
        self._mean = torch.tensor([255.0 * m for m in mean], device=device).view(3, 1, 1)
        self._std = torch.tensor([255.0 * s for s in std], device=device).view(3, 1, 1)
        self._staging: torch.Tensor | None = None  # pinned upload buffer (CUDA), grown on demand

    def upload(self, images: list[np.ndarray]) -> list[torch.Tensor]:
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

    def fill(self, frames: list[torch.Tensor], geoms: list[FrameGeometry], canvas_hw: tuple[int, int],
             bgr: bool) -> torch.Tensor:
        """uint8 (H, W, 3) device tensors -> normalised canvas (N, 3, Hc, Wc) float32 (see the module docstring)."""
        canvas_h, canvas_w = canvas_hw
        canvas = torch.empty((len(frames), 3, canvas_h, canvas_w), device=self.device,
                             memory_format=self.memory_format)
        if any(g.content != (0, 0, canvas_h, canvas_w) for g in geoms):
            # Zeros after normalisation = the mean colour: padding and letterbox bands look like "nothing".
            # (A frame covering its whole canvas, the usual camera at a multiple of 32, skips this pass.)
            canvas.zero_()
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
                region.copy_(_shrink_rows(src, ch, cw))
            else:
                region.copy_(F.interpolate(src.unsqueeze(0).float(), size=(ch, cw), mode="bilinear",
                                           align_corners=False)[0])
            region.sub_(self._mean).div_(self._std)
        return canvas


def _shrink_rows(src: torch.Tensor, h: int, w: int) -> torch.Tensor:
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
