"""``sfnet-bag-record``: record topics into a bag, like ``ros2 bag record``.

    sfnet-bag-record --topics /front/segmentation/labels /front/segmentation/color --out run.mcap

Storage: MCAP (default; ``--out NAME.mcap`` = one MCAP file, any other name = a rosbag2 folder)
or sqlite3 (``--storage sqlite3``: always a rosbag2 folder ``NAME/NAME.db3``; a ``.mcap`` name is
refused).

Each topic is subscribed as soon as it appears in the ROS graph (its type is taken from the graph,
or from ``--type TOPIC:=pkg/msg/Type``), with raw subscriptions: the CDR bytes go straight into
the bag. QoS ``auto`` follows the publishers (reliable only when every publisher is reliable,
transient local when every publisher is, e.g. for latched topics). Recording stops on
SIGINT/SIGTERM, after ``--duration`` seconds or ``--max-messages`` messages (all topics together);
the bag is then finalised and renamed into place, so an interrupted recording is still a valid
bag and a crash leaves no half-written file at ``--out``. A signal is the normal way to end a
recording, so it exits 0 (with one line saying which signal stopped it); an error exits 2 and
leaves nothing at ``--out``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sfnet_core.cli.common import add_overwrite, make_parser, positive_float, positive_int
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.bag_io import BAG_STORAGES, BagError, BagWriter, check_bag_output, ros2_typestore
from sfnet_ros.tools.bag_play import ros_message_class
from sfnet_ros.tools.ros_args import init_rclpy, leave_rclpy, split_ros_args


def resolve_topic(node: Any, topic: str, what: str = "--topics") -> str:
    """The fully qualified name of ``topic`` for ``node``, or a BagError saying why it is invalid."""
    try:
        return node.resolve_topic_name(topic)
    except Exception as exc:  # rclpy.exceptions.InvalidTopicNameException (rcl's validation)
        reason = str(exc).splitlines()[0].split(", at /")[0]  # without rcl's source location
        raise BagError(f"{what}: {topic!r} is not a valid ROS topic name ({reason})") from None


def _qos_for(node: Any, topic: str, mode: str) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = ReliabilityPolicy.BEST_EFFORT
    durability = DurabilityPolicy.VOLATILE
    if mode == "reliable":
        reliability = ReliabilityPolicy.RELIABLE
    elif mode == "auto":
        infos = node.get_publishers_info_by_topic(topic)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos):
            reliability = ReliabilityPolicy.RELIABLE
        if infos and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos):
            durability = DurabilityPolicy.TRANSIENT_LOCAL
    # a deep queue: the executor may fall behind a burst while the bag file is being written
    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=reliability, durability=durability)


class Recorder:
    """Subscribes to ``topics`` on ``node`` as they appear and writes what arrives to ``writer``.

    Everything runs in the thread that calls ``poll()`` / spins the node; no locking needed.
    """

    def __init__(self, node: Any, writer: BagWriter, topics: Sequence[str], types: dict[str, str] | None = None,
                 qos: str = "auto", max_messages: int | None = None) -> None:
        self.node = node
        self.writer = writer
        self.topics = [resolve_topic(node, t) for t in topics]
        self.types = {resolve_topic(node, k, "--type"): v for k, v in (types or {}).items()}
        for topic, msgtype in self.types.items():
            if msgtype not in ros2_typestore().fielddefs:
                raise BagError(f"--type {topic}:={msgtype}: type unknown to rosbags' type store")
            ros_message_class(msgtype)  # BagError if this ROS 2 installation lacks it
        unknown = sorted(set(self.types) - set(self.topics))
        if unknown:
            raise BagError(f"--type names topic(s) not in --topics: {', '.join(unknown)}")
        self.qos = qos
        self.max_messages = max_messages
        self.subscriptions: dict[str, Any] = {}
        self.count = 0
        self.done = threading.Event()

    def poll(self) -> None:
        """Subscribe to newly discovered topics (call periodically)."""
        missing = [t for t in self.topics if t not in self.subscriptions]
        if not missing:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in missing:
            msgtype = self.types.get(topic) or (graph.get(topic) or [None])[0]
            if msgtype is None:
                continue
            if msgtype not in ros2_typestore().fielddefs:
                raise BagError(f"cannot record {topic}: type {msgtype} is unknown to rosbags' type store")
            self.writer.add_topic(topic, msgtype)
            self.subscriptions[topic] = self.node.create_subscription(
                ros_message_class(msgtype), topic, lambda data, t=topic, m=msgtype: self._on_message(t, m, data),
                _qos_for(self.node, topic, self.qos), raw=True)
            print(f"sfnet-bag-record: subscribed {topic} [{msgtype}]", file=sys.stderr, flush=True)

    def all_subscribed(self) -> bool:
        return len(self.subscriptions) == len(self.topics)

    def _on_message(self, topic: str, msgtype: str, data: bytes) -> None:
        if self.done.is_set():
            return
        self.writer.write_raw(topic, msgtype, time.time_ns(), data)
        self.count += 1
        if self.writer.counts[topic] == 1:
            print(f"sfnet-bag-record: first message on {topic}", file=sys.stderr, flush=True)
        if self.max_messages is not None and self.count >= self.max_messages:
            self.done.set()


def parse_types(items: Sequence[str]) -> dict[str, str]:
    result = {}
    for item in items:
        topic, sep, msgtype = item.partition(":=")
        if not sep or not topic or msgtype.count("/") != 2:
            raise BagError(f"--type {item!r}: expected TOPIC:=pkg/msg/Type")
        result[topic] = msgtype
    return result


DESCRIPTION = """Record topics into a bag, like ros2 bag record.

  sfnet-bag-record --topics /front/segmentation/labels /front/segmentation/color --out run.mcap
  sfnet-bag-record --topics /front/image_raw --type /front/image_raw:=sensor_msgs/msg/Image --out cam

