"""Loading ImageNet backbone weights from a local file (nothing is ever downloaded)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["PretrainedWeightsError", "load_backbone_weights"]

_SHOW = 5  # keys listed per kind of mismatch


class PretrainedWeightsError(CheckpointError):
    """A pretrained backbone file is missing, unreadable or does not fit the backbone."""


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path}: expected a state dict (name -> tensor) or "
                                     f"{{'state_dict': ...}}, got {type(obj).__name__}")
    state = dict(obj)
    # Files saved from nn.DataParallel prefix every key with 'module.'.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state-dict file into ``backbone`` (strict apart from the classifier).

    Accepts a raw state dict or ``{"state_dict": ...}``; keys under the backbone's
    ``pretrained_ignore`` prefixes (``fc.`` etc.) are skipped; a file lacking BatchNorm
    ``num_batches_tracked`` buffers (older torchvision files) is accepted.

    Raises:
        PretrainedWeightsError: missing/unreadable file, or missing/unexpected keys or shape
            mismatches (the first few of each are named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{path}: pretrained backbone file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise PretrainedWeightsError(f"{path}: cannot read pretrained backbone weights: {exc}") from exc
    state = _extract_state_dict(obj, path)
    ignore = tuple(getattr(backbone, "pretrained_ignore", ("fc.",)))
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}

    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_listing(shapes)}")
    if problems:
        raise PretrainedWeightsError(
            f"{path}: does not fit backbone {type(backbone).__name__}: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)
