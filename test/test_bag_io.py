"""bag_io + synthetic_bag: real bags written by rosbags in every format we claim to read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sfnet_core.io_utils import OutputError
from sfnet_ros.tools.bag_io import (
    COMPRESSED,
    IMAGE,
    BagError,
    BagReader,
    BagWriter,
    check_bag_output,
    decode_image,
    decode_labels,
    is_bag_folder,
    make_header,
    ros2_class,
    ros2_typestore,
    stamp_name,
)
from sfnet_ros.tools.synthetic_bag import START_NS, TRANSPORT_DELAY_NS, frame_stamps, write_synthetic_bag

H, W, N = 32, 64, 3

# (storage, path name, compressed): rosbag2 MCAP dir and single file, sqlite3 dir, ROS 1 bag
FORMATS = [
    ("mcap", "bag_dir", False),
    ("mcap", "bag.mcap", True),
    ("sqlite3", "bag_sqlite", False),
    ("sqlite3", "bag_sqlite_c", True),
    ("ros1", "bag.bag", False),
    ("ros1", "bag_c.bag", True),
]


@pytest.mark.parametrize("storage,name,compressed", FORMATS)
def test_roundtrip_every_format(tmp_path: Path, storage: str, name: str, compressed: bool) -> None:
    path, images, labels = write_synthetic_bag(tmp_path / name, N, H, W, seed=3, compressed=compressed,
                                               storage=storage)
    with BagReader(path) as reader:
        image_type = COMPRESSED if compressed else IMAGE
        assert reader.topics["/front/image_raw"].msgtype == image_type
        assert reader.topics["/front/image_raw"].count == N
        assert reader.topics["/front/labels"].count == N
        msgs = list(reader.messages(["/front/image_raw"]))
        assert [m.stamp for m in msgs] == frame_stamps(N, 10.0)
        assert [m.timestamp for m in msgs] == [s + TRANSPORT_DELAY_NS for s in frame_stamps(N, 10.0)]
        for m, image in zip(msgs, images):
            np.testing.assert_array_equal(decode_image(m.msg, m.msgtype), image)  # PNG is lossless
            assert m.msg.header.frame_id == "front_camera"
        got_labels = [decode_labels(m.msg, m.msgtype) for m in reader.messages(["/front/labels"])]
        for got, want in zip(got_labels, labels):
            np.testing.assert_array_equal(got, want)
        # CDR for ROS 2 tools, whatever the bag's format (ROS 1 converted, Header.seq dropped)
        cdr = [c for _, _, _, c in reader.cdr_messages(["/front/image_raw"])]
        decoded = ros2_typestore().deserialize_cdr(cdr[1], image_type)
        assert decoded.header.stamp.sec == frame_stamps(N, 10.0)[1] // 10**9
        np.testing.assert_array_equal(decode_image(decoded, image_type), images[1])


def test_bare_storage_file_of_a_directory_bag(tmp_path: Path) -> None:
    path, images, _ = write_synthetic_bag(tmp_path / "dirbag", N, H, W, storage="sqlite3")
    (db3,) = path.glob("*.db3")
    assert db3.name == "dirbag.db3"  # named after the final directory, not a temp name
    with BagReader(db3) as reader:
        frames = [decode_image(m.msg, m.msgtype) for m in reader.messages(["/front/image_raw"])]
    assert len(frames) == N
    np.testing.assert_array_equal(frames[-1], images[-1])


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.mcap"
    with pytest.raises(RuntimeError, match="boom"), BagWriter(target) as writer:
        writer.write("/h", 1, make_header(1, "x"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor the staging folder
    with BagWriter(target) as writer:
        writer.write("/h", 5, make_header(5, "first"))
    # an existing output is refused (before anything is written) unless overwrite=True
    with pytest.raises(BagError, match="exists; pass --overwrite"):
        BagWriter(target).open()
    with BagWriter(target, overwrite=True) as writer:
        writer.write("/h", 5, make_header(5, "second"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mcap"]
    with BagReader(target) as reader:
        (msg,) = list(reader.messages())
    assert msg.msg.frame_id == "second" and msg.timestamp == 5


def test_a_signal_right_after_the_staging_folder_appears_leaves_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The window sfnet-bag-eval's SIGTERM test hit one run in many: the staging folder exists and
    the signal's exception comes before the writer noted it. Here the exception comes from inside
    that very mkdir, after the folder was made."""
    original = Path.mkdir

    def mkdir_then_signal(self: Path, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.name.startswith(".out.mcap."):
            raise KeyboardInterrupt  # what run_command's SIGINT/SIGTERM handlers raise

    monkeypatch.setattr(Path, "mkdir", mkdir_then_signal)
    with pytest.raises(KeyboardInterrupt), BagWriter(tmp_path / "out.mcap") as writer:
        writer.open()
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_only_bags(tmp_path: Path) -> None:
    """overwrite=True replaces a file or a rosbag2 folder, never any other folder."""
    bag_dir = tmp_path / "bag_dir"
    for frame_id in ("first", "second"):
        with BagWriter(bag_dir, overwrite=True) as writer:
            writer.write("/h", 1, make_header(1, frame_id))
    assert is_bag_folder(bag_dir)
    with BagReader(bag_dir) as reader:
        assert next(reader.messages()).msg.frame_id == "second"
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.yaml").write_text("not only a bag")
    (data / "labels.png").write_bytes(b"somebody's work")
    assert not is_bag_folder(data)
    with pytest.raises(BagError, match="not a bag; it is never replaced"), BagWriter(data, overwrite=True) as writer:
        writer.write("/h", 1, make_header(1, "x"))
    assert sorted(p.name for p in data.iterdir()) == ["labels.png", "metadata.yaml"]
    # a file in the way of a folder bag (and the reverse) is replaced as asked
    (tmp_path / "was_a_file").write_text("x")
    with BagWriter(tmp_path / "was_a_file", overwrite=True) as writer:
        writer.write("/h", 1, make_header(1, "x"))
    assert is_bag_folder(tmp_path / "was_a_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag_dir", "data", "was_a_file"]  # no staging left


def test_check_bag_output(tmp_path: Path) -> None:
    bag, _, _ = write_synthetic_bag(tmp_path / "in_dir", 1, H, W)
    with pytest.raises(OutputError, match="is the input"):
        check_bag_output(bag, inputs=[bag], overwrite=True)
    with pytest.raises(OutputError, match="is inside the input"):
        check_bag_output(bag / "x.mcap", inputs=[bag])
    with pytest.raises(OutputError, match="contains the input"):
        check_bag_output(tmp_path, inputs=[bag], overwrite=True)
    with pytest.raises(BagError, match="--storage sqlite3 writes a rosbag2 folder"):
        check_bag_output(tmp_path / "x.mcap", storage="sqlite3")
    with pytest.raises(OutputError, match="exists"):
        check_bag_output(bag)
    assert check_bag_output(bag, overwrite=True) == bag.resolve()  # a bag folder: ours to replace
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("x")
    with pytest.raises(OutputError, match="never replaced"):
        check_bag_output(tmp_path / "plain", overwrite=True)
    (tmp_path / "dir.mcap").mkdir()  # a folder where the single-file bag would go
    with pytest.raises(OutputError, match="is a folder; the output is a file"):
        check_bag_output(tmp_path / "dir.mcap", overwrite=True)
    assert check_bag_output(tmp_path / "new.mcap") == (tmp_path / "new.mcap").resolve()


def _error(path: Path, topic: str | None = None, **kwargs: object) -> str:
    with pytest.raises(BagError) as info, BagReader(path) as reader:
        if topic is not None:
            reader.check_topic(topic, **kwargs)
    return str(info.value)


def test_clear_errors(tmp_path: Path) -> None:
    assert "no such bag" in _error(tmp_path / "missing.mcap")
    for suffix in (".mcap", ".db3", ".bag"):
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(b"\x00garbage" * 64)
        assert "cannot read bag" in _error(garbage)
    (tmp_path / "plain_dir").mkdir()
    assert "no metadata.yaml" in _error(tmp_path / "plain_dir")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unknown bag format" in _error(tmp_path / "notes.txt")

    bag = tmp_path / "mixed.mcap"
    with BagWriter(bag) as writer:
        writer.write("/chatter", 1, ros2_class("std_msgs/msg/String")(data="hi"))
        writer.add_topic("/empty/image_raw", IMAGE)
        writer.write("/cam/image_raw", 2, _tiny_image())
    message = _error(bag, "/nope")
    assert "'/nope' not in the bag" in message
    assert "/cam/image_raw [sensor_msgs/msg/Image, 1 msgs]" in message and "/chatter" in message
    message = _error(bag, "/chatter")
    assert "has type std_msgs/msg/String" in message and "sensor_msgs/msg/Image" in message
    assert "has no messages" in _error(bag, "/empty/image_raw")


def _tiny_image() -> object:
    from sfnet_ros.conversions import numpy_to_image

    return numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8", header=make_header(START_NS),
                          msg_cls=ros2_class(IMAGE))


