"""What the ``Segmenter`` refuses, checked before any work: its settings and each call's images.

Settings errors are ``ConfigError`` (a node parameter or a tool option is wrong); image errors
are ``ValueError`` (the caller passed the wrong array).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sfnet_core.errors import ConfigError
from sfnet_core.inference.backends import InferenceBackend, TorchBackend
from sfnet_core.inference.geometry import OUTPUT_RESOLUTIONS, RESIZE_POLICIES
from sfnet_core.inference.preprocess import padded_size

__all__ = ["PIPELINES", "FLOW_MODES", "check_settings", "check_images", "check_flow_request"]

PIPELINES = ("eager", "compiled", "cuda_graph")
FLOW_MODES = (False, True, "all", "finest")


def check_settings(backend: InferenceBackend, input_size: tuple[int, int] | None, resize: str, output: str,
                   pipeline: str, mean: Sequence[float], std: Sequence[float]) -> tuple[int, int] | None:
    """ConfigError for a setting the Segmenter cannot run; returns ``input_size`` as plain ints."""
    if input_size is not None:
        if len(input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in input_size):
            raise ConfigError(f"Segmenter: input_size must be (height, width) positive ints, got {input_size!r}")
        input_size = (int(input_size[0]), int(input_size[1]))
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"Segmenter: resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    if output not in OUTPUT_RESOLUTIONS:
        raise ConfigError(f"Segmenter: output must be one of {', '.join(OUTPUT_RESOLUTIONS)}, got {output!r}")
    if pipeline not in PIPELINES:
        raise ConfigError(f"Segmenter: pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if pipeline != "eager":
        if input_size is None:
            raise ConfigError(f"Segmenter: pipeline {pipeline} needs a fixed input_size (static shapes)")
        if not isinstance(backend, TorchBackend):
            raise ConfigError(f"Segmenter: pipeline {pipeline} needs the torch backend, not {backend.name}")
        if pipeline == "cuda_graph" and backend.device.type != "cuda":
            raise ConfigError(f"Segmenter: pipeline cuda_graph needs a CUDA device, got {backend.device}")
    fixed = backend.fixed_size
    if fixed is not None and (input_size is None or padded_size(input_size) != fixed):
        raise ConfigError(f"Segmenter: the model takes {fixed[0]}x{fixed[1]} inputs only; set input_size to it")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"Segmenter: mean and std need 3 values, got {mean!r}, {std!r}")
    return input_size


def check_images(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One (H, W, 3) uint8 image or a non-empty list of them -> the list; ValueError naming the bad one."""
    batch: list[np.ndarray] = [images] if isinstance(images, np.ndarray) else list(images)
    if not batch:
        raise ValueError("segment(): got an empty list of images")
    for i, img in enumerate(batch):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            desc = f"shape {img.shape}, dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"segment(): image {i}: expected an (H, W, 3) uint8 array, got {desc}")
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"segment(): image {i}: empty image of shape {img.shape}")
    return batch


def check_flow_request(return_flows: bool | str, tta: bool, backend: InferenceBackend) -> None:
    """Flows come from one plain forward of the torch backend (no multi-scale, no flip)."""
    if return_flows not in FLOW_MODES:
        raise ValueError(f"segment(): return_flows must be False, True, 'all' or 'finest', got {return_flows!r}")
    if return_flows and tta:
        raise ValueError("segment(): return_flows needs single-scale inference without flip "
                         "(scales=(1.0,), flip=False)")
    if return_flows and not backend.supports_flows:
        hint = (" (backend auto chose it: pass flows=True or backend='torch' to Segmenter.from_checkpoint)"
                if backend.selection else "")
        raise ConfigError(f"segment(): return_flows needs the torch backend, not {backend.name}{hint}")
