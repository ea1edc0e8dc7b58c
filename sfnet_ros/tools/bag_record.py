"""``sfnet-bag-record``: record topics into an MCAP bag, like ``ros2 bag record``.

    sfnet-bag-record --topics /front/segmentation/labels /front/segmentation/color --out run.mcap

Each topic is subscribed as soon as it appears in the ROS graph (its type is taken from the graph,
or from ``--type TOPIC:=pkg/msg/Type``), with raw subscriptions: the CDR bytes go straight into
the bag. QoS ``auto`` follows the publishers (reliable only when every publisher is reliable,
transient local when every publisher is, e.g. for latched topics). Recording stops on
SIGINT/SIGTERM, after ``--duration`` seconds or ``--max-messages`` messages (all topics together);
the bag is then finalised and renamed into place, so an interrupted recording is still a valid
bag and a crash leaves no half-written file at ``--out``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfnet_core.errors import SFNetError
from sfnet_ros.tools.bag_io import BagError, BagWriter, ros2_typestore
from sfnet_ros.tools.bag_play import ros_message_class


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
        self.topics = [node.resolve_topic_name(t) for t in topics]
        self.types = {node.resolve_topic_name(k): v for k, v in (types or {}).items()}
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfnet-bag-record", description="Record topics to an MCAP bag.")
    p.add_argument("--topics", nargs="+", required=True)
    p.add_argument("--out", required=True, help="bag path: NAME.mcap (one file) or a directory name (rosbag2)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-messages", type=int, help="stop after this many messages (all topics together)")
    p.add_argument("--type", nargs="+", default=[], metavar="TOPIC:=pkg/msg/Type",
                   help="types of topics that may not be published yet")
    p.add_argument("--qos", choices=("auto", "reliable", "best_effort"), default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.duration is not None and args.duration <= 0) or (args.max_messages is not None and args.max_messages < 1):
        print("sfnet-bag-record: error: --duration must be > 0 and --max-messages >= 1", file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f"sfnet-bag-record: error: {args.out} exists already; choose a new --out", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    # our own handlers: rclpy's would shut the context down before the bag is finalised
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = rclpy.create_node("sfnet_bag_record")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    writer = BagWriter(args.out, storage=args.storage)
    try:
        writer.open()
        recorder = Recorder(node, writer, args.topics, parse_types(args.type), args.qos, args.max_messages)
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
    except BaseException:
        writer.abort()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    print(f"sfnet-bag-record: wrote {sum(writer.counts.values())} messages to {path}", file=sys.stderr)
    print(json.dumps({"out": str(path), "messages": writer.counts, "duration_s": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
