"""Reading weight files safely, and loading ImageNet backbone weights (nothing is ever downloaded).

``read_weights_file`` is the one place a foreign weight file (an ImageNet backbone, a checkpoint
of the authors' released code) is unpickled: ``torch.load(weights_only=True)``, which builds
tensors and python containers only and refuses any other pickled object. The one extension:
numpy *scalars* of numeric dtypes (the authors' training script stores ``mean_iu`` as a
``numpy.float64``) are allowed, under both their numpy 1 and numpy 2 module names; constructing
one runs no code from the file.

``load_backbone_weights`` accepts, for ``model.pretrained_backbone``:

* the authors' ImageNet files from the SFSegNets README: ``resnet18-deep-inplane128.pth``,
  ``resnet50-deep.pth``, ``resnet101-deep.pth`` (deep stem, ``stem: deep``, the default) and
  ``df1_imagenet.pth``, ``df2_imagenet.pth``;
* torchvision's ResNet ImageNet files (``resnet18-f37072fd.pth``...; 7x7 stem: set
  ``stem: torchvision``) and ShuffleNetV2 x1.0 file;
* the backbone part of a released SFNet checkpoint (``layer0.0.*`` / ``layer0.1.*`` are the deep
  stem's convs / last BN; DF ones are under ``backbone.``).

Keys are matched after removing a ``module.`` prefix; every backbone tensor must be found with
its shape (a ``num_batches_tracked`` counter may be absent), and whatever in the file was not
used (the ImageNet classifier ``fc.*``, a segmentation head...) is named in the log.
"""
from __future__ import annotations

import importlib
import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, require_file, torch_load_reason, unsafe_pickle_message

__all__ = ["PretrainedWeightsError", "BackboneLoadReport", "read_weights_file", "extract_state_dict",
           "strip_prefix", "load_backbone_weights", "summarize_keys"]

log = logging.getLogger(__name__)

_SHOW = 5  # keys listed per kind of mismatch


class PretrainedWeightsError(CheckpointError):
    """A pretrained backbone file is missing, unreadable or does not fit the backbone."""


def _numpy_scalar_globals() -> list[Any]:
    """What unpickling a numeric numpy scalar needs: ``scalar``, ``dtype`` and the dtype classes."""
    # numpy 2 moved numpy.core to numpy._core; Humble's Ubuntu still ships numpy 1.
    scalar = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core")
                                     else "numpy.core.multiarray").scalar
    kinds = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
             np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_weights_file(path: str | os.PathLike, error: type[CheckpointError] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; every failure is one ``error`` line.

    Raises ``error`` (a CheckpointError) naming ``path``: missing file, a folder, a truncated or
    corrupt file, or a pickle holding python objects other than tensors, containers and numeric
    numpy scalars (it is refused, never executed).
    """
    path = Path(path)
    require_file(path, "file", error)
    try:
        # torch's warnings on this path (pickle protocol, weights_only advice) never reach stderr:
        # what went wrong is the one error line below
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_scalar_globals()):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = torch_load_reason(exc)
        if "GLOBAL" in reason or "global" in reason:
            raise error(unsafe_pickle_message(path, reason)) from None
        raise error(f"{path}: not a readable weights file (truncated or corrupt?): {reason}") from None
    except Exception as exc:  # arbitrary bytes fail in arbitrary ways inside the unpickler
        raise error(f"{path}: not a readable weights file (truncated or corrupt?): "
                    f"{type(exc).__name__}: {torch_load_reason(exc)}") from None


def strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """``state`` with ``prefix`` removed when every key has it (files saved from (Distributed)DataParallel)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def extract_state_dict(obj: Any, source: str,
                       error: type[CheckpointError] = CheckpointError) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file: ``obj`` itself or ``obj["state_dict"]``, ``module.`` stripped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        kind = type(obj).__name__
        if isinstance(obj, Mapping):
            kind += f" with keys {', '.join(map(str, list(obj)[:6]))}" if obj else " (empty)"
        raise error(f"{source}: expected a state dict (name -> tensor) or {{'state_dict': ...}}, got {kind}")
    return strip_prefix(obj)


def summarize_keys(keys: list[str], show: int = _SHOW) -> str:
    """``a, b, c (+n more)``; long lists of keys sharing a first component are grouped as ``head.* (n)``."""
    if len(keys) <= show:
        return ", ".join(keys)
    groups: dict[str, int] = {}
    for key in keys:
        top = key.split(".", 1)[0]
        groups[top] = groups.get(top, 0) + 1
    if len(groups) <= show:
        return ", ".join(f"{top}.* ({n})" if n > 1 else next(k for k in keys if k.split('.', 1)[0] == top)
                         for top, n in groups.items())
    return ", ".join(keys[:show]) + f" (+{len(keys) - show} more)"


@dataclass
class BackboneLoadReport:
    """What ``load_backbone_weights`` did: tensors loaded, file keys not used, counters filled."""

    path: str
    loaded: int
    unused: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.path}: loaded {self.loaded} backbone tensors"
        if self.unused:
            text += f"; not used: {summarize_keys(self.unused)}"
        if self.filled:
            text += f"; {len(self.filled)} BatchNorm num_batches_tracked counters absent (set to 0)"
        return text