def test_stamp_names_sort_in_time() -> None:
    names = [stamp_name(s) for s in (9 * 10**9 + 5, 10 * 10**9, 10 * 10**9 + 1)]
    assert names == sorted(names)
    assert names[0] == "0000000009_000000005"


@pytest.mark.parametrize("when", ["before the last check", "after the last check"])
def test_a_bag_path_that_appears_while_recording_is_never_replaced(tmp_path: Path, when: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Something written at the bag's path by another process meanwhile (a file, a folder with
    files) stays as it was, whether it came before close()'s check or between the check and the
    rename (the rename itself refuses); one message, no staging folder left."""
    from sfnet_ros.tools.bag_io import BagError, BagWriter

    message = "exists; pass --overwrite" if when == "before the last check" else "appeared while the bag was being"
    for name, make in (("drive.mcap", lambda p: p.write_text("somebody's file")),
                       ("drive_dir", lambda p: (p.mkdir(), (p / "keep.txt").write_text("data")))):
        target = tmp_path / name
        writer = BagWriter(target)
        with pytest.raises(BagError, match=f"{name}: {message}"), writer:
            writer.write_raw("/t", "std_msgs/msg/String", 1, bytes([0, 1, 0, 0, 2, 0, 0, 0]) + b"x\0")
            make(target)
            if when == "after the last check":
                monkeypatch.setattr(writer, "_check_target", lambda: None)
        kept = target.read_text() if target.is_file() else (target / "keep.txt").read_text()
        assert kept in ("somebody's file", "data")
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
