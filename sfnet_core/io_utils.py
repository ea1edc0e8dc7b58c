"""Writing outputs without ever destroying data: the checks every tool makes, and atomic writes.

The rules every tool follows (``check_output`` enforces them before any work starts, and
``atomic_write`` again at the instant the output is published):

* an output that exists is refused unless the user passed ``--overwrite``;
* an output equal to an input, inside an input folder, or a folder holding an input is always
  refused (with or without ``--overwrite``);
* a device, FIFO or socket is never an output (a character device would otherwise be "replaced"
  by a regular file); a symlink loop or a name longer than the file system allows is one error;
* ``--overwrite`` replaces a file by a file; a folder only when the same tool wrote it and
  nobody changed it since. Every folder a tool writes records what it wrote
  (``MANIFEST``: relative paths, sizes and SHA-256 digests, written last into the staging
  folder); ``--overwrite`` replaces exactly that and refuses, naming them, when the folder holds
  anything else: a file the user added, a file edited since (e.g. a hand-corrected label PNG),
  a folder or a link. A folder without a manifest of the same tool is never replaced;
* outputs are written to a hidden staging path next to the target and published when complete
  (``atomic_write``). Publishing never replaces something that appeared at the target while the
  tool ran unless ``--overwrite`` (``rename_noreplace``: ``renameat2(RENAME_NOREPLACE)``, else a
  hard link, else a check right before the rename); of two tools racing for one new path exactly
  one wins, the other fails with one line. An error, Ctrl-C or SIGTERM (see
  ``sfnet_core.cli.common``) removes the staging path and leaves whatever was there untouched;
* the place of an output is probed before the work starts (``check_writable_parent``): a real
  file with a block of data is created and removed, so a read-only, full or missing place fails
  in a second, not after an hour of work. An ``OSError`` while writing (a disk that filled up
  meanwhile) is one line naming the output (``OutputError``).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sfnet_core.errors import SFNetError

__all__ = ["OutputError", "MANIFEST", "atomic_write", "check_output", "check_writable_parent", "staging_path",
           "rename_noreplace", "write_manifest", "foreign_files", "os_error_message", "file_sha256", "signals_held",
           "remove_staging"]

MANIFEST = ".sfnet-manifest.json"  # what a tool wrote into its output folder (see the module docstring)
_PROBE_BYTES = 4096  # one block: an empty file can still be created on a full disk


class OutputError(SFNetError, ValueError):
    """An output path that would destroy data, or cannot be written."""


def os_error_message(exc: OSError) -> str:
    """A short lower-case reason for ``exc`` ("no space left on device", "no write permission")."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no write permission"
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _resolved(path: str | os.PathLike, what: str = "--out") -> Path:
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError:  # Python <= 3.12: "Symlink loop from ..."
        raise OutputError(f"{what}: {path}: a symlink loop") from None
    except OSError as exc:
        raise OutputError(f"{what}: {path}: {os_error_message(exc)}") from None


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False
    return True


def check_writable_parent(path: str | os.PathLike, what: str = "--out") -> Path:
    """The resolved ``path`` if it can be created: every new name fits the file system, and its
    nearest existing ancestor is a folder in which a file with data can really be written (probed
    with a hidden file holding one block, removed at once: permission bits do not tell, e.g. for
    root, on a read-only mount, in /proc or on a full disk). Else an OutputError."""
    raw = Path(path).expanduser()
    for part in raw.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"{what}: {path}: file name too long ({len(os.fsencode(part))} bytes in one name; "
                              "at most 255)")
    target = _resolved(path, what)
    ancestor = target.parent
    try:
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:
        raise OutputError(f"{what}: {path}: {os_error_message(exc)}") from None
    if not ancestor.is_dir():
        raise OutputError(f"{what}: cannot create {path}: {ancestor} is a file, not a folder")
    limit = _name_max(ancestor)
    for part in target.relative_to(ancestor).parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"{what}: {path}: file name too long ({len(os.fsencode(part))} bytes in one name; "
                              f"at most {limit} here)")
    if len(os.fsencode(str(target))) >= 4096:
        raise OutputError(f"{what}: {path}: path too long")
    # named before it exists, so that the finally removes it whenever a signal lands
    probe = ancestor / f".sfnet-probe-{uuid.uuid4().hex[:8]}"
    try:
        handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, b"\0" * _PROBE_BYTES)
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write {path}: {os_error_message(exc)} in {ancestor}") from None
    finally:
        remove_staging(probe)
    return target


