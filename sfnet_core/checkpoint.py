"""Checkpoints: one self-describing ``.pt`` file per trained network.

A checkpoint is a plain dict of python primitives and tensors, so it loads with
``torch.load(weights_only=True)`` and never runs pickled code from an untrusted file::

    {"format": "sfnet_ros/checkpoint", "version": 1,
     "model": {"name": "sfnet_resnet18", "options": {...}},
     "num_classes": 19,
     "classes": ClassTable.to_dict(),
     "normalization": {"mean": [r, g, b], "std": [r, g, b]},   # on 0..1 RGB
     "state_dict": {...},
     "train_state": {...} | None,                            # optimizer, epoch... for resume
     "digest": {"algorithm": "sha256-v1", "weights": hex, "fields": hex}}

Everything a node needs to run the network (architecture, class names and colours, input
normalisation) travels in the file, so deployment needs no side files.

The digest. PyTorch's zip reader does not check its CRCs, so a flipped byte inside a weight
loads silently. ``save_checkpoint`` therefore records two SHA-256 digests, and
``load_checkpoint`` recomputes and compares them before anything else reads the file's content:

* ``weights``: over the ``state_dict``, tensors in name order, each as its name, dtype, shape and
  the SHA-256 of its bytes (contiguous, row-major: the same for any memory format). Hashing
  tensor by tensor lets threads share the work (``hashlib`` releases the GIL) and reads the
  tensors' memory in place, without copies.
* ``fields``: over everything else (model name and options, class table, normalisation,
  ``train_state``), walked in a canonical, type-tagged encoding.

A mismatch is a ``CheckpointError`` naming the file ("corrupted or edited"). A checkpoint
written before digests existed (no ``digest`` field) still loads, with one warning per file and
process: it cannot be checked; saving it again records one.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.errors import (
    CheckpointError,
    ConfigError,
    require_torch_file,
    torch_load_reason,
    unsafe_pickle_message,
)
from sfnet_core.io_utils import atomic_write
from sfnet_core.models import MODEL_VARIANTS, build_model

__all__ = [
    "FORMAT",
    "VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Checkpoint",
    "ModelDescription",
    "STRIDE",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "DIGEST_ALGORITHM",
    "weights_sha256",
    "content_sha256",
    "checkpoint_digest",
    "parallel_digests",
    "warn_once",
]

log = logging.getLogger(__name__)

FORMAT = "sfnet_ros/checkpoint"
VERSION = 1

# Options that only matter when constructing a network for training; inference rebuilds the
# architecture and takes every weight from the checkpoint.
_TRAIN_ONLY_OPTIONS = ("aux", "pretrained_backbone")
# Wrappers add these prefixes to parameter names (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# Output stride of the deepest backbone stage: network inputs are padded to multiples of it so
# every decoder level stays aligned (the Segmenter, sfnet-eval and ONNX export all rely on it).
STRIDE = 32


@dataclass
class ModelDescription:
    """What a model file says about the network in it: a checkpoint, or a self-describing ONNX
    model (``sfnet_core.onnx.metadata.OnnxModelInfo``)."""

    path: Path
    model_name: str
    model_options: dict
    num_classes: int
    classes: ClassTable
    mean: tuple[float, float, float]  # input normalisation, on 0..1 RGB
    std: tuple[float, float, float]


@dataclass
class Checkpoint(ModelDescription):
    """A loaded, validated checkpoint (see the module docstring for the file layout).

    ``digest`` is the file's recorded (and verified) digest, None for a checkpoint written
    before digests existed."""

    state_dict: dict
    train_state: dict | None
    digest: dict | None = None

    def build_model(self, aux: bool = False) -> torch.nn.Module:
        """The network in eval mode with the checkpoint's weights (on the CPU).

        Loading is strict except for auxiliary heads: a checkpoint trained with ``aux=True``
        loads into an inference model without them (their weights are dropped), and with
        ``aux=True`` a checkpoint saved without them gets freshly initialised heads.
        """
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


def read_normalization(norm: Any, where: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


DIGEST_ALGORITHM = "sha256-v1"
_DIGEST_PREFIX = b"sfnet_ros digest v1\n"
# Below this many bytes in all, hashing in one thread is faster than starting a pool.
_PARALLEL_MIN_BYTES = 8 << 20


def parallel_digests(tasks: Sequence[Callable[[], bytes]], total_bytes: int = 0) -> list[bytes]:
    """Run the digest ``tasks`` (each returns the digest of one buffer), in order.

    ``hashlib`` releases the GIL while it hashes a buffer, so large inputs are shared among a few
    threads; the result does not depend on how many run.
    """
    workers = min(len(tasks), os.cpu_count() or 1, 4)
    if workers <= 1 or total_bytes < _PARALLEL_MIN_BYTES:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sfnet-digest") as pool:
        return list(pool.map(lambda task: task(), tasks))


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    """The tensor's elements as a flat uint8 array (row-major), viewing its memory when it can.

    Copies only when it must: a non-contiguous layout (channels_last), a lazy conj / neg bit,
    or a tensor on an accelerator.
    """
    t = tensor.detach()
    if t.layout != torch.strided or t.is_quantized:
        raise CheckpointError(f"a {t.layout} / {t.dtype} tensor cannot be digested; store dense tensors")
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def _sha256_of_tensor(tensor: torch.Tensor) -> Callable[[], bytes]:
    return lambda: hashlib.sha256(_tensor_bytes(tensor)).digest()


def _encode(obj: Any, out: list, tensors: list[torch.Tensor]) -> None:
    """Append ``obj``'s canonical, type-tagged, length-prefixed encoding to ``out``; a tensor is
    a header there plus an entry in ``tensors`` (its data digest is appended later, in place)."""
    kind = type(obj)
    if obj is None:
        out.append(b"N")
    elif kind is bool:
        out.append(b"B1" if obj else b"B0")
    elif kind is int:
        out.append(b"I%d;" % obj)
    elif kind is float:
        out.append(b"F" + obj.hex().encode() + b";")
    elif kind is str:
        data = obj.encode("utf-8", "surrogatepass")
        out.append(b"S%d:" % len(data) + data)
    elif kind is bytes:
        out.append(b"Y%d:" % len(obj) + obj)
    elif isinstance(obj, torch.Tensor):
        out.append(f"X{str(obj.dtype).removeprefix('torch.')}{list(obj.shape)}:".encode())
        out.append(len(tensors))  # placeholder: the index of its data digest
        tensors.append(obj)
    elif isinstance(obj, torch.Size):
        out.append(f"Z{list(obj)};".encode())
    elif isinstance(obj, (torch.dtype, torch.device)):
        out.append(f"P{obj};".encode())
    elif kind in (dict, OrderedDict):
        out.append(b"D%d:" % len(obj))
        for key, value in obj.items():  # insertion order: pickling keeps it
            _encode(key, out, tensors)
            _encode(value, out, tensors)
    elif kind in (list, tuple):
        out.append(b"%s%d:" % (b"L" if kind is list else b"T", len(obj)))
        for item in obj:
            _encode(item, out, tensors)
    else:  # nothing save_checkpoint writes; in a loaded file it only has to differ from what was written
        text = f"{kind.__module__}.{kind.__qualname__}:{obj!r}".encode("utf-8", "backslashreplace")
        out.append(b"R%d:" % len(text) + text)


def content_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``obj`` (python primitives, containers, tensors) in the canonical encoding
    of the module docstring: tensors count by dtype, shape and the SHA-256 of their bytes."""
    out: list = []
    tensors: list[torch.Tensor] = []
    _encode(obj, out, tensors)
    total = sum(t.numel() * t.element_size() for t in tensors)
    digests = parallel_digests([_sha256_of_tensor(t) for t in tensors], total)
    digest = hashlib.sha256(_DIGEST_PREFIX)
    for item in out:
        digest.update(digests[item] if isinstance(item, int) else item)
    return digest.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict: for each tensor in name order, its name, dtype, shape and the
    SHA-256 of its bytes (the ``weights`` digest of a checkpoint)."""
    return content_sha256([(key, state_dict[key]) for key in sorted(state_dict)])


def _fields(payload: dict) -> dict:
    """What the ``fields`` digest covers: every entry but the weights and the digest itself."""
    return {k: v for k, v in payload.items() if k not in ("state_dict", "digest")}


def checkpoint_digest(payload: dict) -> dict[str, str]:
    """The ``digest`` entry for a checkpoint dict (``save_checkpoint`` stores it; a tool that
    edits a loaded checkpoint dict on purpose stores a fresh one before saving)."""
    return {"algorithm": DIGEST_ALGORITHM, "weights": weights_sha256(payload["state_dict"]),
            "fields": content_sha256(_fields(payload))}


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str, logger: logging.Logger | None = None) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    (logger or log).warning("%s", message)


def _verify_digest(path: Path, data: dict) -> dict | None:
    """Compare the recorded digest with the content; the digest, or None for an older file."""
    recorded = data.get("digest")
    if recorded is None:
        warn_once(f"pt:{path.resolve()}", (
            f"{path}: written before sfnet_ros recorded weight digests, so its weights cannot be checked "
            "for corruption; save it again (load_checkpoint + save_checkpoint) to record one"))
        return None
    if (not isinstance(recorded, dict) or recorded.get("algorithm") != DIGEST_ALGORITHM
            or not all(isinstance(recorded.get(k), str) for k in ("weights", "fields"))):
        raise CheckpointError(f"{path}: digest: expected {{'algorithm': {DIGEST_ALGORITHM!r}, 'weights': hex, "
                              f"'fields': hex}}, got {recorded!r:.200}; the file is corrupted or was edited")
    try:
        weights, fields = weights_sha256(data["state_dict"]), content_sha256(_fields(data))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if weights != recorded["weights"]:
        raise CheckpointError(f"{path}: the weights do not match the digest recorded when the file was written: "
                              "it is corrupted or was edited; refusing to use it")
    if fields != recorded["fields"]:
        raise CheckpointError(f"{path}: the model description (model, classes, normalization, train_state) does "
                              "not match the digest recorded when the file was written: it is corrupted or was "
                              "edited; refusing to use it")
    return recorded


def _first_non_finite(value: Any, where: str = "") -> str | None:
    """The name of the first floating-point tensor in ``value`` (nested dicts / lists) holding
    NaN or infinity, else None."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


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
    bad = _first_non_finite({"state_dict": payload["state_dict"], "train_state": train_state})
    if bad is not None:  # a diverged model must never replace a good file (the engine checks first, too)
        raise CheckpointError(f"{target}: {bad} holds NaN or infinity; not written")
    try:
        payload["digest"] = checkpoint_digest(payload)
    except CheckpointError as exc:
        raise CheckpointError(f"{target}: {exc}") from None
    with atomic_write(target) as tmp:
        torch.save(payload, tmp)
    log.info("saved checkpoint %s (%s, %d classes)", target, model_name, num_classes)


