"""The export cache: a ``.pt`` checkpoint run in ONNX Runtime or OpenVINO is exported once, then reused.

Like the TensorRT engine caches of Autoware's nodes, the exported model lives under
``~/.cache/sfnet_ros/onnx`` (``$SFNET_ROS_CACHE`` overrides the folder, else
``$XDG_CACHE_HOME/sfnet_ros``), named by what determines it:

    <checkpoint stem>-<sha256 of the checkpoint file, 16 hex>-<HxW | dynamic>-<precision>-<code, 12 hex>.onnx

where "code" hashes the model and export source files, the PyTorch version and the opset (an
export made by other code is never reused). Writes are atomic (a staging file renamed into
place), and an exclusive ``flock`` on ``<name>.lock`` makes concurrent processes (two nodes
starting together) export once: the second waits, then finds the file.

An entry is reused only when it passes the check of its recorded ``sfnet.digest`` (weights,
graph and metadata as written: ``sfnet_core.onnx.digest``) and its metadata names the
same checkpoint hash. Anything else (damaged, edited, truncated, without a digest, from another
checkpoint) is logged as a warning and exported again; a fresh export is checked once more
before it is used.

OpenVINO keeps its compiled models beside them, under ``<cache>/openvino/<model>-<content key>``
(``openvino_cache_dir``): the key hashes the file's verified ``sfnet.digest`` (its content), so
a different model written to the same path never meets another's compiled blob, and a file that
fails its digest is refused before OpenVINO or its cache sees it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.io_utils import file_sha256
from sfnet_core.onnx.export import DEFAULT_OPSET, export_onnx
from sfnet_core.onnx.metadata import OnnxModelInfo, read_onnx_info

__all__ = ["CACHE_ENV", "cache_root", "cache_folder", "cached_onnx", "cached_onnx_model", "cache_key",
           "openvino_cache_dir"]

log = logging.getLogger(__name__)

CACHE_ENV = "SFNET_ROS_CACHE"


def cache_root() -> Path:
    """The cache folder (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sfnet_ros"


def cache_folder(kind: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<kind>`` (root: ``cache_root()`` when None), created; a ConfigError naming
    ``$SFNET_ROS_CACHE`` when it cannot be created or written."""
    folder = (Path(root).expanduser() if root is not None else cache_root()) / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"export cache {folder}: cannot create it ({exc.strerror}); set {CACHE_ENV} to a "
                          "writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"export cache {folder}: not writable; set {CACHE_ENV} to a writable folder")
    return folder


def openvino_cache_dir(info: OnnxModelInfo, root: str | os.PathLike | None = None) -> Path:
    """OpenVINO's CACHE_DIR for the model ``info`` describes (see the module docstring): keyed by
    its verified digest (content), or the file's SHA-256 for a model written before digests."""
    if info.digest:
        key = hashlib.sha256(json.dumps(info.digest, sort_keys=True).encode()).hexdigest()[:16]
    else:
        key = file_sha256(info.path)[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(info.path).stem)[:40] or "model"
    return cache_folder(f"openvino/{stem}-{key}", root)


def _code_fingerprint(opset: int) -> str:
    """Hash of everything besides the checkpoint that shapes the exported graph: the model and
    ONNX package sources, the PyTorch version and the opset."""
    root = Path(__file__).resolve().parents[1]  # sfnet_core/
    digest = hashlib.sha256(f"torch {torch.__version__} opset {opset}".encode())
    for path in sorted((root / "models").glob("*.py")) + sorted((root / "onnx").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_key(checkpoint_sha256: str, stem: str, canvas: tuple[int, int] | None, precision: str, opset: int) -> str:
    size = "dynamic" if canvas is None else f"{canvas[0]}x{canvas[1]}"
    safe_stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40] or "model"
    return f"{safe_stem}-{checkpoint_sha256[:16]}-{size}-{precision}-{_code_fingerprint(opset)}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the handle closes, even on a crash
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _reusable(path: Path, sha: str) -> OnnxModelInfo | None:
    """The entry's (verified) description when it may be reused, else None (with a warning)."""
    if not path.is_file():
        return None
    try:
        info = read_onnx_info(path, require_digest=True)
    except CheckpointError as exc:
        log.warning("export cache: %s fails its check, exporting it again: %s", path.name, exc)
        return None
    if info.checkpoint_sha256 != sha:
        log.warning("export cache: %s was exported from another checkpoint (sha256 %s), exporting it again",
                    path.name, str(info.checkpoint_sha256)[:16])
        return None
    return info


def cached_onnx_model(
    checkpoint: str | os.PathLike,
    canvas: tuple[int, int] | None,
    precision: str = "fp32",
    root: str | os.PathLike | None = None,
) -> tuple[Path, OnnxModelInfo]:
    """``cached_onnx``, with the entry's verified ``OnnxModelInfo`` (so it is not read twice)."""
    if precision != "fp32":
        raise ConfigError(
            f"a .pt checkpoint runs in ONNX Runtime or OpenVINO as an fp32 export; an {precision} model needs "
            f"calibration frames: build it with sfnet-export --int8 --calibration ... and load that .onnx")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint file not found")
    folder = cache_folder("onnx", root)
    sha = file_sha256(checkpoint)
    name = cache_key(sha, checkpoint.stem, canvas, precision, DEFAULT_OPSET)
    target = folder / f"{name}.onnx"
    info = _reusable(target, sha)
    if info is not None:
        log.info("export cache hit: %s", target)
        return target, info
    with _locked(folder / f"{name}.lock"):
        info = _reusable(target, sha)  # another process exported it while we waited
        if info is not None:
            log.info("export cache hit: %s", target)
            return target, info
        log.info("export cache miss: exporting %s to %s (once)", checkpoint, target)
        ckpt = load_checkpoint(checkpoint)  # checks the checkpoint's own digest
        if canvas is None:
            export_onnx(ckpt, target, height=64, width=64, dynamic=True)
        else:
            export_onnx(ckpt, target, height=canvas[0], width=canvas[1], dynamic_batch=True)
        # read back as any user reads it: what was written is what runs
        info = read_onnx_info(target, require_digest=True)
    return target, info


def cached_onnx(
    checkpoint: str | os.PathLike,
    canvas: tuple[int, int] | None,
    precision: str = "fp32",
    root: str | os.PathLike | None = None,
) -> Path:
    """The cached fp32 ONNX export of ``checkpoint`` for a fixed ``canvas`` (H, W) (multiples of 32,
    dynamic batch) or, with ``canvas=None``, dynamic axes; exported on first use, exported again
    when the entry fails its digest check (see the module docstring)."""
    return cached_onnx_model(checkpoint, canvas, precision, root)[0]