_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
            (stat.S_ISSOCK, "a socket"))


def _special(mode: int) -> str | None:
    for test, name in _SPECIAL:
        if test(mode):
            return name
    return None


def _refuse_foreign(target: Path, shown: str | os.PathLike, what: str, tool: str | None,
                    is_previous_output: Callable[[Path], bool] | None) -> None:
    """OutputError unless the non-empty folder ``target`` may be replaced by ``tool``'s output."""
    if tool is not None:
        foreign = foreign_files(target, tool)
        if foreign is None:
            raise OutputError(f"{what}: {shown} is a folder that {tool} did not write; it is never replaced, "
                              "even with --overwrite (choose another path)")
        if foreign:
            named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"{what}: {shown} holds files that {tool} did not write or that changed since "
                              f"({named}); they are never replaced, even with --overwrite (move them out, or "
                              "choose another path)")
        return
    if not (is_previous_output and is_previous_output(target)):
        raise OutputError(f"{what}: {shown} is a folder that this tool did not write; it is never replaced, "
                          "even with --overwrite (choose another path)")


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    kind: str = "file",
    what: str = "--out",
    is_previous_output: Callable[[Path], bool] | None = None,
    tool: str | None = None,
) -> Path:
    """Validate output ``path`` (``kind`` "file" or "dir") against the rules in the module docstring.

    ``inputs``: every path the tool reads (None entries are skipped). ``tool``: the name written
    into the manifest of a folder output (``atomic_write(..., tool=...)``); without it a folder is
    replaced only when ``is_previous_output(folder)`` says so. Returns the resolved path.
    """
    target = check_writable_parent(path, what)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(item, what)
        if _inside(target, source) or _inside(source, target):
            relation = ("is" if target == source else "is inside" if _inside(target, source) else "contains")
            raise OutputError(f"{what}: {path} {relation} the input {item}; write the output elsewhere")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputError(f"{what}: {path}: {os_error_message(exc)}") from None
    special = _special(info.st_mode)
    if special:
        raise OutputError(f"{what}: {path} is {special}; only a regular file or a folder this tool wrote is ever "
                          "replaced (choose another path)")
    is_dir = stat.S_ISDIR(info.st_mode)
    if not overwrite:
        noun = "folder" if is_dir else "file"
        raise OutputError(f"{what}: {path} exists ({noun}); pass --overwrite to replace it, or choose another path")
    if kind == "file" and is_dir:
        raise OutputError(f"{what}: {path} is a folder; the output is a file (choose a file path)")
    if kind == "dir" and not is_dir:
        raise OutputError(f"{what}: {path} is a file; the output is a folder (choose another path)")
    if kind == "dir" and any(target.iterdir()):
        _refuse_foreign(target, path, what, tool, is_previous_output)
    return target


# ----------------------------------------------------------------------------- the manifest
def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike, tool: str) -> Path:
    """Record every file (size, SHA-256) and folder under ``folder`` as written by ``tool``."""
    folder = Path(folder)
    files: dict[str, list] = {}
    dirs: list[str] = []
    for root, subdirs, names in os.walk(folder):
        subdirs.sort()
        base = Path(root)
        for name in subdirs:
            dirs.append((base / name).relative_to(folder).as_posix())
        for name in sorted(names):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST or path.is_symlink():
                continue
            files[rel] = [path.stat().st_size, file_sha256(path)]
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"tool": tool, "dirs": dirs, "files": files}, indent=0) + "\n", encoding="utf-8")
    return manifest


