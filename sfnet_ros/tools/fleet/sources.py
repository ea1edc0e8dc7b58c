"""Which bags and which cameras a fleet evaluation reads.

Bags are named the ways a team has them at hand: paths (a ``.mcap`` / ``.db3`` / ROS 1 ``.bag``
file or a rosbag2 folder), folders holding bags (searched recursively), shell globs, and list
files (one entry per line, ``#`` comments; relative entries are relative to the list file).
Cameras are image/label topic pairs, or camera names that expand to ``/<name>/<image topic
name>`` and ``/<name>/<label topic name>`` the way the node's ``cameras`` parameter puts each
camera in its own namespace.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfnet_ros.tools.bag_io import BagError

BAG_FILE_SUFFIXES = (".mcap", ".db3", ".bag")
_TOPIC = re.compile(r"^/?[A-Za-z_~{][\w/{}~]*$")


@dataclass(frozen=True)
class Camera:
    """One camera of the fleet: its name (the report's), its image topic and its label topic.

    ``label_required``: a label topic named explicitly must be in every bag; one derived from a
    camera name is used where the bag has it (bags without ground truth still give uncertainty)."""

    name: str
    image_topic: str
    label_topic: str | None = None
    label_required: bool = False


def _check_topic(topic: str, what: str) -> str:
    if not _TOPIC.match(topic) or "//" in topic:
        raise BagError(f"{what}: {topic!r} is not a ROS topic name")
    return topic if topic.startswith("/") else "/" + topic


def camera_from_pair(spec: str) -> Camera:
    """``IMAGE_TOPIC[:LABEL_TOPIC]`` -> a Camera named after the image topic's namespace."""
    image, _, label = spec.partition(":")
    image = _check_topic(image.strip(), "--camera")
    label_topic = _check_topic(label.strip(), "--camera") if label.strip() else None
    parts = [p for p in image.strip("/").split("/") if p]
    if parts and parts[-1] == "compressed":
        parts = parts[:-1]
    name = "/".join(parts[:-1]) or parts[-1]
    return Camera(name, image, label_topic, label_required=label_topic is not None)


def cameras_from_names(names: Sequence[str], image_name: str, label_name: str | None) -> list[Camera]:
    """``front,left`` -> ``/front/<image_name>`` (+ ``/front/<label_name>`` where a bag has it)."""
    cameras = []
    for name in names:
        name = name.strip().strip("/")
        if not name:
            continue
        image = _check_topic(f"/{name}/{image_name}", "--cameras")
        label = _check_topic(f"/{name}/{label_name}", "--cameras") if label_name else None
        cameras.append(Camera(name, image, label, label_required=False))
    return cameras


def check_cameras(cameras: Sequence[Camera]) -> list[Camera]:
    if not cameras:
        raise BagError("no camera: give --camera IMAGE_TOPIC[:LABEL_TOPIC] or --cameras NAME,...")
    names = [c.name for c in cameras]
    topics = [c.image_topic for c in cameras]
    for what, values in (("camera name", names), ("image topic", topics)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise BagError(f"the {what} {twice[0]!r} is given twice")
    return list(cameras)


def _is_bag(path: Path) -> bool:
    return (path.is_file() and path.name.endswith(BAG_FILE_SUFFIXES)) or \
        (path.is_dir() and (path / "metadata.yaml").is_file())


def _bags_in_folder(folder: Path) -> list[Path]:
    """Every bag under ``folder``: rosbag2 folders (not searched further) and bag files."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        if (base / "metadata.yaml").is_file():
            found.append(base)
            dirs.clear()
            continue
        dirs.sort()
        found += [base / f for f in sorted(files) if f.endswith(BAG_FILE_SUFFIXES)]
    return found


def _expand(entry: str, origin: str) -> list[Path]:
    if glob.has_magic(entry):
        matches = [Path(p) for p in sorted(glob.glob(entry, recursive=True))]
        bags = [p for p in matches if _is_bag(p)]
        if not bags:
            raise BagError(f"{origin}: the pattern {entry!r} matches no bag")
        return bags
    path = Path(entry)
    if not path.exists():
        raise BagError(f"{origin}: {entry}: no such file or folder")
    if _is_bag(path):
        return [path]
    if path.is_dir():
        bags = _bags_in_folder(path)
        if not bags:
            raise BagError(f"{origin}: the folder {entry} holds no bag (.mcap, .db3, .bag files or rosbag2 folders)")
        return bags
    raise BagError(f"{origin}: {entry} is not a bag (.mcap, .db3, .bag or a rosbag2 folder)")


def _list_file_entries(list_file: str) -> list[str]:
    path = Path(list_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BagError(f"--bag-list {list_file}: cannot read it ({exc.__class__.__name__})") from None
    entries = [line.split("#", 1)[0].strip() for line in lines]
    return [e if Path(e).is_absolute() else str(path.parent / e) for e in entries if e]


def resolve_bags(entries: Iterable[str], list_files: Iterable[str] = ()) -> list[Path]:
    """The bags named by ``entries`` and the lines of ``list_files``, each once, in order given."""
    named = [(e, "--bag") for e in entries]
    for list_file in list_files:
        named += [(e, f"--bag-list {list_file}") for e in _list_file_entries(list_file)]
    bags: list[Path] = []
    seen: set[Path] = set()
    for entry, origin in named:
        for bag in _expand(entry, origin):
            key = bag.resolve()
            if key not in seen:
                seen.add(key)
                bags.append(bag)
    if not bags:
        raise BagError("no bag: give --bag (a bag, a folder of bags or a glob) or --bag-list FILE")
    return bags


def bag_identity(bag: Path) -> str:
    """A digest of the bag's resolved path, sizes and modification times: a bag recorded again or
    edited gets another identity, so a resumed run never reuses a result of its old contents."""
    path = bag.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def display_name(bag: Path, bags: Sequence[Path]) -> str:
    """The shortest path suffix that tells ``bag`` apart from the others (``day1/drive.mcap``)."""
    parts = bag.resolve().parts
    others = [b.resolve().parts for b in bags if b.resolve() != bag.resolve()]
    for n in range(1, len(parts) + 1):
        if all(tuple(o[-n:]) != tuple(parts[-n:]) for o in others):
            return "/".join(parts[-n:])
    return str(bag)
