"""Reading and writing bags with ``rosbags`` (no rosbag2 / ROS installation needed).

``BagReader`` opens any bag a vehicle team hands over: a rosbag2 directory (MCAP or sqlite3),
a bare ``.mcap`` / ``.db3`` file, or a ROS 1 ``.bag``. Messages come out as ROS 2 CDR bytes
(ROS 1 messages are converted) or decoded as rosbags dataclasses. ``BagWriter`` writes rosbag2
MCAP (a directory, or one ``.mcap`` file when the target name ends in ``.mcap``), atomically;
``check_bag_output`` applies the output rules of ``sfnet_core.io_utils`` to a bag path (a folder
is replaced only when it is recognisably a bag: ``is_bag_folder``).

Every problem with the input is raised as ``BagError`` with a message naming the bag and topic,
so the command-line tools print one line instead of a traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore

from sfnet_core.errors import SFNetError
from sfnet_core.io_utils import (
    check_output,
    missing_ancestors,
    remove_empty_folders,
    remove_staging,
    rename_noreplace,
    signals_held,
    staging_path,
)
from sfnet_ros.conversions import ImageConversionError, compressed_to_rgb, image_to_numpy, image_to_rgb

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
# The vehicle runs Humble; Image/CompressedImage/Header are identical in every ROS 2 distro.
ROS2_STORE = Stores.ROS2_HUMBLE

_ROS1_SUFFIXES = {".bag"}
_BARE_STORAGE: dict[str, type[McapReader] | type[Sqlite3Reader]] = {".mcap": McapReader, ".db3": Sqlite3Reader}


class BagError(SFNetError, ValueError):
    """A bag is missing, unreadable, or lacks the topic / message type asked for."""


@dataclasses.dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclasses.dataclass
class BagMessage:
    """One decoded message: ``timestamp`` is the bag's receive time, ``stamp`` the header's (ns)."""

    topic: str
    msgtype: str
    timestamp: int
    stamp: int | None
    msg: Any

    def header_ns(self) -> int:
        """``stamp`` of a message that must have one (an image, a label): BagError if it has none."""
        return required_stamp(self.msg, self.topic, self.msgtype)


_typestores: dict[Stores, Any] = {}


def ros2_typestore() -> Any:
    """The shared ROS 2 type store used for everything we write (cached: building it is slow)."""
    if ROS2_STORE not in _typestores:
        _typestores[ROS2_STORE] = get_typestore(ROS2_STORE)
    return _typestores[ROS2_STORE]


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_stamp(msg: Any) -> int | None:
    """Header stamp in ns, or None when the message has no ``std_msgs/Header``."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    return None if stamp is None else stamp_to_ns(stamp)


def required_stamp(msg: Any, topic: str, msgtype: str) -> int:
    """``header_stamp`` of an image or label message (paired by it): BagError naming the topic if
    the type has no ``std_msgs/Header``."""
    stamp = header_stamp(msg)
    if stamp is None:
        raise BagError(f"{topic} ({msgtype}): no std_msgs/Header stamp; images and labels are paired by it")
    return stamp


def stamp_name(stamp_ns: int) -> str:
    """``sec_nanosec`` with zero padding so file names sort in time."""
    return f"{stamp_ns // 1_000_000_000:010d}_{stamp_ns % 1_000_000_000:09d}"


