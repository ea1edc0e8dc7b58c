"""The generator's argument limits, in one place for the library, the recipes and the commands.

Plain Python on purpose (no numpy, OpenCV or torch): ``sfnet-synthetic`` and
``sfnet-synthetic-bag`` use ``parse_size`` as an argparse type, so ``--help`` and a malformed
``--size`` answer before any heavy import.
"""
from __future__ import annotations

import argparse

__all__ = ["MIN_SIZE", "check_scene_args", "parse_size"]

# The smallest frame side the generator accepts: the renderer draws any size, but below 8 pixels
# a frame shows no recognisable scene, and a network's 1/8 feature map would be empty.
MIN_SIZE = 8


def check_scene_args(seed: int, height: int, width: int) -> None:
    """ValueError unless ``seed`` is a non-negative integer and ``height x width`` is at least ``MIN_SIZE``."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")


def parse_size(text: str) -> tuple[int, int]:
    """``"256x512"`` -> (256, 512) (height x width); an argparse type."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x512 (HEIGHTxWIDTH), got {text!r}") from None
    if h < MIN_SIZE or w < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"size must be at least {MIN_SIZE}x{MIN_SIZE}, got {text!r}")
    return h, w
