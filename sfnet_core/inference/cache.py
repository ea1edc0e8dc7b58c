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

OpenVINO's compiled models live beside them, under ``<cache>/openvino/<model>-<content key>``
(``openvino_cache_dir``): the key hashes the file's verified ``sfnet.digest`` (its content), so
a different model written to the same path never meets another's compiled blob, and a file that
fails its digest is refused before OpenVINO sees it. Inside, ``cached_compilation`` keeps one
``compiled-<key>.bin`` per runtime, device and compile options: a JSON header line (what it was
compiled for, the payload's SHA-256 and size) then the runtime's exported blob, written
atomically under the same kind of lock. OpenVINO's own ``CACHE_DIR`` is not used: it writes its
blobs in place (a second process can read one half written) and checks nothing but a header,
so a damaged blob ran with wrong weights and no error (measured: zeroed bytes inside it changed
the scores). An entry that fails its check, or that the runtime refuses, is logged as a warning
and compiled again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.io_utils import OutputError, atomic_write, file_sha256
from sfnet_core.onnx.export import DEFAULT_OPSET, export_onnx
from sfnet_core.onnx.metadata import OnnxModelInfo, read_onnx_info

__all__ = ["CACHE_ENV", "cache_root", "cache_folder", "cached_onnx", "cached_onnx_model", "cache_key",
           "openvino_cache_dir", "cached_compilation"]

log = logging.getLogger(__name__)

T = TypeVar("T")

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


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or written: checked again under the lock only then."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


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
    seen = _signature(target)
    info = _reusable(target, sha)
    if info is not None:
        log.info("export cache hit: %s", target)
        return target, info
    with _locked(folder / f"{name}.lock"):
        # another process exported it while we waited (read again only if it changed: one warning)
        info = _reusable(target, sha) if _signature(target) != seen else None
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


def _verified_payload(path: Path, description: Mapping[str, Any]) -> bytes | None:
    """The payload of the compiled-model entry at ``path`` when its header describes the same
    compilation and its bytes match the recorded SHA-256, else None (with a warning, unless absent)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("compiled-model cache: cannot read %s (%s), compiling again", path, exc.strerror)
        return None
    header, _, payload = data.partition(b"\n")
    try:
        recorded = json.loads(header)
        problem = None if isinstance(recorded, dict) else "its header is not an object"
    except ValueError:
        recorded, problem = {}, "its header is not JSON"
    if problem is None and recorded.get("describes") != json.loads(json.dumps(description)):
        problem = "it was compiled for something else"
    elif problem is None and (recorded.get("bytes") != len(payload) or
                              recorded.get("sha256") != hashlib.sha256(payload).hexdigest()):
        problem = f"its {len(payload)} bytes do not match the SHA-256 recorded when it was written (damaged)"
    if problem is not None:
        log.warning("compiled-model cache: %s fails its check, compiling again: %s", path.name, problem)
        return None
    return payload


def cached_compilation(folder: Path, description: Mapping[str, Any], compile_model: Callable[[], tuple[T, bytes]],
                       import_model: Callable[[bytes], T]) -> T:
    """A compiled model from ``folder``'s verified entry for ``description`` (JSON: runtime version,
    device, compile options), else ``compile_model()`` (the model and its exported bytes), stored
    atomically for the next start (module docstring). Concurrent processes compile once: the
    others wait on the entry's lock, then import it. A cache that cannot be written (a full disk)
    costs the next start its compilation, never this one its model."""
    name = "compiled-" + hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{name}.bin"
    seen: tuple[int, int, int] | None = (-1, -1, -1)  # nothing read yet

    def reuse() -> T | None:
        nonlocal seen
        now = _signature(path)
        if now == seen:  # read already (absent or failing): one warning
            return None
        seen = now
        payload = _verified_payload(path, description)
        if payload is None:
            return None
        try:
            model = import_model(payload)
        except Exception as exc:  # the runtime's own refusal (another CPU, another version): compile
            reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            log.warning("compiled-model cache: %s is refused by the runtime, compiling again: %s", path.name,
                        reason[0][:300])
            return None
        log.info("compiled-model cache hit: %s", path)
        return model

    model = reuse()
    if model is not None:
        return model
    with _locked(folder / f"{name}.lock"):
        model = reuse()  # another process compiled it while we waited
        if model is not None:
            return model
        log.info("compiled-model cache miss: compiling into %s (once)", path)
        model, payload = compile_model()
        header = {"describes": description, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        try:
            with atomic_write(path) as staging, open(staging, "wb") as handle:
                handle.write(json.dumps(header, sort_keys=True).encode() + b"\n")
                handle.write(payload)
        except OutputError as exc:
            log.warning("compiled-model cache: %s; the next start compiles again", exc)
    return model
