"""Small file helpers shared by every writer in the project."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary path does not exist yet, so writers that refuse to overwrite (rosbags'
    ``Writer``, which creates a bag directory) work too. A crash or an exception half way leaves
    the previous file (if any) untouched and no partial file behind: readers only ever see a
    complete file. The temporary lives in the same folder so ``os.replace`` is an atomic rename.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        elif tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)  # os.replace cannot rename onto a non-empty directory
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
