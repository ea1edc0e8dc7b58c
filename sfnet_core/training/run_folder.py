"""The run folder of ``sfnet-train``: what a run creates, what a failed run leaves, stale staging files.

Plain Python (no torch), so the command line can use it before it imports anything heavy.

* ``RunFolder`` remembers what existed under ``--out`` before the run (and which parent folders
  it had to create). A run that stops before any checkpoint exists in the folder (an error, Ctrl-C,
  SIGTERM) leaves nothing behind: every file and folder it created is removed, then the run
  folder and the parents it created, if empty. Once a checkpoint (``last.pt`` or ``best.pt``)
  exists, everything is kept: it is the user's resumable state.
* ``stale_staging_files`` finds the hidden staging files of the run's own atomic writes
  (``sfnet_core.io_utils.staging_path``: ``.last.pt.1a2b3c4d.tmp``) that a SIGKILL or power loss
  during a save left behind; ``remove_stale_staging`` deletes them (only those names, only in the
  run folder itself, only regular files).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("sfnet_core.training.run_folder")

# The files the engine writes with sfnet_core.io_utils.atomic_write, and so may stage.
OUTPUT_NAMES = ("last.pt", "best.pt", "config.yaml", "metrics.json", "rank_digests.json")
CHECKPOINT_NAMES = ("last.pt", "best.pt")
# io_utils.staging_path: "." + name + "." + 8 hex digits (uuid4) + ".tmp" (test_training_failures
# checks the two agree).
STAGING_NAME = re.compile(r"^\.(" + "|".join(re.escape(n) for n in OUTPUT_NAMES) + r")\.[0-9a-f]{8}\.tmp$")


def stale_staging_files(out: str | os.PathLike) -> list[Path]:
    """The staging files of interrupted saves directly in ``out`` (sorted; none if it is no folder)."""
    folder = Path(out)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if STAGING_NAME.match(p.name) and p.is_file() and not p.is_symlink())


def remove_stale_staging(out: str | os.PathLike) -> list[Path]:
    """Delete ``stale_staging_files(out)``, one log line each; returns what was removed.

    Call it only while no other process saves into ``out`` (one run per folder)."""
    removed = []
    for path in stale_staging_files(out):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        log.info("removed %s (%.1f MB): the staging file of a save that was killed half way", path, size / 1e6)
        removed.append(path)
    return removed


def holds_only_stale_staging(out: str | os.PathLike) -> bool:
    """True when ``out`` is a folder whose only entries are stale staging files (or nothing)."""
    folder = Path(out)
    stale = set(stale_staging_files(folder))
    return all(p in stale for p in folder.iterdir())


def _snapshot(folder: Path) -> set[Path]:
    found: set[Path] = set()
    if not folder.is_dir():
        return found
    for root, dirs, files in os.walk(folder):
        found.update(Path(root) / name for name in dirs + files)
    return found


class RunFolder:
    """What one run created under ``out`` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out).absolute()
        self.before = _snapshot(self.out)
        # the folders mkdir(parents=True) will create: out and the missing ancestors, innermost first
        self.new_folders: list[Path] = []
        folder = self.out
        while not folder.exists():
            self.new_folders.append(folder)
            folder = folder.parent

    def create(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def has_checkpoint(self) -> bool:
        return any((self.out / name).is_file() for name in CHECKPOINT_NAMES)

    def remove_created(self) -> list[Path]:
        """Remove what the run created (deepest first); folders only when empty. Returns the
        removed paths. Does nothing when a checkpoint exists."""
        if self.has_checkpoint():
            return []
        removed = []
        for path in sorted(_snapshot(self.out) - self.before, key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # its contents were created by the run too and went first
                else:
                    path.unlink()
                removed.append(path)
            except OSError:
                pass  # not ours to force (a file someone put there meanwhile keeps its folder)
        for folder in self.new_folders:
            try:
                folder.rmdir()
                removed.append(folder)
            except OSError:
                break
        return removed
