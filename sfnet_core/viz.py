"""Pictures of what the network sees: colour label maps, overlays, masks and flow fields.

All functions take and return numpy arrays; colour images are RGB uint8.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["colorize", "overlay", "class_masks", "render_outputs", "flow_to_color", "image_strip", "flow_wheel",
           "class_legend", "text_band", "stack_rows", "text_scale", "text_size", "draw_text"]


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 train ids -> (H, W, 3) uint8 colours via the (256, 3) palette (one LUT gather)."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(
            f"colorize: expected an (H, W) uint8 label map, got shape {labels.shape}, dtype {labels.dtype}")
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f"colorize: expected a (256, 3) palette (ClassTable.palette()), got {palette.shape}")
    # np.take along axis 0 gathers whole 3-byte rows: 7x faster than fancy indexing
    # (palette[labels]) at 512x1024 (1.7 vs 12 ms), with the same result.
    return np.take(palette, labels, axis=0)


def overlay(image_rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour label image over the camera image: (1 - alpha) * image + alpha * color."""
    if image_rgb.shape != color.shape or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"overlay: image {image_rgb.shape} and colour {color.shape} must be the same (H, W, 3)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(image_rgb.astype(np.uint8, copy=False), 1.0 - alpha,
                           color.astype(np.uint8, copy=False), alpha, 0.0)