def foreign_files(folder: str | os.PathLike, tool: str) -> list[str] | None:
    """What in ``folder`` the manifest of ``tool`` does not account for: added files, folders and
    links, files whose size or digest changed (sorted relative paths; ``[]``: nothing). None when
    the folder has no readable manifest of ``tool``."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if data.get("tool") != tool:
            return None
        files, dirs = dict(data["files"]), set(data["dirs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    found: list[str] = []
    for root, subdirs, names in os.walk(folder):
        base = Path(root)
        for name in list(subdirs):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel not in dirs or path.is_symlink():
                found.append(rel + "/")
                subdirs.remove(name)  # named once, not file by file
        for name in names:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST:
                continue
            expected = files.get(rel)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if expected is None or not stat.S_ISREG(info.st_mode) or info.st_size != expected[0] \
                    or file_sha256(path) != expected[1]:
                found.append(rel)
    return sorted(found)


# ----------------------------------------------------------------------------- publishing
@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait inside the block and are delivered after it (to the handlers in
    place before it): for a few steps that must all happen or none (renaming staged files into
    place, removing a staging folder), so Ctrl-C cannot leave half of them. A no-op off the main
    thread (Python runs signal handlers in that one only).

    The handlers are swapped for one that notes the signal, rather than blocking it with the
    signal mask: a signal sent to the process reaches any thread that does not block it (one of
    OpenMP's, a DDS thread), and Python then runs the handler in the main thread all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    try:
        for held in (signal.SIGINT, signal.SIGTERM):
            previous[held] = signal.signal(held, lambda number, frame: noted.append(number))
        yield
    finally:
        for held, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default instead
            signal.signal(held, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(noted):  # each once, in the order they came
            signal.raise_signal(number)


def staging_path(path: str | os.PathLike, suffix: str = "tmp") -> Path:
    """A fresh hidden sibling of ``path`` (``.<name>.<random>.<suffix>``): same folder, so a
    rename onto ``path`` is atomic. It does not exist yet. A long name is shortened so that the
    staging name fits the file system too (a legal output name stays a legal staging name)."""
    target = Path(path)
    tag = f".{uuid.uuid4().hex[:8]}.{suffix}"
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    room = _name_max(folder) - 1 - len(tag)
    name = os.fsencode(target.name)
    if len(name) > room:
        name = name[:max(room, 1)]
    return target.parent / f".{os.fsdecode(name).rstrip()}{tag}"


_renameat2: Callable | None | bool = False  # False: not looked up yet; None: not available


def _libc_renameat2() -> Callable | None:
    global _renameat2
    if _renameat2 is False:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
            _renameat2 = function
        except (OSError, AttributeError):
            _renameat2 = None
    return _renameat2 if callable(_renameat2) else None


def rename_noreplace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``source`` onto ``target`` only if nothing is at ``target``: FileExistsError else
    (also for an empty folder that appeared there). ``renameat2(RENAME_NOREPLACE)`` where the
    kernel and file system have it; else a hard link (files) or a check right before the rename."""
    src, dst = os.fsencode(source), os.fsencode(target)
    function = _libc_renameat2()
    if function is not None:
        if function(-100, src, -100, dst, 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), os.fsdecode(dst))
    if os.path.isdir(src) and not os.path.islink(src):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))
        os.rename(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (e.g. FAT, some FUSE mounts): check, then rename
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def remove_staging(path: str | os.PathLike) -> None:
    """Remove a staging file or folder (or nothing, where it does not exist) with SIGINT and
    SIGTERM held: a signal meanwhile is delivered after it, so Ctrl-C during the cleanup (of an
    error, of a signal, or of a success) cannot leave half of the staging folder behind."""
    path = Path(path)
    if not _lexists(path):  # the usual end of a success: published, nothing left (no handlers swapped)
        return
    with signals_held():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif _lexists(path):
            with contextlib.suppress(OSError):
                path.unlink()


def _appeared(shown: str | os.PathLike, what: str | None) -> OutputError:
    prefix = f"{what}: " if what else ""
    return OutputError(f"{prefix}{shown} appeared while the output was being written; it was not replaced "
                       "(pass --overwrite to replace it, or choose another path)")


def _publish(tmp: Path, target: Path, overwrite: bool, replace_dir: bool, tool: str | None,
             what: str | None) -> None:
    shown = target
    if not overwrite:
        try:
            rename_noreplace(tmp, target)
        except FileExistsError:
            raise _appeared(shown, what) from None
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise _appeared(shown, what) from None
            raise
        return
    prefix = f"{what}: " if what else ""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and _special(info.st_mode):
        raise OutputError(f"{prefix}{shown} is {_special(info.st_mode)}; it is never replaced")
    if info is not None and stat.S_ISDIR(info.st_mode):
        if not tmp.is_dir():
            raise OutputError(f"{prefix}{shown} is a folder; refusing to replace it by a file")
        if any(target.iterdir()):
            if tool is not None:  # again: a file may have been added or edited while we worked
                _refuse_foreign(target, shown, what or "output", tool, None)
            elif not replace_dir:
                raise OutputError(f"{prefix}{shown}: is a folder; refusing to replace it")
        old = staging_path(target, "old")
        with signals_held():  # the new output in place and the previous one gone, or neither
            os.rename(target, old)
            try:
                rename_noreplace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rename(old, target)  # put the previous output back
                raise
            remove_staging(old)
        return
    if info is not None and tmp.is_dir():
        raise OutputError(f"{prefix}{shown} is a file; refusing to replace it by a folder")
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, replace_dir: bool = False, *, overwrite: bool = True,
                 tool: str | None = None, what: str | None = None) -> Iterator[Path]:
    """Yield a fresh staging path next to ``path``; on success it is published at ``path``.

    The staging path does not exist yet, so writers that refuse to overwrite (rosbags'
    ``Writer``, which creates a bag folder) work too. A crash, an exception, Ctrl-C or SIGTERM half
    way removes the staging path and leaves the previous file or folder untouched: readers only
    ever see a complete output.

    ``overwrite=False`` (what a tool passes without ``--overwrite``): nothing that appeared at
    ``path`` meanwhile is replaced (OutputError, "appeared while ..."). ``overwrite=True`` (the
    default, for files a library rewrites, e.g. ``last.pt``): an existing file is replaced; an
    existing folder only when it is ``tool``'s unchanged output (its manifest; checked again now)
    or, without ``tool``, with ``replace_dir=True`` (after ``check_output`` allowed it). With
    ``tool`` a staged folder gets its manifest (``write_manifest``) before it is published.
    ``what`` (e.g. "--out") prefixes the messages. An OSError while writing or publishing (a full
    disk) becomes an OutputError naming ``path``.
    """
    target = Path(path)
    tmp = staging_path(target)
    created = missing_ancestors(target)  # made for this output: removed again if it fails
    published = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tool is not None and tmp.is_dir():
            write_manifest(tmp, tool)
        if tmp.is_file() and not tmp.is_symlink():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        _publish(tmp, target, overwrite, replace_dir, tool, what)
        published = True
    except OSError as exc:
        mine = exc.filename is None or str(exc.filename).startswith(str(tmp)) or \
            Path(str(exc.filename)) == target or \
            exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
        if not mine:
            raise
        prefix = f"{what}: " if what else ""
        raise OutputError(f"{prefix}cannot write {target}: {os_error_message(exc)}") from None
    except RuntimeError as exc:
        # writers in C++ (torch.save's zip writer) report a full disk as RuntimeError
        if not _lexists(tmp) or _free_bytes(target.parent) > _FULL_BYTES:
            raise
        prefix = f"{what}: " if what else ""
        raise OutputError(f"{prefix}cannot write {target}: no space left on device") from exc
    finally:
        remove_staging(tmp)
        if not published:
            remove_empty_folders(created)


def missing_ancestors(target: Path) -> list[Path]:
    """The folders above ``target`` that do not exist yet, deepest first."""
    missing = []
    folder = target.parent
    while not _lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) as long as they are empty: what a failed run created
    for its output, never anything another process put there meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


_FULL_BYTES = 1 << 20  # a writer that failed with less than this left failed on the full disk


def _free_bytes(folder: Path) -> int:
    try:
        info = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return info.f_bavail * info.f_frsize