def _writable(array: np.ndarray) -> np.ndarray:
    # rosbags hands out views of read-only buffers; torch.from_numpy warns on those
    return array if array.flags.writeable else array.copy()


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an Image or CompressedImage message (a writable array)."""
    return _writable(compressed_to_rgb(msg) if msgtype == COMPRESSED else image_to_rgb(msg))


def decode_labels(msg: Any, msgtype: str, topic: str = "") -> np.ndarray:
    """(H, W) uint8 train ids from a mono8 Image (or a lossless PNG CompressedImage)."""
    if msgtype == COMPRESSED:
        array = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None or array.ndim != 2 or array.dtype != np.uint8:
            raise ImageConversionError(f"label topic {topic}: expected a single-channel 8-bit PNG")
        return array
    if msg.encoding not in ("mono8", "8UC1"):
        raise ImageConversionError(f"label topic {topic}: expected mono8 train ids, got encoding {msg.encoding!r}")
    return _writable(np.ascontiguousarray(image_to_numpy(msg)))


def _typestore_from_definitions(connections: list, default: Any) -> Any:
    """Types embedded in the bag (as AnyReader does); the default store when there are none."""
    typs: dict = {}
    for conn in connections:
        if conn.msgdef.format == MessageDefinitionFormat.MSG:
            typs.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        elif conn.msgdef.format == MessageDefinitionFormat.IDL:
            sep = "=" * 80 + "\n"
            for part in conn.msgdef.data.split(sep)[1:] if conn.msgdef.data.startswith(sep) else [conn.msgdef.data]:
                typs.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    if not typs:
        return default
    store = get_typestore(Stores.EMPTY)
    store.register(typs)
    return store


class BagReader:
    """Read-only view of one bag; use as a context manager.

    ``topics`` maps topic name -> TopicInfo. Messages are yielded in bag time order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.is_ros1 = self.path.suffix in _ROS1_SUFFIXES
        self._reader: Any = None
        self._storage: Any = None
        self.typestore: Any = None
        self.topics: dict[str, TopicInfo] = {}
        self._connections: list = []

    # -- opening -------------------------------------------------------------------------------
    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        path = self.path
        if not path.exists():
            raise BagError(f"{path}: no such bag (expected a rosbag2 directory, a .mcap/.db3 file or a ROS 1 .bag)")
        try:
            if path.is_file() and path.suffix in _BARE_STORAGE:
                self._open_bare(path)
            elif path.is_dir() or path.suffix in _ROS1_SUFFIXES:
                if path.is_dir() and not (path / "metadata.yaml").exists():
                    raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml)")
                self._reader = AnyReader([path], default_typestore=ros2_typestore())
                self._reader.open()
                self.typestore = self._reader.typestore
                self._connections = list(self._reader.connections)
            else:
                raise BagError(f"{path}: unknown bag format (expected a rosbag2 directory, .mcap, .db3 or .bag)")
        except BagError:
            raise
        except (AnyReaderError, ReaderError, TypesysError, SerdeError, OSError, KeyError, ValueError,
                AssertionError, EOFError) as exc:
            self.close()
            detail = str(exc) or type(exc).__name__
            raise BagError(f"{path}: cannot read bag: {detail}") from None
        except Exception as exc:  # e.g. apsw errors on a garbage .db3: still a bad input, not a bug
            self.close()
            raise BagError(f"{path}: cannot read bag: {type(exc).__name__}: {exc}") from None
        counts: dict[str, int] = {}
        msgtypes: dict[str, str] = {}
        for conn in self._connections:
            counts[conn.topic] = counts.get(conn.topic, 0) + conn.msgcount
            msgtypes.setdefault(conn.topic, conn.msgtype)
        self.topics = {name: TopicInfo(name, msgtypes[name], counts[name]) for name in sorted(counts)}

    def _open_bare(self, path: Path) -> None:
        # A storage file copied out of its bag directory (Foxglove exports, `--out x.mcap`):
        # rosbags' Reader wants metadata.yaml, so drive the storage plugin directly.
        storage = _BARE_STORAGE[path.suffix](path)
        storage.open()
        self._storage = storage
        self._connections = list(storage.connections)
        self.typestore = _typestore_from_definitions(self._connections, ros2_typestore())

    def close(self) -> None:
        if self._reader is not None and self._reader.stack is not None:
            self._reader.close()
        if self._storage is not None:
            self._storage.close()
        self._reader = self._storage = None

    # -- topics --------------------------------------------------------------------------------
    def topic_list(self) -> str:
        if not self.topics:
            return "(the bag has no topics)"
        return ", ".join(f"{t.name} [{t.msgtype}, {t.count} msgs]" for t in self.topics.values())

    def check_topic(self, topic: str, msgtypes: Iterable[str] = IMAGE_TYPES, what: str = "image topic",
                    allow_empty: bool = False) -> TopicInfo:
        """The topic's info, or a BagError naming what is wrong and what the bag holds."""
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f"{self.path}: {what} {topic!r} not in the bag; topics: {self.topic_list()}")
        allowed = tuple(msgtypes)
        if allowed and info.msgtype not in allowed:
            raise BagError(
                f"{self.path}: {what} {topic!r} has type {info.msgtype}; expected {' or '.join(allowed)}")
        if info.count == 0 and not allow_empty:
            raise BagError(f"{self.path}: {what} {topic!r} has no messages")
        return info

    # -- messages ------------------------------------------------------------------------------
    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, bag timestamp ns, raw bytes) in bag order; raw is CDR for ROS 2 bags."""
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        try:
            source = self._reader.messages(connections=conns) if self._reader else self._storage.messages(conns)
            for conn, timestamp, raw in source:
                yield conn.topic, conn.msgtype, timestamp, raw
        except (AnyReaderError, ReaderError, OSError, AssertionError, EOFError) as exc:
            raise BagError(f"{self.path}: corrupt bag while reading messages: {exc}") from None

    def deserialize(self, raw: bytes, msgtype: str, topic: str = "") -> Any:
        try:
            if self.is_ros1:
                return self.typestore.deserialize_ros1(raw, msgtype)
            return self.typestore.deserialize_cdr(raw, msgtype)
        except (SerdeError, TypesysError, KeyError, ValueError, IndexError, AssertionError) as exc:
            raise BagError(f"{self.path}: cannot decode a {msgtype} message on {topic or '?'}: {exc}") from None

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Decoded messages (rosbags dataclasses) with their bag and header stamps."""
        for topic, msgtype, timestamp, raw in self.raw_messages(topics):
            msg = self.deserialize(raw, msgtype, topic)
            yield BagMessage(topic, msgtype, timestamp, header_stamp(msg), msg)

    def cdr_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """Like raw_messages, but always ROS 2 CDR (ROS 1 messages converted) for publishing/writing."""
        for topic, msgtype, timestamp, raw in self.raw_messages(topics):
            if self.is_ros1:
                raw = to_ros2_cdr(self.deserialize(raw, msgtype, topic), msgtype)
            yield topic, msgtype, timestamp, raw

    def decoded_cdr_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes, Any]]:
        """(topic, msgtype, timestamp, ROS 2 CDR, decoded ROS 2 message): for tools that both
        look at a message and copy it to an output bag."""
        for topic, msgtype, timestamp, raw in self.raw_messages(topics):
            msg = self.deserialize(raw, msgtype, topic)
            if self.is_ros1:
                msg = to_ros2(msg)
                raw = bytes(ros2_typestore().serialize_cdr(msg, msgtype))
            yield topic, msgtype, timestamp, raw, msg


