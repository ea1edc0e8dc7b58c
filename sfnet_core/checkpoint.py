"""Checkpoints: one self-describing ``.pt`` file per trained network.

A checkpoint is a plain dict of python primitives and tensors, so it loads with
``torch.load(weights_only=True)`` and never runs pickled code from an untrusted file::

    {"format": "sfnet_ros/checkpoint", "version": 1,
     "model": {"name": "sfnet_resnet18", "options": {...}},
     "num_classes": 19,
     "classes": ClassTable.to_dict(),
     "normalization": {"mean": [r, g, b], "std": [r, g, b]},   # on 0..1 RGB
     "state_dict": {...},
     "train_state": {...} | None}                            # optimizer, epoch... for resume

Everything a node needs to run the network (architecture, class names and colours, input
normalisation) travels in the file, so deployment needs no side files.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.io_utils import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Checkpoint",
    "ModelDescription",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "sfnet_ros/checkpoint"
VERSION = 1

# Options that only matter when constructing a network for training; inference rebuilds the
# architecture and takes every weight from the checkpoint.
_TRAIN_ONLY_OPTIONS = ("aux", "pretrained_backbone")
# Wrappers add these prefixes to parameter names (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ModelDescription:
    """What a model file says about the network in it: a checkpoint, or a self-describing ONNX
    model (``sfnet_core.inference.onnx_model.OnnxModelInfo``)."""

    path: Path
    model_name: str
    model_options: dict
    num_classes: int
    classes: ClassTable
    mean: tuple[float, float, float]  # input normalisation, on 0..1 RGB
    std: tuple[float, float, float]


@dataclass
class Checkpoint(ModelDescription):
    """A loaded, validated checkpoint (see the module docstring for the file layout)."""

    state_dict: dict
    train_state: dict | None

    def build_model(self, aux: bool = False) -> torch.nn.Module:
        """The network in eval mode with the checkpoint's weights (on the CPU).

        Loading is strict except for auxiliary heads: a checkpoint trained with ``aux=True``
        loads into an inference model without them (their weights are dropped), and with
        ``aux=True`` a checkpoint saved without them gets freshly initialised heads.
        """
        from sfnet_core.models import build_model

        options = {k: v for k, v in self.model_options.items() if k not in _TRAIN_ONLY_OPTIONS}
        try:
            model = build_model(self.model_name, self.num_classes, aux=aux, **options)
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(
                f"{self.path}: model.options {options} do not build {self.model_name!r}: {exc}") from None
        own = set(model.state_dict())
        stored = set(self.state_dict)
        unexpected, missing = stored - own, own - stored
        if unexpected or missing:
            # Which keys belong to aux heads is learnt from the architecture itself (the keys an
            # aux=True model has and an aux=False one lacks), not from naming conventions.
            other = build_model(self.model_name, self.num_classes, aux=not aux, **options)
            aux_keys = set(other.state_dict()) ^ own
            if not unexpected <= aux_keys or not missing <= aux_keys:
                raise CheckpointError(
                    f"{self.path}: state_dict does not match {self.model_name!r} "
                    f"(options {options}): missing {sorted(missing - aux_keys)[:8]}, "
                    f"unexpected {sorted(unexpected - aux_keys)[:8]}"
                )
        weights = {k: v for k, v in self.state_dict.items() if k in own}
        try:
            model.load_state_dict(weights, strict=not missing)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(f"{self.path}: state_dict does not fit {self.model_name!r}: {exc}") from None
        return model.eval()


def _unwrap_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the weights, with DDP / torch.compile prefixes stripped."""
    out: dict[str, torch.Tensor] = OrderedDict()
    for key, value in model.state_dict().items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value.detach().to("cpu", copy=True)
    return out


# Exact types: subclasses such as numpy.float64 (a float) or namedtuples pickle as their own
# class, which weights_only loading refuses.
_PRIMITIVES = (type(None), bool, int, float, str, bytes)
_TORCH_PLAIN = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> None:
    """Refuse (at save time) anything ``torch.load(weights_only=True)`` would refuse later."""
    kind = type(value)
    if kind in _PRIMITIVES or isinstance(value, _TORCH_PLAIN):
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PRIMITIVES:
                raise CheckpointError(f"{where}: key {key!r} is not a python primitive")
            _check_plain(item, f"{where}.{key}")
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise CheckpointError(
        f"{where}: {kind.__module__}.{kind.__qualname__} is not a tensor or python primitive; "
        "checkpoints load with weights_only=True, convert it (e.g. float(x), x.tolist())"
    )


