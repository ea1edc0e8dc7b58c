"""Scores -> labels (and confidence) at another resolution, in row bands of bounded memory.

Upsampling every class score to the full frame before the argmax needs ``N x C x H x W`` floats:
a 4000x3000 frame with 19 classes is 0.9 GB, 1.8 GB with the softmax for the confidence. Here
the bilinear resampling is separable and the argmax is taken band by band:

1. the width pass resizes every *network* row to the output width with ``F.interpolate``
   (``N x C x h x W`` floats, h the network height);
2. the height pass forms each output row as ``w0 * row[i0] + w1 * row[i1]`` (two multiplies and an
   add, each rounded once) for a band of output rows, reduces the band to labels / confidence,
   and moves on. A band holds at most ``band_bytes`` of scores.

Every output element is computed by the same element-wise operations whatever the band height,
so the labels are bit-for-bit the same for any ``band_bytes`` (the tests check it on odd sizes
and scale factors). They are the labels of a 2-D bilinear resize with PyTorch's
``align_corners=False`` coordinates; the last float bit can differ from ``F.interpolate``'s
fused 2-D kernel (whose rounding itself depends on the memory format and the tensor's shape), so
an argmax tie can fall the other way on about 1 pixel in 10^5.

``frame_labels`` applies it to the frames of one ``FrameGeometry``: the content box of the canvas
resampled onto the output's valid window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sfnet_core.inference.geometry import UNLABELED, FrameGeometry

__all__ = ["DEFAULT_BAND_BYTES", "RowTable", "row_table", "resample_argmax", "frame_labels"]

DEFAULT_BAND_BYTES = {"cpu": 4 << 20, "cuda": 512 << 20}


class RowTable:
    """Source rows and weights of bilinear resampling ``n_in -> n_out`` rows (align_corners=False).

    ``i0``, ``i1`` (n_out,) int64 source rows; ``w0``, ``w1`` (n_out, 1, 1, 1) float32 weights.
    """

    def __init__(self, n_in: int, n_out: int, device: torch.device) -> None:
        # float32 coordinates, as PyTorch's own kernels compute them (its scale is float(n_in) / n_out):
        # far from the origin a float32 coordinate moves in steps of 3e-5 pixel, and computing it
        # in float64 instead would shift the weights by that much against F.interpolate's.
        scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out
        dst = torch.arange(n_out, dtype=torch.float32)
        src = (scale * (dst + 0.5) - 0.5).clamp_(min=0.0)
        i0 = src.floor().long().clamp_(max=n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        w1 = (src - i0).clamp_(0.0, 1.0).float()
        self.n_in, self.n_out = n_in, n_out
        self.i0, self.i1 = i0.to(device), i1.to(device)
        self.w0 = (1.0 - w1).view(-1, 1, 1, 1).to(device)
        self.w1 = w1.view(-1, 1, 1, 1).to(device)


_TABLES: dict[tuple[int, int, str], RowTable] = {}


def row_table(n_in: int, n_out: int, device: torch.device) -> RowTable:
    """A cached ``RowTable`` (camera streams reuse the same few sizes)."""
    key = (n_in, n_out, str(device))
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) > 64:  # random frame sizes must not grow memory without bound
            _TABLES.clear()
        table = _TABLES[key] = RowTable(n_in, n_out, device)
    return table


def _reduce(band: torch.Tensor, dim: int, confidence: bool | str,
            are_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (and uint8 confidence) of a band of scores, the class axis ``dim`` removed.

    ``confidence``: False, True / ``"max"`` (the largest softmax probability) or ``"margin"``
    (the largest minus the second largest: 0 where two classes tie, the usual uncertainty score
    for choosing frames to label).

    On the CPU, three whole-band passes instead of a loop over the class planes: the maximum
    (``amax`` across the class axis vectorises along the contiguous rows), the planes that reach it
    weighted ``C - c``, and the largest weight: the *first* class reaching the maximum, as
    ``argmax`` picks it (same labels as the per-plane running maximum it replaces, tested; measured
    on 19 x 512 x 1024 scores, one thread: 34 -> 15 ms NCHW, 63 -> 23 ms channels_last, where
    ``argmax`` across the strided class axis of NCHW takes over 80 ms). A channels_last band is
    made contiguous first (one copy of the band: interleaved classes defeat the vectorisation).
    The confidence keeps the plane-by-plane sum in class order, so its rounding is unchanged. On
    CUDA one ``max`` kernel is cheaper.
    """
    if band.device.type == "cuda" or band.shape[dim] > 255:
        if not confidence:
            return band.argmax(dim), None
        band = band.float()
        best, labels = band.max(dim)
        conf = best if are_probs else (band - best.unsqueeze(dim)).exp_().sum(dim).reciprocal_()
        if confidence == "margin" and band.shape[dim] > 1:
            second = band.topk(2, dim).values.select(dim, 1)
            conf = conf - second if are_probs else conf * (1 - (second - best).exp())
        return labels, conf.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    band = band.float()
    if band.stride(-1) != 1:
        band = band.contiguous()
    classes = band.shape[dim]
    best = band.amax(dim)
    shape = [1] * band.dim()
    shape[dim] = classes
    weights = torch.arange(classes, 0, -1, dtype=torch.uint8, device=band.device).view(shape)
    at_max = band == best.unsqueeze(dim)
    first = torch.mul(at_max, weights).amax(dim)
    # NaN scores reach no maximum (weight 0): the clamp keeps the label a valid class.
    labels = torch.sub(classes, first).to(torch.uint8).clamp_(max=classes - 1)
    if not confidence:
        return labels, None
    if are_probs:
        conf = best
    else:  # max softmax = exp(0) / sum(exp(x - max)), summed in class order
        planes = band.sub(best.unsqueeze(dim)).exp_().unbind(dim)
        total = planes[0].clone()
        for plane in planes[1:]:
            total.add_(plane)
        conf = total.reciprocal_()
    if confidence == "margin":
        # the runner-up: the maximum of the other classes; a tie for the first place is margin 0
        second = band.masked_fill(at_max, float("-inf")).amax(dim)
        conf = conf - second.clamp(min=0) if are_probs else conf * (1 - (second - best).exp())
        conf = conf.masked_fill_(at_max.sum(dim) > 1, 0)
    return labels, conf.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def resample_argmax(
    scores: torch.Tensor,
    size: tuple[int, int],
    confidence: bool | str = False,
    are_probs: bool = False,
    band_bytes: int = DEFAULT_BAND_BYTES["cpu"],
    out: torch.Tensor | None = None,
    conf_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bilinear resize of ``scores`` (N, C, h, w) to ``size`` (H, W), then the argmax over classes.

    Returns labels (N, H, W) uint8 and, with ``confidence``, the max softmax (or, with
    ``are_probs``, the max of the resized probabilities; ``confidence="margin"``: the largest
    minus the second largest) * 255 as (N, H, W) uint8. ``out`` /
    ``conf_out`` (N, H, W) uint8 views may be given to write into (e.g. a window of a larger
    label image). Peak extra memory: ``N*C*h*W`` floats for the width pass plus about two
    bands of ``band_bytes``, never ``N*C*H*W``.
    """
    n, c, h, w = scores.shape
    big_h, big_w = int(size[0]), int(size[1])
    device = scores.device
    if out is None:
        out = torch.empty((n, big_h, big_w), dtype=torch.uint8, device=device)
    if confidence and conf_out is None:
        conf_out = torch.empty((n, big_h, big_w), dtype=torch.uint8, device=device)
    rows = max(1, int(band_bytes) // max(1, n * c * big_w * 4))
    if (h, w) == (big_h, big_w):  # no resampling: reduce the scores in place, band by band
        for y0 in range(0, big_h, rows):
            y1 = min(big_h, y0 + rows)
            labels, conf = _reduce(scores[:, :, y0:y1], 1, confidence, are_probs)
            out[:, y0:y1] = labels
            if conf is not None and conf_out is not None:
                conf_out[:, y0:y1] = conf
        return out, conf_out
    # Width pass, rows leading: (h, N, C, W), so a band gathers whole contiguous rows.
    rows_first = scores.float().permute(2, 0, 1, 3)
    if w != big_w:
        flat = rows_first.reshape(h * n * c, 1, 1, w)
        rows_first = F.interpolate(flat, size=(1, big_w), mode="bilinear", align_corners=False).view(h, n, c, big_w)
    else:
        rows_first = rows_first.contiguous()
    table = row_table(h, big_h, device) if h != big_h else None
    for y0 in range(0, big_h, rows):
        y1 = min(big_h, y0 + rows)
        if table is None:
            band = rows_first[y0:y1]
        else:
            band = rows_first.index_select(0, table.i0[y0:y1]).mul_(table.w0[y0:y1])
            band.add_(rows_first.index_select(0, table.i1[y0:y1]).mul_(table.w1[y0:y1]))
        labels, conf = _reduce(band, 2, confidence, are_probs)  # (bh, N, W)
        out[:, y0:y1] = labels.permute(1, 0, 2)
        if conf is not None and conf_out is not None:
            conf_out[:, y0:y1] = conf.permute(1, 0, 2)
    return out, conf_out


def frame_labels(scores: torch.Tensor, geom: FrameGeometry, confidence: bool | str, are_probs: bool,
                 band_bytes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Canvas scores (n, C, Hc, Wc) of frames sharing ``geom`` -> labels and (with ``confidence``)
    confidence (n, Ho, Wo) uint8 on the device, at ``geom.output_size``: the content box
    resampled onto the ``valid`` window, ``UNLABELED`` / 0 around it."""
    n = scores.shape[0]
    top, left, ch, cw = geom.content
    out_h, out_w = geom.output_size
    vy, vx, vh, vw = geom.valid
    size = (n, out_h, out_w)
    if (vy, vx, vh, vw) == (0, 0, out_h, out_w):  # every pixel is written below
        labels = torch.empty(size, dtype=torch.uint8, device=scores.device)
        conf = torch.empty(size, dtype=torch.uint8, device=scores.device) if confidence else None
    else:
        labels = torch.full(size, UNLABELED, dtype=torch.uint8, device=scores.device)
        conf = torch.zeros(size, dtype=torch.uint8, device=scores.device) if confidence else None
    resample_argmax(
        scores[:, :, top : top + ch, left : left + cw], (vh, vw), confidence=confidence, are_probs=are_probs,
        band_bytes=band_bytes, out=labels[:, vy : vy + vh, vx : vx + vw],
        conf_out=conf[:, vy : vy + vh, vx : vx + vw] if conf is not None else None)
    return labels, conf