def to_ros2(msg: Any, store: Any = None) -> Any:
    """Rebuild a rosbags message (e.g. decoded from a ROS 1 bag) with the ROS 2 type store's classes.

    Fields the ROS 2 type lacks (ROS 1 ``Header.seq``) are dropped; that is why
    ``typestore.ros1_to_cdr`` cannot be used on Image messages.
    """
    store = store or ros2_typestore()
    msgtype = getattr(msg, "__msgtype__", None)
    if msgtype is None:
        if isinstance(msg, list):
            return [to_ros2(v, store) for v in msg]
        return msg
    try:
        cls = store.types[msgtype]
    except KeyError:
        raise BagError(f"message type {msgtype} is not a ROS 2 ({ROS2_STORE.value}) type") from None
    kwargs = {f.name: to_ros2(getattr(msg, f.name), store) for f in dataclasses.fields(cls)
              if f.name != "__msgtype__"}
    return cls(**kwargs)


def to_ros2_cdr(msg: Any, msgtype: str) -> bytes:
    store = ros2_typestore()
    return bytes(store.serialize_cdr(to_ros2(msg, store), msgtype))


def make_header(stamp_ns: int, frame_id: str = "", store: Any = None) -> Any:
    store = store or ros2_typestore()
    time = store.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                       nanosec=stamp_ns % 1_000_000_000)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def ros2_class(msgtype: str) -> type:
    return ros2_typestore().types[msgtype]


BAG_STORAGES = ("mcap", "sqlite3")
# what a rosbag2 folder written by rosbags (or ros2 bag) holds besides metadata.yaml
_BAG_FILE_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".zstd")