def class_masks(labels: np.ndarray, class_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """One (H, W) uint8 mask per requested class: 255 where ``labels == id``, else 0."""
    if labels.ndim != 2:
        raise ValueError(f"class_masks: expected an (H, W) label map, got shape {labels.shape}")
    # bool -> uint8 is a view (0/1); times 255 stays in uint8 range.
    return {name: (labels == cid).view(np.uint8) * np.uint8(255) for name, cid in class_ids.items()}


def render_outputs(
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    with_labels: bool = True,
    masks: Mapping[str, int] | None = None,
    confidence: np.ndarray | None = None,
    overlay_on: np.ndarray | None = None,
    overlay_alpha: float = 0.5,
) -> dict[str, np.ndarray]:
    """The images a segmentation result is published as, by the node and by ``sfnet-bag-eval``.

    Returns ``{name: array}`` keyed by the topic below ``segmentation/``: ``labels`` (H, W) uint8
    train ids (when ``with_labels``); ``color`` (H, W, 3) RGB from ``palette`` (when given),
    blended over ``overlay_on`` (the RGB camera image) when given; ``mask/<key>`` (H, W) 0/255
    for each ``masks`` entry ``key -> class id``; ``confidence`` (H, W) uint8 (when given).
    """
    out: dict[str, np.ndarray] = {}
    if with_labels:
        out["labels"] = labels
    if palette is not None:
        color = colorize(labels, palette)
        if overlay_on is not None:
            color = overlay(np.ascontiguousarray(overlay_on), color, overlay_alpha)
        out["color"] = color
    for key, mask in class_masks(labels, dict(masks or {})).items():
        out[f"mask/{key}"] = mask
    if confidence is not None:
        out["confidence"] = confidence
    return out


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(2, h, w) flow (x then y, y down) -> (h, w, 3) uint8 RGB, as in the paper's Figs. 2 and 5.

    The Middlebury colour wheel (Baker et al., IJCV 2011) via ``torchvision.utils.flow_to_image``:
    hue encodes the direction (right = red, down = yellow, left = cyan/blue, up = violet),
    saturation the magnitude relative to ``max_magnitude`` (default: the field's maximum; larger
    vectors saturate); zero flow is white. Non-finite vectors are drawn as zero.
    """
    import torch
    from torchvision.utils import flow_to_image

    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow_to_color: expected a (2, h, w) flow field, got shape {flow.shape}")
    # "+ 0.0" turns -0.0 into 0.0 so a purely horizontal vector lands at the wheel's start
    flow = np.nan_to_num(flow, nan=0.0, posinf=0.0, neginf=0.0) + 0.0
    h, w = flow.shape[1:]
    if max_magnitude is not None:
        if not max_magnitude > 0:
            raise ValueError(f"flow_to_color: max_magnitude must be > 0, got {max_magnitude!r}")
        # torchvision scales by the field's largest vector: clip to max_magnitude, then add one
        # sentinel column holding a vector of exactly that length to fix the scale.
        norm = np.hypot(flow[0], flow[1])
        flow = flow * np.minimum(1.0, max_magnitude / np.maximum(norm, 1e-12))
        sentinel = np.zeros((2, h, 1), np.float32)
        sentinel[0] = max_magnitude
        flow = np.concatenate([flow, sentinel], axis=2)
    rgb = flow_to_image(torch.from_numpy(np.ascontiguousarray(flow)))
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[:, :w])


# Captions, legends and notes: one font, measured with cv2.getTextSize and drawn once, dark on
# light bands next to the pictures (never over them: an outline drawn under the text with other
# metrics is what garbled "ground truthh" under OpenCV 5).
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (20, 20, 20)
_PAPER = 255


def text_scale(height: int) -> float:
    """Font scale for pictures ``height`` pixels tall (about 15 px capitals at 256 px)."""
    return max(0.45, height / 420)


def text_size(text: str, scale: float, thickness: int = 1) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of ``text`` in pixels."""
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, baseline


def _thickness(scale: float) -> int:
    return 1 if scale < 0.8 else 2


def draw_text(image: np.ndarray, text: str, x: int, y_top: int, scale: float, color: tuple[int, int, int] = _INK,
              ) -> int:
    """Draw ``text`` in place with its top-left corner at (x, y_top); returns its width."""
    thickness = _thickness(scale)
    w, h, _ = text_size(text, scale, thickness)
    cv2.putText(image, text, (int(x), int(y_top + h)), _FONT, scale, color, thickness, cv2.LINE_AA)
    return w


def text_band(lines: Sequence[str], width: int, scale: float, margin: int | None = None) -> np.ndarray:
    """A light (h, width, 3) band holding ``lines`` of text, left aligned, each fully visible."""
    thickness = _thickness(scale)
    sizes = [text_size(line, scale, thickness) for line in lines]
    pad = margin if margin is not None else max(4, int(round(8 * scale)))
    line_h = max([h + d for _, h, d in sizes] or [0]) + pad
    band = np.full((pad + line_h * len(lines), width, 3), _PAPER, np.uint8)
    for i, line in enumerate(lines):
        draw_text(band, line, pad, pad + i * line_h, scale)
    return band


def class_legend(entries: Sequence[tuple[str, Sequence[int]]], width: int, scale: float) -> np.ndarray:
    """A light (h, width, 3) band: one colour swatch and name per ``(name, rgb)`` entry, in rows
    that wrap at ``width``."""
    thickness = _thickness(scale)
    _, cap_h, depth = text_size("Ag", scale, thickness)
    pad = max(4, int(round(8 * scale)))
    swatch = cap_h + depth
    row_h = swatch + pad
    placed: list[tuple[int, int, str, Sequence[int]]] = []
    x, row = pad, 0
    for name, rgb in entries:
        item_w = swatch + pad // 2 + text_size(name, scale, thickness)[0] + 2 * pad
        if x + item_w > width and x > pad:
            x, row = pad, row + 1
        placed.append((x, row, name, rgb))
        x += item_w
    band = np.full((pad + row_h * (row + 1), width, 3), _PAPER, np.uint8)
    for x, row, name, rgb in placed:
        top = pad + row * row_h
        cv2.rectangle(band, (x, top), (x + swatch - 1, top + swatch - 1), tuple(int(c) for c in rgb), cv2.FILLED)
        cv2.rectangle(band, (x, top), (x + swatch - 1, top + swatch - 1), _INK, 1)
        draw_text(band, name, x + swatch + pad // 2, top, scale)
    return band


def flow_wheel(size: int, max_magnitude: float = 1.0) -> np.ndarray:
    """The key of ``flow_to_color``: a (size, size, 3) disc whose pixel at offset (dx, dy) from
    the centre has the colour of flow (dx, dy) scaled so that the rim is ``max_magnitude``
    (full saturation); outside the disc is light background."""
    if size < 3:
        raise ValueError(f"flow_wheel: size must be >= 3, got {size}")
    r = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (xs - r) / r, (ys - r) / r
    wheel = flow_to_color(np.stack([dx, dy]) * max_magnitude, max_magnitude=max_magnitude)
    wheel[np.hypot(dx, dy) > 1.0] = _PAPER
    return wheel


def image_strip(
    panels: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    height: int | None = None,
) -> np.ndarray:
    """Side-by-side (H', sum W, 3) uint8 image of ``panels`` with ``labels`` as captions.

    Panels may be RGB (h, w, 3) or grey (h, w) uint8 and of different sizes: each is resized to
    ``height`` (default: the first panel's) keeping its aspect ratio (nearest neighbour, so label
    maps and flow colours stay crisp). Captions sit centred on a light band above their panel
    (H' = band + height), never over the picture; without ``labels`` there is no band.
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
            raise ValueError(f"image_strip: panel {i} must be (h, w) or (h, w, 3) uint8, "
                             f"got {panel.shape} {panel.dtype}")
        if panel.ndim == 2:
            panel = np.repeat(panel[..., None], 3, axis=2)
        if panel.shape[0] != height:
            width = max(1, round(panel.shape[1] * height / panel.shape[0]))
            panel = cv2.resize(panel, (width, height), interpolation=cv2.INTER_NEAREST)
        out.append(panel)
    strip = np.concatenate(out, axis=1)
    if not labels or not any(labels):
        return np.ascontiguousarray(strip)
    scale = text_scale(height)
    pad = max(4, int(round(8 * scale)))
    _, cap_h, depth = text_size("Ag", scale, _thickness(scale))
    band = np.full((cap_h + depth + 2 * pad, strip.shape[1], 3), _PAPER, np.uint8)
    x0 = 0
    for panel, caption in zip(out, labels):
        w = panel.shape[1]
        if caption:
            text = caption
            # shorten a caption wider than its panel rather than let it run into the next one
            while len(text) > 4 and text_size(text, scale, _thickness(scale))[0] > w - 2 * pad:
                text = text.removesuffix("...")[:-1] + "..."  # Hershey fonts are ASCII only
            tw = text_size(text, scale, _thickness(scale))[0]
            draw_text(band, text, x0 + max(pad, (w - tw) // 2), pad, scale)
        x0 += w
    return np.ascontiguousarray(np.concatenate([band, strip], axis=0))


def stack_rows(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Stack (h_i, w_i, 3) images top to bottom, padding each on the right to ``width`` (default:
    the widest) with light background."""
    width = width or max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        if r.shape[1] < width:
            r = np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), _PAPER, np.uint8)], axis=1)
        padded.append(r[:, :width])
    return np.ascontiguousarray(np.concatenate(padded, axis=0))
