"""The errors sfnet_core raises on purpose.

Each carries a message that names the file and the field at fault, so a vehicle operator can act
on it without reading a traceback. The command-line tools print such an error as one line and exit
with status 2 (``sfnet_core.cli.common.run_command``).
"""
from __future__ import annotations


class SFNetError(Exception):
    """Base class of every error raised deliberately by sfnet_core and sfnet_ros."""


class ConfigError(SFNetError, ValueError):
    """A configuration file or value is invalid (the message names the file and the key)."""


class CheckpointError(SFNetError, ValueError):
    """A checkpoint is missing, truncated, unsafe or does not match the configuration."""


class DataError(SFNetError, ValueError):
    """A dataset file is unreadable or inconsistent (the message names the file)."""
