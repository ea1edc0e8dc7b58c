"""The self-describing ONNX model: what ``sfnet-export`` stores in the metadata, and reading it back.

An exported model carries everything a deployment needs, so the ``.onnx`` file alone runs in the
``Segmenter``, ``sfnet-eval``, ``sfnet-bag-eval`` and the node (``metadata_props``, all strings,
JSON where structured)::

    sfnet.format         "sfnet_ros/onnx"            sfnet.version   "1"
    sfnet.model          "sfnet_resnet18"             sfnet.model_options  {"...": ...}
    sfnet.num_classes    "19"                         sfnet.classes   ClassTable.to_dict()
    sfnet.normalization  {"mean": [3], "std": [3], "scale": "0..1 RGB"}
    sfnet.input          {"name": "input", "layout": "NCHW", "batch": 1 | "dynamic",
                          "height": 512 | "dynamic", "width": 1024 | "dynamic", "multiple_of": 32}
    sfnet.output         "logits" (N, C, H, W) | "labels" (N, H, W) int64
    sfnet.precision      "fp32" | "int8"
    sfnet.checkpoint     the source checkpoint's file name   sfnet.checkpoint_sha256  its SHA-256
    sfnet.quantization   (int8 only) {"format": "QDQ", "per_channel": true, "calibration": ..., "frames": N}
    sfnet.exporter       {"torch": ..., "onnx_opset": 17}
    sfnet.digest         {"algorithm": "sha256-v1", "weights": hex, "graph": hex, "metadata": hex}

``sfnet.digest`` (``sfnet_core.onnx.digest``) is stamped last on every model this package writes
and checked before any other entry is interpreted.

The input is the *normalised* image ``(rgb / 255 - mean) / std``, zero-padded (= the mean colour)
to multiples of 32, exactly what the Segmenter feeds the network. The shapes in ``sfnet.input``
are checked against the graph's own input when the model is read.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfnet_core.checkpoint import STRIDE, ModelDescription, read_normalization
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import CheckpointError, ConfigError, require_file
from sfnet_core.onnx.digest import verify_digest

__all__ = ["ONNX_FORMAT", "ONNX_VERSION", "PRECISIONS", "OnnxModelInfo", "build_metadata", "write_metadata",
           "read_onnx_info"]

ONNX_FORMAT = "sfnet_ros/onnx"
ONNX_VERSION = 1
PRECISIONS = ("fp32", "int8")


@dataclass
class OnnxModelInfo(ModelDescription):
    """What an exported model says about itself (see the module docstring)."""

    input_name: str
    output: str  # logits | labels
    batch: int | None  # None = dynamic
    height: int | None  # None = dynamic
    width: int | None
    precision: str  # fp32 | int8
    checkpoint_sha256: str | None = None
    extra: dict = field(default_factory=dict)  # quantization, exporter: informational
    digest: dict | None = None  # the verified sfnet.digest; None: written before digests existed

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) of a fixed-size model, None when the spatial axes are dynamic."""
        return (self.height, self.width) if self.height is not None and self.width is not None else None


