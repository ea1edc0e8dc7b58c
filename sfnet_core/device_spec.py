"""The syntax of a device option (``auto``, ``cpu``, ``cuda``, ``cuda:N``), without torch.

Command lines and recipes are checked with it before torch is imported (seconds on a loaded
machine), so a typo is answered at once; ``devices.resolve_device`` then decides, with torch,
whether that GPU is there.
"""
from __future__ import annotations

import re

from sfnet_core.errors import ConfigError

__all__ = ["DEVICE_SPEC", "check_device_spec"]

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str, what: str = "device") -> str:
    """``spec`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a ConfigError naming ``what``."""
    if not isinstance(spec, str) or not DEVICE_SPEC.match(spec):
        raise ConfigError(f"{what}: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec
