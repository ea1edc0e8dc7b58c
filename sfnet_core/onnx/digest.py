"""``sfnet.digest``: the SHA-256 of an exported model's weights, graph and metadata, stamped when
the model is written and checked whenever it is read.

Every model this package writes records it (``sfnet-export``, int8, the export cache), stamped
last: ``weights`` covers the initializers in name order (name, data type, dims, the SHA-256 of
their bytes, read from the external data file when the tensor lives there), ``graph`` the nodes,
the graph's inputs and outputs and the opset imports (deterministic protobuf encoding),
``metadata`` the other ``sfnet.*`` entries (``sfnet_core.onnx.metadata``). A mismatch is a
``CheckpointError`` naming the file ("corrupted or edited"). A model exported before digests
existed loads with one warning per file and process (``require`` refuses it: the export cache
rebuilds such entries).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.checkpoint import DIGEST_ALGORITHM, parallel_digests, warn_once
from sfnet_core.errors import CheckpointError

__all__ = ["DIGEST_KEY", "onnx_digest", "stamp_digest", "verify_digest"]

log = logging.getLogger(__name__)

DIGEST_KEY = "sfnet.digest"
_PREFIX = b"sfnet_ros onnx digest v1\n"
_CHUNK = 16 << 20


def _external_task(tensor: Any, base_dir: Path | None, where: str) -> tuple[Callable[[], bytes], int]:
    """Digest task for an initializer stored in an external data file (read in chunks)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    target = (base_dir or Path(".")) / location
    if not location or Path(location).is_absolute() or ".." in Path(location).parts or not target.is_file():
        raise CheckpointError(f"{where}: the external data of initializer {tensor.name!r} ({location!r}) is missing")
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if info.get("length") else target.stat().st_size - offset

    def task() -> bytes:
        digest = hashlib.sha256()
        with open(target, "rb") as handle:
            handle.seek(offset)
            left = length
            while left > 0:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    raise CheckpointError(f"{where}: the external data of initializer {tensor.name!r} is truncated")
                digest.update(chunk)
                left -= len(chunk)
        return digest.digest()

    return task, length


def _typed_bytes(tensor: Any) -> bytes:
    """The elements of an initializer stored in the typed fields (float_data...), as raw_data would
    hold them, so both representations digest alike."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_type == TensorProto.STRING:
        return b"".join(b"%d:" % len(v) + v for v in tensor.string_data)
    return np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes()


def _raw_digest(tensor: Any) -> bytes:
    return hashlib.sha256(tensor.raw_data).digest()


def _typed_digest(tensor: Any) -> bytes:
    return hashlib.sha256(_typed_bytes(tensor)).digest()


def _nbytes(tensor: Any) -> int:
    """The size of an initializer's data, from its dims and data type (for the thread decision)."""
    from onnx import helper

    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return math.prod(tensor.dims) * itemsize


def onnx_digest(proto: Any, base_dir: str | os.PathLike | None = None, where: str = "<model>") -> dict[str, str]:
    """``sfnet.digest`` of a ``ModelProto`` (see the module docstring); ``base_dir`` is where
    external data files are found (the model's folder)."""
    from onnx import TensorProto

    base = Path(base_dir) if base_dir is not None else None
    graph = proto.graph
    headers: list[bytes] = []
    tasks: list[Callable[[], bytes]] = []
    total = 0
    for tensor in sorted(graph.initializer, key=lambda t: t.name):
        name = tensor.name.encode()
        headers.append(b"S%d:" % len(name) + name + f"O{tensor.data_type}{list(tensor.dims)}:".encode())
        task: Callable[[], bytes]
        if tensor.data_location == TensorProto.EXTERNAL:
            task, size = _external_task(tensor, base, where)
        elif tensor.HasField("raw_data"):
            # raw_data hands out a copy of the bytes (protobuf's API): one tensor at a time
            task, size = partial(_raw_digest, tensor), _nbytes(tensor)
        else:
            task, size = partial(_typed_digest, tensor), _nbytes(tensor)
        tasks.append(task)
        total += size
    weights = hashlib.sha256(_PREFIX + b"weights\n")
    for header, data in zip(headers, parallel_digests(tasks, total)):
        weights.update(header)
        weights.update(data)
    for sparse in graph.sparse_initializer:
        weights.update(b"sparse" + hashlib.sha256(sparse.SerializeToString(deterministic=True)).digest())

    structure = hashlib.sha256(_PREFIX + b"graph\n")
    for kind, items in (("opset", proto.opset_import), ("input", graph.input), ("output", graph.output),
                        ("node", graph.node), ("function", proto.functions)):
        structure.update(f"{kind}{len(items)}:".encode())
        for item in items:
            data = item.SerializeToString(deterministic=True)
            structure.update(b"%d:" % len(data) + data)

    meta = hashlib.sha256(_PREFIX + b"metadata\n")
    entries = sorted((p.key, p.value) for p in proto.metadata_props
                     if p.key.startswith("sfnet.") and p.key != DIGEST_KEY)
    meta.update(json.dumps(entries, ensure_ascii=True).encode())
    return {"algorithm": DIGEST_ALGORITHM, "weights": weights.hexdigest(), "graph": structure.hexdigest(),
            "metadata": meta.hexdigest()}


def stamp_digest(proto: Any, base_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Record ``sfnet.digest`` in ``proto``'s metadata (the last change before it is saved)."""
    digest = onnx_digest(proto, base_dir)
    for prop in proto.metadata_props:
        if prop.key == DIGEST_KEY:
            prop.value = json.dumps(digest, sort_keys=True)
            break
    else:
        proto.metadata_props.add(key=DIGEST_KEY, value=json.dumps(digest, sort_keys=True))
    return digest


_PARTS = {"weights": "the weights do not", "graph": "the graph (nodes, inputs, outputs) does not",
          "metadata": "the sfnet metadata (class table, normalisation, input...) does not"}


def verify_digest(proto: Any, path: str | os.PathLike, require: bool = False) -> dict | None:
    """Check ``proto`` (read from ``path``) against its recorded ``sfnet.digest``.

    Returns the digest, or None for a model written before digests existed (logged once;
    refused with ``require``). Raises ``CheckpointError`` naming ``path`` on a mismatch.
    """
    path = Path(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if not all(isinstance(v, str) for item in meta.items() for v in item):
        # protobuf hands out a string field that is not valid UTF-8 as bytes
        raise CheckpointError(f"{path}: its metadata is not valid text: the file is corrupted or was edited")
    if DIGEST_KEY not in meta:
        if require:
            raise CheckpointError(f"{path}: records no weight digest ({DIGEST_KEY}: written before sfnet_ros "
                                  "recorded them), so its weights cannot be checked")
        warn_once(f"onnx:{path.resolve()}", (
            f"{path}: written before sfnet_ros recorded weight digests ({DIGEST_KEY}), so its weights cannot be "
            "checked for corruption; export it again with sfnet-export to record one"), log)
        return None
    try:
        recorded = json.loads(meta[DIGEST_KEY])
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict) or recorded.get("algorithm") != DIGEST_ALGORITHM or not all(
            isinstance(recorded.get(part), str) for part in _PARTS):
        raise CheckpointError(f"{path}: {DIGEST_KEY} is not a {DIGEST_ALGORITHM} digest "
                              f"({meta[DIGEST_KEY][:120]!r}): the file is corrupted or was edited")
    actual = onnx_digest(proto, path.parent, str(path))
    for part, what in _PARTS.items():
        if actual[part] != recorded[part]:
            raise CheckpointError(f"{path}: {what} match the digest recorded when the file was written: "
                                  "it is corrupted or was edited; refusing to use it (export it again from its "
                                  "checkpoint)")
    return recorded
