"""What the backend tests (test_backends.py, test_openvino.py) compare on: odd-sized frames and
the share of equal labels."""
from __future__ import annotations

import numpy as np


def frames() -> list[np.ndarray]:
    """Three rendered scenes: two odd sizes that share the 96x160 canvas, one on its own canvas."""
    from sfnet_core.data.synthetic_scenes.render import render_scene

    return [render_scene(seed=40, height=70, width=130)[0], render_scene(seed=41, height=80, width=150)[0],
            render_scene(seed=42, height=50, width=90)[0]]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of equal labels of two label images of one shape."""
    assert a.shape == b.shape
    return float((a == b).mean())
