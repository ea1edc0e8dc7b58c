"""Writing outputs without ever destroying data: the checks every tool makes, and atomic writes.

The rules every tool follows (``check_output`` enforces them before any work starts):

* an output that exists is refused unless the user passed ``--overwrite``;
* an output equal to an input, inside an input folder, or a folder holding an input is always
  refused (with or without ``--overwrite``);
* ``--overwrite`` replaces a file by a file; a folder is replaced only when it is recognisably
  a previous output of the same tool (the tool's ``is_previous_output`` check, e.g. a rosbag2
  folder with its ``metadata.yaml``), never an arbitrary folder;
* outputs are written to a hidden staging path next to the target and renamed into place when
  complete (``atomic_write``): an error, Ctrl-C or SIGTERM (see ``sfnet_core.cli.common``) removes
  the staging path and leaves whatever was there before untouched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sfnet_core.errors import SFNetError

__all__ = ["OutputError", "atomic_write", "check_output", "check_writable_parent", "staging_path"]


class OutputError(SFNetError, ValueError):
    """An output path that would destroy data, or cannot be written."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_writable_parent(path: str | os.PathLike, what: str = "--out") -> Path:
    """The resolved ``path`` if it can be created: its nearest existing ancestor is a folder in
    which a file can really be created (probed with a hidden file, removed at once: permission
    bits do not tell, e.g. for root, on a read-only mount or in /proc). Else an OutputError."""
    target = _resolved(path)
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what}: cannot create {path}: {ancestor} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".sfnet-probe-", dir=ancestor)
    except OSError as exc:
        reason = "no write permission" if exc.errno in (errno.EACCES, errno.EPERM) else \
            (exc.strerror or type(exc).__name__).lower()
        raise OutputError(f"{what}: cannot write {path}: {reason} in {ancestor}") from None
    os.close(handle)
    os.unlink(probe)
    return target


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    kind: str = "file",
    what: str = "--out",
    is_previous_output: Callable[[Path], bool] | None = None,
) -> Path:
    """Validate output ``path`` (``kind`` "file" or "dir") against the rules in the module docstring.

    ``inputs``: every path the tool reads (None entries are skipped). Returns the resolved path.
    """
    target = check_writable_parent(path, what)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(item)
        if _inside(target, source) or _inside(source, target):
            relation = ("is" if target == source else "is inside" if _inside(target, source) else "contains")
            raise OutputError(f"{what}: {path} {relation} the input {item}; write the output elsewhere")
    if not target.exists() and not target.is_symlink():
        return target
    if not overwrite:
        noun = "folder" if target.is_dir() else "file"
        raise OutputError(f"{what}: {path} exists ({noun}); pass --overwrite to replace it, or choose another path")
    if kind == "file" and target.is_dir():
        raise OutputError(f"{what}: {path} is a folder; the output is a file (choose a file path)")
    if kind == "dir" and not target.is_dir():
        raise OutputError(f"{what}: {path} is a file; the output is a folder (choose another path)")
    if kind == "dir" and any(target.iterdir()) and not (is_previous_output and is_previous_output(target)):
        raise OutputError(f"{what}: {path} is a folder that this tool did not write; it is never replaced, "
                          "even with --overwrite (choose another path)")
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def staging_path(path: str | os.PathLike, suffix: str = "tmp") -> Path:
    """A fresh hidden sibling of ``path`` (``.<name>.<random>.<suffix>``): same folder, so a
    rename onto ``path`` is atomic. It does not exist yet."""
    target = Path(path)
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.{suffix}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a fresh staging path next to ``path``; on success it is renamed onto ``path``.

    The staging path does not exist yet, so writers that refuse to overwrite (rosbags'
    ``Writer``, which creates a bag folder) work too. A crash, an exception, Ctrl-C or SIGTERM half
    way removes the staging path and leaves the previous file or folder untouched: readers only
    ever see a complete output. An existing file at ``path`` is replaced; an existing folder only
    with ``replace_dir=True`` (after ``check_output`` allowed it): it is moved aside, the new one
    renamed in, then the old one removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(target)
    old: Path | None = None
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if target.is_dir() and not target.is_symlink():
            if not replace_dir:
                raise OutputError(f"{target}: is a folder; refusing to replace it")
            old = staging_path(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        _remove(tmp)
        if old is not None:
            if target.exists():
                _remove(old)
            else:  # the rename in failed: put the previous output back
                os.replace(old, target)
