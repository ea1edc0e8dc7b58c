"""Test-time inference on normalised tensors, shared by the ``Segmenter`` and ``sfnet-eval``.

``predict_logits`` runs a network whole-image, in overlapping tiles (sliding window) and/or at
several scales with a horizontal flip (the paper's protocol, Table 4), and averages softmax
probabilities. Inputs are padded to multiples of ``STRIDE`` so every decoder level stays aligned.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sfnet_core.checkpoint import STRIDE

# The network as called here: an nn.Module, or a backend (ONNX Runtime) that is only callable.
Network = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["pad_to_multiple", "predict_logits"]


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE) -> torch.Tensor:
    """Zero-pad (N, C, H, W) on the bottom / right up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _whole(model: Network, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> logits (N, C, H, W), running the network on a 32-aligned padded copy."""
    h, w = x.shape[-2:]
    out = model(pad_to_multiple(x))
    return out[..., :h, :w]


def _sliding(model: Network, x: torch.Tensor, window: tuple[int, int], stride_ratio: float) -> torch.Tensor:
    """(N, 3, H, W) -> logits (N, C, H, W) averaged over overlapping ``window`` tiles."""
    wh, ww = window
    h, w = x.shape[-2:]
    # Inputs smaller than the window are padded (mean colour) so every tile has the window size.
    x = F.pad(x, (0, max(ww - w, 0), 0, max(wh - h, 0)))
    big_h, big_w = x.shape[-2:]
    sh, sw = max(1, math.ceil(wh * stride_ratio)), max(1, math.ceil(ww * stride_ratio))
    ys = sorted({min(r * sh, big_h - wh) for r in range(math.ceil((big_h - wh) / sh) + 1)})
    xs = sorted({min(c * sw, big_w - ww) for c in range(math.ceil((big_w - ww) / sw) + 1)})
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, big_h, big_w), device=x.device, dtype=torch.float32)
    for y0 in ys:
        for x0 in xs:
            tile = _whole(model, x[..., y0 : y0 + wh, x0 : x0 + ww]).float()
            if total is None:
                total = x.new_zeros((x.shape[0], tile.shape[1], big_h, big_w), dtype=torch.float32)
            total[..., y0 : y0 + wh, x0 : x0 + ww] += tile
            count[..., y0 : y0 + wh, x0 : x0 + ww] += 1
    assert total is not None
    return (total / count)[..., :h, :w]


def predict_logits(
    model: Network,
    batch: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride_ratio: float = 2 / 3,
) -> torch.Tensor:
    """Test-time inference shared by the Segmenter and ``sfnet-eval``.

    ``batch``: (N, 3, H, W) normalised float. Returns (N, C, H, W) float32 softmax probabilities
    averaged over every scale (bilinear resize of the input by each factor), the horizontal flip
    (when ``flip``) and, with ``window=(h, w)``, overlapping tiles (stride ``stride_ratio`` of the
    window; tile logits are averaged before the softmax). Each pass's logits are resized back to
    (H, W) before the softmax (the paper's multi-scale + flip protocol, Table 4). The caller owns
    ``torch.inference_mode`` / autocast; the model must be in eval mode.
    """
    if batch.ndim != 4:
        raise ValueError(f"predict_logits: expected an (N, 3, H, W) batch, got shape {tuple(batch.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"predict_logits: scales must be positive, got {tuple(scales)}")
    if window is not None and (len(window) != 2 or min(window) < 1):
        raise ValueError(f"predict_logits: window must be (height, width) > 0, got {window}")
    if not 0 < stride_ratio <= 1:
        raise ValueError(f"predict_logits: stride_ratio must be in (0, 1], got {stride_ratio}")
    h, w = batch.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = batch if size == (h, w) else F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = _sliding(model, xi, window, stride_ratio) if window else _whole(model, xi)
            if flipped:
                logits = logits.flip(-1)
            logits = logits.float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total.add_(probs)
            passes += 1
    assert total is not None
    return total.div_(passes)