def read_normalization(norm: Any, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``{'mean': [3], 'std': [3]}`` checked (std positive), as stored in checkpoints and in
    exported ONNX files; ``where`` names the file and key in the error."""
    if not isinstance(norm, dict):
        raise CheckpointError(f"{where}: expected {{'mean': [3], 'std': [3]}}, got {norm!r}")
    mean = _triple(norm.get("mean"), f"{where}.mean")
    std = _triple(norm.get("std"), f"{where}.std")
    if min(std) <= 0:
        raise CheckpointError(f"{where}.std must be positive, got {std}")
    return mean, std


def _triple(values: Any, where: str) -> tuple[float, float, float]:
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    ):
        raise CheckpointError(f"{where}: expected three finite numbers, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    model_name: str,
    classes: ClassTable,
    model_options: dict | None = None,
    normalization: dict | None = None,
    train_state: dict | None = None,
) -> None:
    """Write ``model`` and everything needed to run it to ``path``, atomically.

    ``normalization`` is ``{"mean": [3], "std": [3]}`` on 0..1 RGB (default: ImageNet).
    ``train_state`` (optimizer / scheduler state dicts, epoch, best metric...) must hold only
    tensors and python primitives; anything else is refused here rather than at resume time.
    """
    target = Path(path)
    num_classes = int(getattr(model, "num_classes", classes.num_classes))
    if num_classes != classes.num_classes:
        raise CheckpointError(
            f"{target}: the model predicts {num_classes} classes but the class table has {classes.num_classes}"
        )
    norm = normalization or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    mean = _triple(norm.get("mean"), f"{target}: normalization.mean")
    std = _triple(norm.get("std"), f"{target}: normalization.std")
    if min(std) <= 0:
        raise CheckpointError(f"{target}: normalization.std must be positive, got {std}")
    # build_model records the options it was given on the model; the caller may override.
    options = dict(model_options if model_options is not None else getattr(model, "options", None) or {})
    _check_plain(options, f"{target}: model.options")
    if train_state is not None:
        _check_plain(train_state, f"{target}: train_state")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": str(model_name), "options": options},
        "num_classes": num_classes,
        "classes": classes.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "state_dict": _unwrap_state_dict(model),
        "train_state": train_state,
    }
    with atomic_write(target) as tmp:
        torch.save(payload, tmp)
    log.info("saved checkpoint %s (%s, %d classes)", target, model_name, num_classes)


def _read(path: Path, map_location: Any) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global" = a well-formed pickle naming a python class; anything else
        # (e.g. "Unsupported operand") is just corrupt bytes.
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{path}: the file contains non-tensor python objects and will not be unpickled "
                "(checkpoints are loaded with weights_only=True; re-save it with "
                "sfnet_core.checkpoint.save_checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_one_line(exc)}") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(exc).__name__}: {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    """The specific reason from torch's multi-paragraph weights-only error, on one line.

    torch wraps the unpickler's message ("Unsupported operand 0") in several lines of advice
    about ``weights_only=False`` — advice we must not pass on for an untrusted file.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(
    path: str | os.PathLike,
    expected_num_classes: int | None = None,
    map_location: Any = "cpu",
) -> Checkpoint:
    """Read and validate a checkpoint; every problem is a CheckpointError naming ``path``.

    ``expected_num_classes`` (from the run's config / class table) guards against deploying a
    network trained for another label set.
    """
    path = Path(path)
    data = _read(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            hint = "it looks like a raw state_dict (weights only, no model name or class table)"
        else:
            keys = f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else ""
            hint = f"got a {type(data).__name__}{keys}"
        raise CheckpointError(
            f"{path}: not an sfnet_ros checkpoint ({hint}); write checkpoints with "
            "sfnet_core.checkpoint.save_checkpoint"
        )
    version = data.get("version")
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not supported (this code reads {VERSION})")
    for key in ("model", "num_classes", "classes", "normalization", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path}: missing field {key!r}")

    model = data["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path}: model: expected {{'name': str, 'options': dict}}, got {model!r}")
    options = model.get("options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: model.options: expected a dict, got {type(options).__name__}")
    from sfnet_core.models import MODEL_VARIANTS

    if model["name"] not in MODEL_VARIANTS:
        raise CheckpointError(
            f"{path}: model.name: unknown model {model['name']!r}; known variants: {', '.join(sorted(MODEL_VARIANTS))}"
        )

    num_classes = data["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise CheckpointError(f"{path}: num_classes: expected a positive integer, got {num_classes!r}")
    try:
        classes = ClassTable.from_dict(data["classes"], source=f"{path}: classes")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    if classes.num_classes != num_classes:
        raise CheckpointError(
            f"{path}: classes: the class table has {classes.num_classes} classes but num_classes is {num_classes}"
        )
    if expected_num_classes is not None and num_classes != expected_num_classes:
        raise CheckpointError(
            f"{path}: num_classes: the checkpoint predicts {num_classes} classes but the configuration "
            f"expects {expected_num_classes}"
        )

    mean, std = read_normalization(data["normalization"], f"{path}: normalization")

    state_dict = data["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{path}: state_dict: expected a mapping of parameter names to tensors")
    train_state = data.get("train_state")
    if train_state is not None and not isinstance(train_state, dict):
        raise CheckpointError(f"{path}: train_state: expected a dict or None, got {type(train_state).__name__}")

    return Checkpoint(
        path=path,
        model_name=model["name"],
        model_options=dict(options),
        num_classes=num_classes,
        classes=classes,
        mean=mean,
        std=std,
        state_dict=state_dict,
        train_state=train_state,
    )
