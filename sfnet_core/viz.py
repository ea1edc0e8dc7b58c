"""Pictures of what the network sees: colour label maps, overlays, masks and flow fields.

All functions take and return numpy arrays; colour images are RGB uint8.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["colorize", "overlay", "class_masks", "flow_to_color", "make_colorwheel", "image_strip"]


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 train ids -> (H, W, 3) uint8 colours via the (256, 3) palette (one LUT gather)."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"colorize: expected an (H, W) uint8 label map, got shape {labels.shape}, dtype {labels.dtype}")
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f"colorize: expected a (256, 3) palette (ClassTable.palette()), got {palette.shape}")
    return palette[labels]


def overlay(image_rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour label image over the camera image: (1 - alpha) * image + alpha * color."""
    if image_rgb.shape != color.shape or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"overlay: image {image_rgb.shape} and colour {color.shape} must be the same (H, W, 3)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(image_rgb.astype(np.uint8, copy=False), 1.0 - alpha, color.astype(np.uint8, copy=False), alpha, 0.0)


def class_masks(labels: np.ndarray, class_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """One (H, W) uint8 mask per requested class: 255 where ``labels == id``, else 0."""
    if labels.ndim != 2:
        raise ValueError(f"class_masks: expected an (H, W) label map, got shape {labels.shape}")
    # bool -> uint8 is a view (0/1); times 255 stays in uint8 range.
    return {name: (labels == cid).view(np.uint8) * np.uint8(255) for name, cid in class_ids.items()}


def make_colorwheel() -> np.ndarray:
    """The Middlebury flow colour wheel (Baker et al., IJCV 2011): (55, 3) float RGB in 0..255.

    Hue segments red->yellow (15), yellow->green (6), green->cyan (4), cyan->blue (11),
    blue->magenta (13), magenta->red (6): more entries where the eye separates hues better.
    """
    segments = [15, 6, 4, 11, 13, 6]  # RY, YG, GC, CB, BM, MR
    wheel = np.zeros((sum(segments), 3))
    # (channel held at 255, channel ramping, ramp up?) for each segment, in order.
    plan = [(0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True), (0, 2, False)]
    start = 0
    for n, (full, ramp, up) in zip(segments, plan):
        steps = np.floor(255 * np.arange(n) / n)
        wheel[start : start + n, full] = 255
        wheel[start : start + n, ramp] = steps if up else 255 - steps
        start += n
    return wheel


_WHEEL = make_colorwheel()


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(2, h, w) flow (x then y, y down) -> (h, w, 3) uint8 RGB, as in the paper's Figs. 2 and 5.

    Hue encodes the direction (right = red, down = yellow, left = cyan/blue, up = violet),
    saturation the magnitude divided by ``max_magnitude`` (default: the field's maximum);
    zero flow is white. Non-finite vectors are drawn as zero.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow_to_color: expected a (2, h, w) flow field, got shape {flow.shape}")
    # nan_to_num: unknown vectors are drawn as zero; "+ 0.0" turns -0.0 into 0.0 so a purely
    # horizontal vector always lands at the start of the wheel (arctan2 is signed-zero aware).
    u = np.nan_to_num(flow[0], nan=0.0, posinf=0.0, neginf=0.0) + 0.0
    v = np.nan_to_num(flow[1], nan=0.0, posinf=0.0, neginf=0.0) + 0.0
    rad = np.hypot(u, v)
    scale = float(rad.max()) if max_magnitude is None else float(max_magnitude)
    rad = rad / max(scale, 1e-9)
    ncols = len(_WHEEL)
    angle = np.arctan2(-v, -u) / np.pi  # -1..1; -1 (pointing right) is the start of the wheel (red)
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    frac = (fk - k0)[..., None]
    col = ((1 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]) / 255.0
    inside = (rad <= 1)[..., None]
    # Inside the unit disc: desaturate towards white with decreasing magnitude; beyond: darken.
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    return np.floor(255 * col).astype(np.uint8)


def image_strip(
    panels: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    height: int | None = None,
) -> np.ndarray:
    """Side-by-side (H, sum W, 3) uint8 image of ``panels``, each captioned with ``labels``.

    Panels may be RGB (h, w, 3) or grey (h, w) uint8 and of different sizes: each is resized to
    ``height`` (default: the first panel's) keeping its aspect ratio (nearest neighbour, so label
    maps and flow colours stay crisp).
    """
    if not panels:
        raise ValueError("image_strip: no panels")
    if labels is not None and len(labels) != len(panels):
        raise ValueError(f"image_strip: {len(panels)} panels but {len(labels)} captions")
    height = height or panels[0].shape[0]
    out = []
    for i, panel in enumerate(panels):
        panel = np.asarray(panel)
        if panel.dtype != np.uint8 or panel.ndim not in (2, 3) or (panel.ndim == 3 and panel.shape[2] != 3):
            raise ValueError(f"image_strip: panel {i} must be (h, w) or (h, w, 3) uint8, got {panel.shape} {panel.dtype}")
        if panel.ndim == 2:
            panel = np.repeat(panel[..., None], 3, axis=2)
        if panel.shape[0] != height:
            width = max(1, round(panel.shape[1] * height / panel.shape[0]))
            panel = cv2.resize(panel, (width, height), interpolation=cv2.INTER_NEAREST)
        else:
            panel = panel.copy()  # putText draws in place; never scribble on the caller's image
        if labels is not None and labels[i]:
            scale = max(0.4, height / 480)
            org = (6, int(22 * scale) + 4)
            # Dark outline under white text stays readable on any background.
            cv2.putText(panel, labels[i], org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(panel, labels[i], org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(panel)
    return np.ascontiguousarray(np.concatenate(out, axis=1))
