"""Where and in which precision the network runs: one rule for training, evaluation and inference.

Device (``resolve_device``):
  ``auto``         the CUDA device ``cuda:<local_rank>`` when CUDA is available, else the CPU
  ``cpu``          the CPU
  ``cuda[:N]``     that GPU; when it is not there: an error, or, with ``fallback=True`` (the node,
                   which must keep running on a vehicle whose GPU went missing), the CPU and a warning
Anything else (``gpu0``, ``cuda:x``) is an error naming the option.

Precision (``resolve_precision``):
  ``auto``  bf16 on GPUs that support it (Ampere and newer), fp16 on older GPUs, fp32 on the CPU
  ``fp16``  on the CPU: fp32 and a warning (CPU fp16 kernels are slow or missing; bf16 is the
            CPU's half format)
  ``fp32`` / ``bf16``  as asked
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch

from sfnet_core.device_spec import check_device_spec
from sfnet_core.errors import ConfigError

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "autocast"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str | torch.device, what: str = "device", local_rank: int = 0,
                   fallback: bool = False) -> torch.device:
    """The torch device for ``spec`` (see the module docstring); ``what`` names the option in errors."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    check_device_spec(spec, what)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return torch.device("cuda", local_rank) if available > local_rank else torch.device("cpu")
    index = int(spec.partition(":")[2] or local_rank)
    if index < available:
        return torch.device("cuda", index)
    problem = (f"{what}: {spec} requested but " +
               (f"CUDA device {index} is not there ({available} found)" if available else "CUDA is not available"))
    if not fallback:
        raise ConfigError(problem)
    log.warning("%s; falling back to the CPU (slow)", problem)
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device, what: str = "precision") -> str:
    """``fp32`` | ``fp16`` | ``bf16`` for ``precision`` on ``device`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{what}: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        message = f"{what}: fp16 is not supported on the CPU, falling back to fp32 (bf16 is available on CPU)"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        log.warning(message)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context for a resolved ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
