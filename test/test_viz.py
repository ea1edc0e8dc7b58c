"""Visualisation helpers: palettes, overlays, masks, the Middlebury flow wheel, image strips."""
from __future__ import annotations

import numpy as np
import pytest

from sfnet_core.data.classes import ClassTable
from sfnet_core.viz import (
    class_legend,
    class_masks,
    colorize,
    flow_to_color,
    flow_wheel,
    image_strip,
    overlay,
    stack_rows,
    text_band,
    text_scale,
    text_size,
)

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


def test_colorize_equals_the_fancy_index_gather_on_random_labels() -> None:
    """The np.take rendering is exactly the former ``palette[labels]``, contiguous, for every id
    (ignore and ids past the table included) and for strided label views (crops)."""
    rng = np.random.default_rng(7)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    labels = rng.integers(0, 256, size=(37, 61), dtype=np.uint8)
    for view in (labels, labels[3:30:2, 5:50:3], np.asfortranarray(labels)):
        color = colorize(view, palette)
        assert color.flags.c_contiguous and color.dtype == np.uint8
        assert np.array_equal(color, palette[view])


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
    band = strip.shape[0] - 40
    assert band > 0 and strip.shape[1] == 100 and strip.dtype == np.uint8
    assert np.all(strip[band:, :60] == 10) and np.all(strip[band:, 60:] == 200)  # captions never over pictures
    assert (strip[:band] < 128).any()  # ... but on the band above them
    assert np.all(a == 10)
    assert np.array_equal(image_strip([a]), a)  # no captions: no band
    with pytest.raises(ValueError, match="captions"):
        image_strip([a, b], labels=["one"])


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero((image < 200).any(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize("caption", ["ground truth", "semantic flow"])
def test_captions_are_drawn_once_within_their_measured_box(caption: str) -> None:
    """The garbled "ground truthh" came from an outline drawn with other metrics than the text:
    the ink must lie inside the box cv2.getTextSize gives for the caption, centred on its panel."""
    panel = np.zeros((256, 512, 3), np.uint8)
    strip = image_strip([panel], labels=[caption])
    band = strip[: strip.shape[0] - 256]
    scale = text_scale(256)
    width, height, depth = text_size(caption, scale, 1 if scale < 0.8 else 2)
    x0, y0, x1, y1 = _ink_box(band)
    assert x1 - x0 + 1 <= width + 2 and y1 - y0 + 1 <= height + depth + 2
    assert abs((x0 + x1) / 2 - 256) <= 3  # centred
    assert x1 - x0 + 1 >= width - 4  # the whole caption is there


def test_text_band_and_stack_rows() -> None:
    lines = ["live: 10.1 FPS, latency p50 62.2 ms", "offline: mIoU 0.629"]
    band = text_band(lines, 400, 0.5)
    assert band.shape[1] == 400 and band.shape[0] >= 2 * text_size(lines[0], 0.5)[1]
    x0, _, x1, _ = _ink_box(band)
    assert x1 < 400 and x1 - x0 + 1 <= text_size(lines[0], 0.5)[0] + 2
    rows = stack_rows([np.zeros((5, 10, 3), np.uint8), band])
    assert rows.shape == (5 + band.shape[0], 400, 3) and np.all(rows[:5, 10:] == 255)


def test_class_legend_shows_each_colour_and_wraps() -> None:
    entries = [(name, color) for name, color in zip(TABLE.names, TABLE.colors)]
    legend = class_legend(entries, 600, 0.5)
    for color in TABLE.colors:
        assert (legend == np.array(color, np.uint8)).all(axis=2).sum() > 20  # a swatch of that colour
    narrow = class_legend(entries, 90, 0.5)
    assert narrow.shape[0] > legend.shape[0]  # one entry per row


def test_flow_wheel_is_the_key_of_flow_to_color() -> None:
    wheel = flow_wheel(101, max_magnitude=4.0)
    assert wheel.shape == (101, 101, 3)
    assert wheel[50, 50].tolist() == [255, 255, 255]  # zero flow: white
    assert wheel[50, 100].tolist() == _one_vector(4.0, 0.0).tolist() == [255, 0, 0]  # rim, right: red
    assert wheel[100, 50].tolist() == _one_vector(0.0, 4.0).tolist()  # down
    half = flow_to_color(np.array([[[2.0]], [[0.0]]], np.float32), max_magnitude=4.0)[0, 0]
    assert wheel[50, 75].tolist() == half.tolist()  # half way out = half the magnitude
    assert wheel[0, 0].tolist() == [255, 255, 255]  # outside the disc
    with pytest.raises(ValueError, match="size"):
        flow_wheel(2)
