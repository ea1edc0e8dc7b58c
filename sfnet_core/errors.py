"""The errors sfnet_core raises on purpose.

Each carries a message that names the file and the field at fault, so a vehicle operator can act
on it without reading a traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class SFNetError(Exception):
    """Base class of every error raised deliberately by sfnet_core and sfnet_ros."""


class ConfigError(SFNetError, ValueError):
    """A configuration file or value is invalid (the message names the file and the key)."""


class CheckpointError(SFNetError, ValueError):
    """A checkpoint is missing, truncated, unsafe or does not match the configuration."""


class DataError(SFNetError, ValueError):
    """A dataset file is unreadable or inconsistent (the message names the file)."""


def run_command(
    prog: str,
    body: Callable[[], int],
    errors: tuple[type[BaseException], ...] = (SFNetError,),
    interrupted: str = "interrupted",
) -> int:
    """Run a command-line tool's ``body`` the way every sfnet tool ends.

    A deliberate error (``errors``) is one line ``<prog>: error: <message>`` on stderr and exit
    status 2 (no traceback: the message already names the file and field); Ctrl-C prints
    ``<prog>: <interrupted>`` and exits 130, the shell's code for SIGINT.
    """
    try:
        return body()
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