def is_bag_folder(path: str | os.PathLike) -> bool:
    """True for a rosbag2 folder: ``metadata.yaml`` and storage files only (what BagWriter and
    ``ros2 bag record`` write). Only such a folder is ever replaced by a bag output."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not (path / "metadata.yaml").is_file():
        return False
    return all(p.is_file() and (p.name == "metadata.yaml" or p.name.endswith(_BAG_FILE_SUFFIXES))
               for p in path.iterdir())


def is_single_file_bag(path: str | os.PathLike, storage: str = "mcap") -> bool:
    """An ``--out`` ending in ``.mcap`` is one MCAP file; anything else a rosbag2 folder."""
    return storage == "mcap" and Path(path).suffix == ".mcap"


def check_bag_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                     overwrite: bool = False, storage: str = "mcap", what: str = "--out") -> Path:
    """The output rules for a bag path (``sfnet_core.io_utils.check_output``): an existing output
    only with ``overwrite``; never an input or inside one; a folder only if it is a bag."""
    if storage not in BAG_STORAGES:
        raise BagError(f"--storage: unknown storage {storage!r}; expected mcap or sqlite3")
    if storage == "sqlite3" and Path(out).suffix == ".mcap":
        raise BagError(f"{what}: {out} ends in .mcap but --storage sqlite3 writes a rosbag2 folder "
                       "(NAME/NAME.db3 + metadata.yaml); name it without .mcap, or use --storage mcap")
    kind = "file" if is_single_file_bag(out, storage) else "dir"
    return check_output(out, inputs=inputs, overwrite=overwrite, kind=kind, what=what,
                        is_previous_output=is_bag_folder)


class BagWriter:
    """Atomic rosbag2 writer (MCAP by default, sqlite3 for tests/compatibility).

    ``path`` ending in ``.mcap`` (with MCAP storage) produces a single MCAP file, what Foxglove
    opens; any other name produces a rosbag2 directory, what ``ros2 bag play`` opens. Nothing
    appears at ``path`` until ``close()`` succeeds; an exception inside the ``with`` block leaves
    no output at all. An existing ``path`` is replaced only with ``overwrite=True`` and only if
    it is a file or a bag folder (``is_bag_folder``): nothing else is ever deleted.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", overwrite: bool = False) -> None:
        if storage not in BAG_STORAGES:
            raise BagError(f"unknown storage {storage!r}; expected mcap or sqlite3")
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        self.single_file = is_single_file_bag(self.path, storage)
        self.store = ros2_typestore()
        self._staging: Path | None = None
        self._created: list[Path] = []
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        try:
            self.open()
        except BaseException:  # also a signal raised right after open() returned: __exit__ will not run
            self.abort()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_target(self) -> None:
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not self.overwrite:
            raise BagError(f"{self.path}: exists; pass --overwrite to replace it, or choose another path")
        if self.path.is_dir() and not self.path.is_symlink() and not is_bag_folder(self.path):
            raise BagError(f"{self.path}: is a folder that is not a bag; it is never replaced (choose another path)")

    def open(self) -> None:
        # rosbags names the storage file after the bag directory, so the bag is written as
        # <staging>/<final name>/ (right file names) and renamed into place on close: same
        # folder, so the rename is atomic.
        self._check_target()
        # Noted before it exists, and removed on any failure here: a signal that lands right
        # after the mkdir (its exception raised by run_command's handler) leaves nothing behind.
        self._staging = staging = staging_path(self.path)
        self._created = missing_ancestors(self.path)  # folders made for this bag: gone again if it fails
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            bag_name = self.path.stem if self.single_file else self.path.name
            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            self._bag_dir = staging / bag_name
            self._writer = Writer(self._bag_dir, version=9, storage_plugin=plugin)
            self._writer.open()
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (WriterError, OSError)):
                raise BagError(f"{self.path}: cannot write bag: {getattr(exc, 'strerror', None) or exc}") from None
            raise

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic (also used to record a topic that received no messages)."""
        if topic in self._connections:
            return
        assert self._writer is not None, "BagWriter is not open"
        try:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        except (WriterError, TypesysError, KeyError) as exc:
            raise BagError(f"{self.path}: cannot add topic {topic} of type {msgtype}: {exc}") from None
        self.counts[topic] = 0

    def write_raw(self, topic: str, msgtype: str, timestamp_ns: int, cdr: bytes) -> None:
        """Store already serialised ROS 2 CDR (recorded from DDS or copied from another bag)."""
        self.add_topic(topic, msgtype)
        assert self._writer is not None
        self._writer.write(self._connections[topic], int(timestamp_ns), cdr)
        self.counts[topic] += 1

    def write(self, topic: str, timestamp_ns: int, msg: Any) -> None:
        """Serialise a rosbags message of the ROS 2 type store and store it."""
        msgtype = msg.__msgtype__
        self.write_raw(topic, msgtype, timestamp_ns, bytes(self.store.serialize_cdr(msg, msgtype)))

    def close(self) -> Path:
        """Finalise the bag and move it into place; returns the final path."""
        assert self._writer is not None and self._staging is not None, "BagWriter is not open"
        try:
            self._writer.close()  # a signal meanwhile: the finally below drops the staging folder
            self._writer = None
            with signals_held():  # the bag in place and the staging folder gone, or neither
                self._publish()
        except OSError as exc:
            raise BagError(f"{self.path}: cannot write bag: {exc.strerror or exc}") from None
        finally:
            self.abort()  # removes the staging folder (and the writer if close failed)
        return self.path

    def _publish(self) -> None:
        source = next(self._bag_dir.glob("*.mcap")) if self.single_file else self._bag_dir
        self._check_target()  # again: something may have appeared there while we recorded
        if not self.overwrite:
            try:  # and nothing that appears from now on is replaced either (no check-then-replace)
                rename_noreplace(source, self.path)
            except OSError as exc:
                appeared = (FileExistsError, IsADirectoryError, NotADirectoryError)
                if not isinstance(exc, appeared) and exc.errno != errno.ENOTEMPTY:
                    raise
                raise BagError(f"{self.path}: appeared while the bag was being written; it was not replaced "
                               "(pass --overwrite to replace it, or choose another path)") from None
            self._created = []
            return
        old: Path | None = None
        try:
            if self.path.exists() or self.path.is_symlink():
                # os.replace cannot put a folder onto a file or a non-empty folder: move the
                # previous output aside first, remove it once the new one is in place
                old = staging_path(self.path, "old")
                os.replace(self.path, old)
            os.replace(source, self.path)
            self._created = []
        finally:
            if old is not None:
                if self.path.exists():
                    remove_staging(old)
                else:  # the rename in failed: put the previous output back
                    os.replace(old, self.path)

    def abort(self) -> None:
        """Drop everything written so far (no output appears)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):  # already failing; the staging folder goes below regardless
                writer.abort()
        if self._staging is not None:
            remove_staging(self._staging)
            self._staging = None
        remove_empty_folders(self._created)
        self._created = []


