"""The errors sfnet_core raises on purpose.

Each carries a message that names the file and the field at fault, so a vehicle operator can act
on it without reading a traceback. The command-line tools print such an error as one line and exit
with status 2 (``sfnet_core.cli.common.run_command``).
"""
from __future__ import annotations

import os
import re


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
    return "ONNX model" if str(path).lower().endswith(".onnx") else "checkpoint file"


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