def build_metadata(
    *,
    model_name: str,
    model_options: dict,
    classes: ClassTable,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    input_name: str,
    output: str,
    batch: int | None,
    height: int | None,
    width: int | None,
    precision: str,
    checkpoint_name: str | None = None,
    checkpoint_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (None = a dynamic axis)."""

    def axis(v: int | None) -> int | str:
        return "dynamic" if v is None else int(v)

    meta = {
        "sfnet.format": ONNX_FORMAT,
        "sfnet.version": str(ONNX_VERSION),
        "sfnet.model": model_name,
        "sfnet.model_options": json.dumps(model_options, sort_keys=True),
        "sfnet.num_classes": str(classes.num_classes),
        "sfnet.classes": json.dumps(classes.to_dict()),
        "sfnet.normalization": json.dumps({"mean": [float(m) for m in mean], "std": [float(s) for s in std],
                                           "scale": "0..1 RGB"}),
        "sfnet.input": json.dumps({"name": input_name, "layout": "NCHW", "batch": axis(batch),
                                   "height": axis(height), "width": axis(width), "multiple_of": STRIDE}),
        "sfnet.output": output,
        "sfnet.precision": precision,
    }
    if checkpoint_name:
        meta["sfnet.checkpoint"] = checkpoint_name
    if checkpoint_sha256:
        meta["sfnet.checkpoint_sha256"] = checkpoint_sha256
    for key, value in (extra or {}).items():
        meta[f"sfnet.{key}"] = json.dumps(value, sort_keys=True)
    return meta


def write_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Set ``metadata`` in a ``ModelProto``'s ``metadata_props`` (an existing key is replaced)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)


def _graph_dims(proto: Any) -> tuple[str, list[int | None]]:
    """Name and (batch, 3, H, W) dims (None = symbolic) of the graph's first real input."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one input, the graph has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except KeyError:
        raise CheckpointError(f"{path}: ONNX metadata lacks {key!r}; re-export the model with sfnet-export") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: ONNX metadata {key!r} is not valid JSON: {exc}") from None


def read_onnx_info(path: str | os.PathLike, expected_num_classes: int | None = None, verify: bool = True,
                   require_digest: bool = False) -> OnnxModelInfo:
    """Read and validate an exported model's metadata; every problem is a CheckpointError naming ``path``.

    An ONNX file without the ``sfnet.*`` metadata (exported by something else) is refused: the
    class table and the input normalisation cannot be guessed. ``verify`` checks the weights,
    graph and metadata against ``sfnet.digest`` (``verify_digest``; ``require_digest`` refuses
    a model without one).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    require_file(path, "ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        # protobuf decodes string fields lazily: a flipped byte in the metadata surfaces here
        meta = {p.key: p.value for p in proto.metadata_props}
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path}: not a readable ONNX model (truncated or corrupt?): "
                              f"{type(exc).__name__}") from None
    if not all(isinstance(v, str) for item in meta.items() for v in item):
        # protobuf hands out a string field that is not valid UTF-8 as bytes
        raise CheckpointError(f"{path}: its metadata is not valid text: the file is corrupted or was edited")
    if meta.get("sfnet.format") != ONNX_FORMAT:
        found = ", ".join(sorted(meta)[:6]) or "none"
        raise CheckpointError(
            f"{path}: an ONNX model without sfnet_ros metadata (metadata keys: {found}): the class table "
            "and input normalisation it needs are unknown; export it with sfnet-export from a checkpoint")
    version = meta.get("sfnet.version")
    if version != str(ONNX_VERSION):
        raise CheckpointError(f"{path}: sfnet ONNX metadata version {version!r} is not supported "
                              f"(this code reads {ONNX_VERSION})")
    # Before any entry is interpreted: a corrupted file is reported as such, not by a symptom.
    digest = verify_digest(proto, path, require=require_digest) if verify else None
    table = _json(meta, "sfnet.classes", path)
    if isinstance(table, dict) and isinstance(table.get("id_map"), dict):
        # JSON object keys are strings; the table's raw label values are integers.
        table["id_map"] = {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v
                           for k, v in table["id_map"].items()}
    try:
        classes = ClassTable.from_dict(table, source=f"{path}: sfnet.classes")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    # one validation rule for mean / std, the checkpoint's
    mean, std = read_normalization(_json(meta, "sfnet.normalization", path), f"{path}: sfnet.normalization")
    options = _json(meta, "sfnet.model_options", path)
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: sfnet.model_options: expected a JSON object")
    output = meta.get("sfnet.output")
    if output not in ("logits", "labels"):
        raise CheckpointError(f"{path}: sfnet.output: expected logits or labels, got {output!r}")
    precision = meta.get("sfnet.precision")
    if precision not in PRECISIONS:
        raise CheckpointError(f"{path}: sfnet.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        num_classes = int(meta.get("sfnet.num_classes", ""))
    except ValueError:
        raise CheckpointError(f"{path}: sfnet.num_classes: expected an integer, "
                              f"got {meta.get('sfnet.num_classes')!r}") from None
    if num_classes != classes.num_classes:
        raise CheckpointError(f"{path}: the class table has {classes.num_classes} classes but sfnet.num_classes "
                              f"is {num_classes}")
    if expected_num_classes is not None and num_classes != expected_num_classes:
        raise CheckpointError(f"{path}: num_classes: the model predicts {num_classes} classes but the configuration "
                              f"expects {expected_num_classes}")
    try:
        input_name, dims = _graph_dims(proto)
    except ValueError as exc:
        raise CheckpointError(f"{path}: unexpected graph input: {exc}") from None
    if len(dims) != 4 or dims[1] not in (3, None):
        raise CheckpointError(f"{path}: the graph input {input_name!r} has shape {dims}; expected (N, 3, H, W)")
    declared = _json(meta, "sfnet.input", path)
    for key, actual in zip(("batch", "height", "width"), (dims[0], dims[2], dims[3])):
        stated = declared.get(key) if isinstance(declared, dict) else None
        if (stated == "dynamic") != (actual is None) or (actual is not None and stated != actual):
            raise CheckpointError(f"{path}: sfnet.input.{key} is {stated!r} but the graph's input has "
                                  f"{actual or 'a dynamic axis'}")
    extra = {}
    for key in ("quantization", "exporter"):
        if f"sfnet.{key}" in meta:
            extra[key] = _json(meta, f"sfnet.{key}", path)
    return OnnxModelInfo(
        path=path, model_name=meta.get("sfnet.model", "?"), model_options=options, num_classes=num_classes,
        classes=classes, mean=mean, std=std, input_name=input_name, output=output, batch=dims[0],
        height=dims[2], width=dims[3], precision=precision, checkpoint_sha256=meta.get("sfnet.checkpoint_sha256"),
        extra=extra, digest=digest)