def _backbone_name(key: str, own: Mapping[str, Any]) -> str | None:
    """The backbone parameter a file key stands for, or None."""
    if key in own:
        return key
    if key.startswith("backbone.") and key[len("backbone."):] in own:  # SFNet checkpoints (DF, ours)
        return key[len("backbone."):]
    for released, ours in (("layer0.0.", "conv1."), ("layer0.1.", "bn1.")):  # released SFNet-ResNet
        if key.startswith(released) and ours + key[len(released):] in own:
            return ours + key[len(released):]
    return None


def _stem_hint(state: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    if "conv1.weight" in own and ("conv1.0.weight" in state or "layer0.0.0.weight" in state):
        return " (this is a deep-stem file: use the model option stem: deep)"
    if "conv1.0.weight" in own and "conv1.weight" in state:
        return " (this is a 7x7-stem torchvision file: set the model option stem: torchvision)"
    return ""


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> BackboneLoadReport:
    """Load a local weight file into ``backbone``: every backbone tensor must be in the file.

    Accepts a raw state dict or ``{"state_dict": ...}`` (see the module docstring for the files
    and key spellings); keys that were not used are named in the returned report and the log.

    Raises:
        PretrainedWeightsError: missing/unreadable file, backbone tensors absent from the file
            or of another shape (the first few of each are named, with what was not used).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{path}: pretrained backbone file not found")
    state = extract_state_dict(read_weights_file(path, PretrainedWeightsError), path, PretrainedWeightsError)

    own = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        name = _backbone_name(key, own)
        if name is None or name in mapped:
            unused.append(key)
        else:
            mapped[name] = value
    filled = [k for k in own if k not in mapped and k.endswith("num_batches_tracked")]
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in mapped.items() if v.shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {summarize_keys(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {summarize_keys(shapes)}")
    if problems:
        if unused:
            problems.append(f"{len(unused)} keys of the file not used: {summarize_keys(unused)}")
        raise PretrainedWeightsError(
            f"{path}: does not fit backbone {type(backbone).__name__}{_stem_hint(state, own)}: "
            + "; ".join(problems))
    for key in filled:
        mapped[key] = torch.zeros_like(own[key])
    backbone.load_state_dict(mapped, strict=True)
    classifier = tuple(getattr(backbone, "pretrained_ignore", ("fc.",)))
    report = BackboneLoadReport(path, len(mapped) - len(filled), unused, filled)
    # Classifier keys are expected to be left over; anything else deserves a look.
    level = logging.INFO if all(k.startswith(classifier) for k in unused) else logging.WARNING
    log.log(level, "pretrained backbone %s", report)
    return report