def _read(path: Path, map_location: Any) -> Any:
    require_torch_file(path)  # a file in no torch.save format: the same line torch.load would lead to
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the outcome is reported as one line, nothing on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only refusal explains how to load the file anyway (weights_only=False,
        # or an allow-list of its classes): advice never to pass on for a file of unknown origin.
        reason = torch_load_reason(exc)
        # "Unsupported global" = a well-formed pickle naming a python class; anything else
        # (e.g. "Unsupported operand") is just corrupt bytes.
        if "GLOBAL" in reason or "global" in reason:
            raise CheckpointError(unsafe_pickle_message(path, reason)) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(exc).__name__}: "
            f"{torch_load_reason(exc)}"
        ) from None


def load_checkpoint(
    path: str | os.PathLike,
    expected_num_classes: int | None = None,
    map_location: Any = "cpu",
) -> Checkpoint:
    """Read and validate a checkpoint; every problem is a CheckpointError naming ``path``.

    The recorded digest is checked first (module docstring): a corrupted or edited file is
    refused as such; one written before digests existed loads with a one-time warning.
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
    state_dict = data["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{path}: state_dict: expected a mapping of parameter names to tensors")
    # Before any field is interpreted: a corrupted file is reported as such, not by a symptom.
    digest = _verify_digest(path, data)

    model = data["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path}: model: expected {{'name': str, 'options': dict}}, got {model!r}")
    options = model.get("options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: model.options: expected a dict, got {type(options).__name__}")
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
        digest=digest,
    )
