"""Visualisation helpers: palettes, overlays, masks, the Middlebury flow wheel, image strips."""
from __future__ import annotations

import numpy as np
import pytest

from sfnet_core.data.classes import ClassTable
from sfnet_core.viz import class_masks, colorize, flow_to_color, image_strip, overlay

TABLE = ClassTable(names=("road", "car", "sky"), colors=((128, 64, 128), (0, 0, 142), (70, 130, 180)))


def test_colorize_uses_palette_and_blacks_out_ignore() -> None:
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    color = colorize(labels, TABLE.palette())
    assert color.shape == (2, 2, 3) and color.dtype == np.uint8
    assert color[0, 0].tolist() == [128, 64, 128]
    assert color[0, 1].tolist() == [0, 0, 142]
    assert color[1, 0].tolist() == [70, 130, 180]
    assert color[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="uint8 label map"):
        colorize(labels.astype(np.int64), TABLE.palette())


def test_overlay_blends() -> None:
    image = np.full((4, 5, 3), 200, np.uint8)
    color = np.zeros((4, 5, 3), np.uint8)
    assert np.all(overlay(image, color, alpha=0.25) == 150)
    assert np.array_equal(overlay(image, color, alpha=0.0), image)
    with pytest.raises(ValueError, match="same"):
        overlay(image, color[:3])


def test_class_masks() -> None:
    labels = np.array([[0, 1, 1], [2, 1, 0]], dtype=np.uint8)
    masks = class_masks(labels, {"car": TABLE.index("car"), "road": 0})
    assert set(masks) == {"car", "road"}
    assert masks["car"].dtype == np.uint8
    assert masks["car"].tolist() == [[0, 255, 255], [0, 255, 0]]
    assert masks["road"].tolist() == [[255, 0, 0], [0, 0, 255]]


def _one_vector(u: float, v: float) -> np.ndarray:
    return flow_to_color(np.array([[[u]], [[v]]], dtype=np.float32))[0, 0]


def test_flow_directions_map_to_wheel_colours() -> None:
    # Full-magnitude vectors (normalised by the field's max) take the pure wheel colour.
    assert _one_vector(3.0, 0.0).tolist() == [255, 0, 0]  # right: red
    assert _one_vector(-3.0, 0.0).tolist() == [0, 209, 255]  # left: wheel[27], cyan-blue
    assert _one_vector(0.0, 3.0).tolist() == [255, 229, 0]  # down: between wheel[13] and [14], yellow
    assert _one_vector(0.0, -3.0).tolist() == [87, 0, 255]  # up: between wheel[40] and [41], violet


def test_flow_magnitude_is_saturation_and_zero_is_white() -> None:
    flow = np.zeros((2, 3, 4), np.float32)
    assert np.all(flow_to_color(flow) == 255)
    flow[0, 0, 0] = 2.0  # max, right
    flow[0, 0, 1] = 1.0  # half, right
    color = flow_to_color(flow)
    assert color.shape == (3, 4, 3)
    assert color[0, 0].tolist() == [255, 0, 0]
    assert color[0, 1].tolist() == [255, 127, 127]  # half-saturated red
    assert color[2, 3].tolist() == [255, 255, 255]
    # A fixed max_magnitude makes colours comparable across frames.
    assert flow_to_color(flow, max_magnitude=4.0)[0, 0].tolist() == [255, 127, 127]
    assert flow_to_color(flow, max_magnitude=4.0).shape == (3, 4, 3)
    # vectors longer than max_magnitude saturate at the pure wheel colour
    assert flow_to_color(flow, max_magnitude=1.0)[0, 0].tolist() == [255, 0, 0]
    assert flow_to_color(flow, max_magnitude=1.0)[0, 1].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="max_magnitude must be > 0"):
        flow_to_color(flow, max_magnitude=0.0)
    with pytest.raises(ValueError, match=r"\(2, h, w\)"):
        flow_to_color(np.zeros((3, 4, 2)))


def test_image_strip() -> None:
    a = np.full((40, 60, 3), 10, np.uint8)
    b = np.full((20, 20), 200, np.uint8)  # grey, half height -> scaled to 40x40
    strip = image_strip([a, b], labels=["image", "mask"])
    assert strip.shape == (40, 100, 3) and strip.dtype == np.uint8
    assert np.all(strip[-1, 60:] == 200)
    assert (strip[:, :60] != 10).any()  # the caption was drawn
    assert np.all(a == 10)  # ... but not on the caller's image
    assert np.array_equal(image_strip([a]), a)
    with pytest.raises(ValueError, match="captions"):
        image_strip([a, b], labels=["one"])