def image_topic_namespace(topic: str) -> str:
    """``/front/image_raw`` -> ``/front``; ``image`` or ``/image`` -> ``""`` (root)."""
    topic = "/" + topic.lstrip("/")
    return topic.rsplit("/", 1)[0]


def sample_frames(path: str | os.PathLike, topic: str | None, count: int) -> Iterator[np.ndarray]:
    """``count`` RGB uint8 frames of image ``topic``, spread evenly over the bag (e.g. int8
    calibration); ``topic`` may be None when the bag holds exactly one image topic."""
    with BagReader(path) as reader:
        images = [t for t in reader.topics.values() if t.msgtype in IMAGE_TYPES]
        if topic is None:
            if len(images) != 1:
                names = ", ".join(t.name for t in images) or "none"
                raise BagError(f"--image-topic: {path} holds {len(images)} image topics ({names}); name one")
            topic = images[0].name
        info = reader.check_topic(topic)
        total = info.count
        keep = set(range(total)) if count >= total else {round(i * (total - 1) / max(1, count - 1))
                                                         for i in range(count)}
        for i, message in enumerate(reader.messages([topic])):
            if i in keep:
                try:
                    yield decode_image(message.msg, message.msgtype)
                except ValueError as exc:
                    raise BagError(f"{path}: {topic} message {i}: {exc}") from None


def read_label_classes(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                       option: str = "--label-classes") -> tuple[Any, np.ndarray | None]:
    """The class table of a bag's labels and its lookup label value -> train id.

    The table's ``id_map`` maps the values the labels hold (e.g. Cityscapes ``labelIds``) to its
    train ids, values it does not list to the ignore index, as training reads label PNGs; the
    lookup is None when the table has no ``id_map`` (the labels hold train ids). ``class_names``
    (the model's): the table must have exactly these, else a BagError naming ``option``."""
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.errors import ConfigError

    try:
        table = ClassTable.from_yaml(path)
    except (ConfigError, OSError) as exc:
        raise BagError(f"{option} {path}: {exc}") from None
    if class_names is not None and list(table.names) != list(class_names):
        raise BagError(f"{option} {path}: its classes ({', '.join(table.names[:5])}, ...) are not the model's "
                       f"({', '.join(list(class_names)[:5])}, ...)")
    return table, table.label_lut()


def write_png(path: Path, array: np.ndarray) -> None:
    """PNG through Python's file API: a full disk is an OSError naming the file (cv2.imwrite
    would print a libpng line and return False)."""
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise BagError(f"{path}: cannot encode the image as PNG")
    path.write_bytes(buf.tobytes())