Storage: mcap (--out NAME.mcap: one MCAP file, what Foxglove opens; any other name: a rosbag2
folder, what ros2 bag play opens) or sqlite3 (always a rosbag2 folder NAME/NAME.db3; a name
ending in .mcap is refused). --out is refused if it exists (unless --overwrite; a folder only if
it is a bag). ROS arguments go after --ros-args. SIGINT or SIGTERM end the recording normally:
the bag is finalised and moved into place, exit status 0."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-bag-record", DESCRIPTION)
    p.add_argument("--topics", nargs="+", required=True, help="topics to record")
    p.add_argument("--out", required=True, help="bag path: NAME.mcap (one MCAP file) or NAME (a rosbag2 folder)")
    p.add_argument("--storage", choices=BAG_STORAGES, default="mcap",
                   help="mcap, or sqlite3 (the rosbag2 .db3 format of older distros)")
    p.add_argument("--duration", type=positive_float, default=None,
                   help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--max-messages", type=positive_int, default=None,
                   help="stop after this many messages, all topics together (default: no limit)")
    p.add_argument("--type", nargs="+", default=[], metavar="TOPIC:=pkg/msg/Type",
                   help="types of topics that may not be published yet")
    p.add_argument("--qos", choices=("auto", "reliable", "best_effort"), default="auto",
                   help="auto: reliable only if every publisher is, transient local if every publisher is")
    add_overwrite(p, "an existing --out bag")
    return p


def main(argv: list[str] | None = None) -> int:
    own, ros_args = split_ros_args(argv)
    args = build_parser().parse_args(own)
    try:
        types = parse_types(args.type)
        check_bag_output(args.out, overwrite=args.overwrite, storage=args.storage)
    except SFNetError as exc:
        print(f"sfnet-bag-record: error: {exc}", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    stop = threading.Event()
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    # our own handlers: rclpy's would shut the context down before the bag is finalised
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = executor = None
    writer = BagWriter(args.out, storage=args.storage, overwrite=args.overwrite)
    started = time.monotonic()
    try:
        init_rclpy("sfnet-bag-record", ros_args)
        node = rclpy.create_node("sfnet_bag_record")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        recorder = Recorder(node, writer, args.topics, types, args.qos, args.max_messages)
        writer.open()
        announced = False
        started = time.monotonic()
        while not stop.is_set() and not recorder.done.is_set():
            recorder.poll()
            if recorder.all_subscribed() and not announced:
                print(f"sfnet-bag-record: recording {len(recorder.topics)} topic(s) to {args.out}",
                      file=sys.stderr, flush=True)
                announced = True
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            executor.spin_once(timeout_sec=0.1)
        path = writer.close()
    except SFNetError as exc:
        writer.abort()
        print(f"sfnet-bag-record: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the disk filled up while recording: one line, nothing at --out
        writer.abort()
        print(f"sfnet-bag-record: error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except BaseException:
        writer.abort()
        raise
    finally:
        if executor is not None:
            executor.shutdown()
        leave_rclpy(node, previous)
    how = f"stopped by {stopped_by[0]}; " if stopped_by else ""
    print(f"sfnet-bag-record: {how}wrote {sum(writer.counts.values())} messages to {path}", file=sys.stderr)
    print(json.dumps({"out": str(path), "messages": writer.counts, "duration_s": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
