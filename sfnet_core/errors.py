"""The errors sfnet_core raises on purpose, and the checks of input files that need no torch.

Each error carries a message that names the file and the field at fault, so a vehicle operator can
act on it without reading a traceback. The command-line tools print such an error as one line and
exit with status 2 (``sfnet_core.cli.common.run_command``). The file checks (``require_file``,
``require_model_file``) use the standard library only, so a tool answers a wrong path or a file
of the wrong kind before seconds of torch imports.
"""
from __future__ import annotations

import mmap
import os
import re
import tarfile
import zipfile


class SFNetError(Exception):
    """Base class of every error raised deliberately by sfnet_core and sfnet_ros."""


class ConfigError(SFNetError, ValueError):
    """A configuration file or value is invalid (the message names the file and the key)."""


class CheckpointError(SFNetError, ValueError):
    """A checkpoint is missing, truncated, unsafe or does not match the configuration."""


class DataError(SFNetError, ValueError):
    """A dataset file is unreadable or inconsistent (the message names the file)."""


def require_file(path: str | os.PathLike, noun: str = "file", error: type[SFNetError] | None = None) -> None:
    """Raise ``error`` (default CheckpointError) when ``path`` is missing ("<path>: <noun> not found")
    or not a regular file. The one rule for input files, used deep in the loaders and early by the
    tools (it needs no torch, so a wrong path is answered before seconds of imports)."""
    error = error or CheckpointError
    if not os.path.exists(path):
        raise error(f"{path}: {noun} not found")
    if not os.path.isfile(path):
        raise error(f"{path}: not a file")


def model_file_noun(path: str | os.PathLike) -> str:
    """What a missing model file is called in messages: "ONNX model" for .onnx, else "checkpoint file"."""
    return "ONNX model" if is_onnx_path(path) else "checkpoint file"


def is_onnx_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".onnx")


# -- model files recognised without torch or onnx --------------------------------------------------
# What torch.load and onnx.load would refuse at once, refused here in milliseconds with the line
# they lead to (the loaders call these checks too, so the line is the same either way). A file
# that passes can still be refused by the loader (a damaged tensor, a digest that does not match).

# torch.save's legacy (non-zip) format starts with this number, pickled
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PICKLE_PROTO = 0x80


def require_model_file(path: str | os.PathLike) -> None:
    """``require_file`` for a model: an ``.onnx`` must be a protobuf message, anything else a
    torch.save file (``require_torch_file``). Raises CheckpointError naming ``path``."""
    require_file(path, model_file_noun(path))
    if is_onnx_path(path):
        require_onnx_file(path)
    else:
        require_torch_file(path)


def require_torch_file(path: str | os.PathLike, what: str = "checkpoint",
                       error: type[SFNetError] | None = None) -> None:
    """Raise ``error`` (default CheckpointError) unless ``path`` is in one of torch.save's formats:
    a zip archive holding ``<name>/data.pkl`` (torch >= 1.6), the legacy pickle stream that starts
    with torch's magic number, or the oldest tar format. ``what`` names the kind of file in the
    message: ``<path>: not a readable <what> (truncated or corrupt?): <reason>``."""
    error = error or CheckpointError
    require_file(path, "checkpoint file" if what == "checkpoint" else "file", error)
    reason = _not_torch_reason(path)
    if reason is None:
        return
    if reason.startswith("protocol "):
        raise error(unsafe_pickle_message(path, reason, plain=True))
    raise error(f"{path}: not a readable {what} (truncated or corrupt?): {reason}")


def _not_torch_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no torch.save file, or None when it looks like one."""
    with open(path, "rb") as handle:
        head = handle.read(64)
        last = b""
        if head:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            if "not a zip file" in str(exc):  # no end-of-archive record
                return "a zip archive whose end is missing (cut short while written or copied?)"
            return f"a damaged zip archive ({exc})"
        except (OSError, ValueError) as exc:
            return f"a damaged zip archive ({exc})"
        if any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names):
            return None
        return "a zip archive without data.pkl, not a torch.save file"
    magic = _LEGACY_MAGIC.to_bytes(10, "little")
    if head[0] == _PICKLE_PROTO and magic in head:
        return None
    if head[0] == _PICKLE_PROTO and len(head) > 1 and 3 <= head[1] <= 5 and last == b".":
        # pickle.dump (protocols 3 to 5, ending with STOP): torch.save's legacy stream is always
        # protocol 2. Random bytes rarely look like this; a damaged file gets the generic line.
        return f"protocol {head[1]}, not a torch.save file"
    if tarfile.is_tarfile(path):
        return None
    return "neither torch.save's zip archive nor its legacy pickle format"


def require_onnx_file(path: str | os.PathLike) -> None:
    """Raise CheckpointError unless ``path`` parses as a protobuf message at its top level, the
    check ``onnx.load`` fails first on a truncated or foreign file (its DecodeError)."""
    require_file(path, "ONNX model")
    if not _protobuf_top_level_ok(path):
        raise CheckpointError(f"{path}: not a readable ONNX model (truncated or corrupt?): DecodeError")


def _varint(data: mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _protobuf_top_level_ok(path: str | os.PathLike) -> bool:
    """Walk the top-level fields of a protobuf message (keys and lengths only: a model's tensors
    are skipped, so a large file costs no more than a small one)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return True  # an empty message: onnx.load reads it, the metadata check refuses it
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos, end = 0, len(data)
            try:
                while pos < end:
                    key, pos = _varint(data, pos)
                    field, wire = key >> 3, key & 7
                    # groups (wire types 3, 4) are deprecated and in no ONNX field; 6 and 7 do not exist
                    if field == 0 or wire not in (0, 1, 2, 5):
                        return False
                    if wire == 0:
                        _, pos = _varint(data, pos)
                    elif wire == 2:
                        size, pos = _varint(data, pos)
                        pos += size
                    else:
                        pos += 8 if wire == 1 else 4
                    if pos > end:
                        return False
            except ValueError:
                return False
    return True


# -- torch.load's refusals, in one line (shared by checkpoints and ImageNet weight files) --------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def torch_load_reason(exc: BaseException) -> str:
    """The specific reason in one of torch.load's errors, on one line, without torch's advice on
    loading the file anyway."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    # "Unsupported global: GLOBAL x.Y was not an allowed global by default. Please use ..."
    reason = re.split(r"(?<=\.) (?=Please|Re-running|Do it only|Check the documentation)", reason)[0]
    reason = reason.replace(" was not an allowed global by default", "")
    if re.search(r"weights_only|safe_globals|trust", reason):
        return type(exc).__name__
    return reason.rstrip(".")


def unsafe_pickle_message(path: str | os.PathLike, reason: str, plain: bool = False) -> str:
    """The one line for a file that pickles python objects other than tensors and containers
    (``plain``: a ``pickle.dump`` file, which can hold anything)."""
    what = (f"a plain python pickle ({reason})" if plain else
            f"the file contains non-tensor python objects ({reason})")
    return (f"{path}: {what}: a pickle of arbitrary objects, which cannot be loaded safely, so it was refused, "
            "not unpickled; if it comes from a source you trust, convert it in a trusted environment: load it "
            "there yourself and save the model with sfnet_core.checkpoint.save_checkpoint (the authors' "
            "released files: sfnet-import)")
