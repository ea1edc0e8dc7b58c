"""``sfnet-bag-play``: publish a bag's topics over DDS at their recorded timing, like ``ros2 bag play``.

    sfnet-bag-play --bag drive.mcap --rate 0.5 --topics /front/image_raw --wait-for-subscribers 1

Messages are published as the stored CDR bytes (``Publisher.publish(bytes)``: no decode, no copy
into Python message objects); ROS 1 bags are converted to ROS 2 CDR first. ``--restamp`` rewrites
each header stamp to the publish time (all messages sharing an original stamp, e.g. an image and
its label, get the same new stamp) so stamp-to-arrival latency downstream is meaningful.
``--lockstep IN:OUT`` publishes the next IN message only once OUT delivered a message with its
header stamp (timeout ``--lockstep-timeout``): nothing is dropped by a slow consumer, so counts are
exact; timing then follows the consumer instead of the bag. Best effort loses a sample the
subscriber's side has not matched yet (typically the first one after discovery): a message whose
answer does not come within the timeout is sent once more (``lockstep_resent``), then counted in
``lockstep_timeouts``.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sfnet_core.cli.common import make_parser, non_negative_int, positive_float
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.bag_io import BagError, BagReader, ros2_typestore
from sfnet_ros.tools.ros_args import init_rclpy, leave_rclpy, split_ros_args

# CDR encapsulation header: 2 bytes representation id (0x0001 little endian, 0x0000 big endian)
# + 2 option bytes; a message whose first field is a std_msgs/Header then starts with
# int32 sec, uint32 nanosec.
_STAMP = struct.Struct("<iI")
_STAMP_BE = struct.Struct(">iI")


def ros_message_class(msgtype: str) -> type:
    """rclpy message class for ``pkg/msg/Name`` (BagError if that package is not installed)."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not available in this ROS 2 installation") from None


def has_header(msgtype: str) -> bool:
    """True when the message starts with a std_msgs/Header (its stamp is then at a fixed offset)."""
    try:
        fields = ros2_typestore().fielddefs[msgtype][1]
    except KeyError:
        return False
    return bool(fields) and fields[0][0] == "header" and fields[0][1][1] == "std_msgs/msg/Header"


def _stamp_struct(cdr: bytes) -> struct.Struct:
    return _STAMP if cdr[1] & 1 else _STAMP_BE


def read_stamp(cdr: bytes) -> int:
    sec, nanosec = _stamp_struct(cdr).unpack_from(cdr, 4)
    return sec * 1_000_000_000 + nanosec


def restamp_cdr(cdr: bytes, stamp_ns: int) -> bytes:
    """Copy of ``cdr`` with its header stamp replaced (the message must start with a Header)."""
    out = bytearray(cdr)
    _stamp_struct(cdr).pack_into(out, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(out)


def qos_profile(kind: str) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    if kind == "reliable":
        # deep queue: a burst (rate > 1, or --loop restart) must not overrun a reliable reader
        return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    if kind == "best_effort":
        return QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
    raise BagError(f"unknown QoS {kind!r}; expected reliable or best_effort")


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    duration_s: float = 0.0
    lockstep_timeouts: int = 0
    lockstep_resent: int = 0  # messages sent a second time after a timeout (also in ``published``)
    interrupted: bool = False


class BagPlayer:
    """Publishes a bag through ``node``'s publishers. The caller spins ``node`` (needed for lockstep).

    ``on_publish(topic, original_stamp_ns, published_stamp_ns)`` is called after each message with a
    header, so callers can map restamped outputs back to the bag's frames.
    """

    def __init__(self, node: Any, bag: str | Path, topics: Sequence[str] | None = None, rate: float = 1.0,
                 qos: str = "reliable", restamp: bool = False, remap: dict[str, str] | None = None,
                 lockstep: tuple[str, str] | None = None, lockstep_timeout: float = 10.0,
                 on_publish: Callable[[str, int, int], None] | None = None) -> None:
        if rate <= 0:
            raise BagError(f"--rate must be > 0, got {rate}")
        self.node = node
        self.bag = Path(bag)
        self.rate = rate
        self.restamp = restamp
        self.on_publish = on_publish
        self.lockstep_timeout = lockstep_timeout
        self.stop_event = threading.Event()
        remap = remap or {}
        with BagReader(self.bag) as reader:
            available = reader.topics
            if not available:
                raise BagError(f"{self.bag}: the bag has no topics; nothing to play")
            if topics:
                for topic in topics:
                    reader.check_topic(topic, msgtypes=(), what="topic", allow_empty=True)
                chosen = list(topics)
            else:
                chosen = list(available)
        self.topics = chosen
        profile = qos_profile(qos)
        self.publishers: dict[str, Any] = {}
        self.headers: dict[str, bool] = {}
        for topic in chosen:
            msgtype = available[topic].msgtype
            try:
                cls = ros_message_class(msgtype)
            except BagError:
                if topics:
                    raise
                node.get_logger().warning(f"skipping {topic}: {msgtype} is not installed")
                continue
            try:
                self.publishers[topic] = node.create_publisher(cls, remap.get(topic, topic), profile)
            except Exception as exc:  # rclpy's InvalidTopicNameException & co: a bad --remap target
                raise BagError(f"cannot publish {topic} as {remap.get(topic, topic)!r}: "
                               f"{str(exc).splitlines()[0]}") from None
            self.headers[topic] = has_header(msgtype)
        if not self.publishers:
            raise BagError(f"{self.bag}: none of its topics has a message type installed here; topics: "
                           + ", ".join(f"{t} [{available[t].msgtype}]" for t in chosen))
        if all(available[t].count == 0 for t in self.publishers):
            raise BagError(f"{self.bag}: the played topics hold no messages ({', '.join(self.publishers)})")
        self._lockstep_in: str | None = None
        self._answered: collections.deque[int] = collections.deque(maxlen=1000)  # stamps OUT answered
        self._response_cond = threading.Condition()
        if lockstep:
            self._lockstep_in, out_topic = lockstep
            if self._lockstep_in not in self.publishers:
                raise BagError(f"--lockstep: {self._lockstep_in!r} is not a played topic")
            # OUT is a node output (sensor_msgs/Image); best effort matches reliable and best-effort
            # writers alike, and a lost response only costs one lockstep timeout.
            self._lockstep_sub = node.create_subscription(
                ros_message_class("sensor_msgs/msg/Image"), out_topic, self._on_response,
                qos_profile("best_effort"), raw=True)
            self.lockstep_out_topic = self._lockstep_sub.topic_name
        # original stamp -> new stamp, so an image and its label keep sharing a stamp
        self._stamp_map: collections.OrderedDict[int, int] = collections.OrderedDict()

    def _on_response(self, msg: bytes) -> None:
        with self._response_cond:
            self._answered.append(read_stamp(msg))
            self._response_cond.notify_all()

    def stop(self) -> None:
        self.stop_event.set()
        with self._response_cond:
            self._response_cond.notify_all()

    def wait_topics(self, topics: Sequence[str] | None = None) -> list[str]:
        """The played topics ``--wait-for-subscribers`` waits on: ``topics`` when given (each must
        be played), else the lockstep input when there is one, else every played topic."""
        if topics:
            unknown = [t for t in topics if t not in self.publishers]
            if unknown:
                raise BagError(f"--wait-topics: {', '.join(unknown)} not played (played: {', '.join(self.publishers)})")
            return list(topics)
        return [self._lockstep_in] if self._lockstep_in else list(self.publishers)

    def missing_subscribers(self, count: int, topics: Sequence[str]) -> list[str]:
        """Of ``topics``, those with fewer than ``count`` matched subscribers (published names)."""
        return [self.publishers[t].topic_name for t in topics if self.publishers[t].get_subscription_count() < count]

    def wait_for_subscribers(self, count: int, timeout: float, topics: Sequence[str] | None = None,
                             on_wait: Callable[[list[str]], None] | None = None) -> bool:
        """Block until each of ``wait_topics(topics)`` has ``count`` matched subscribers; False on
        timeout or stop. ``on_wait(missing)`` is called every 5 s while some are missing."""
        deadline = time.monotonic() + timeout
        chosen = self.wait_topics(topics)
        next_report = time.monotonic() + 5.0
        while missing := self.missing_subscribers(count, chosen):
            if time.monotonic() > deadline or self.stop_event.wait(0.05):
                return False
            if on_wait is not None and time.monotonic() >= next_report:
                on_wait(missing)
                next_report += 5.0
        return True

    def wait_for_answer_publisher(self, timeout: float) -> bool:
        """With ``--lockstep``: block until the answers' subscription has matched a publisher (the
        node's output). An answer sent before that match is lost, its frame is sent again after the
        lockstep timeout and the consumer answers it twice. True at once without lockstep; False
        on timeout or stop."""
        if self._lockstep_in is None:
            return True
        deadline = time.monotonic() + timeout
        subscription = self._lockstep_sub
        # matched publishers where rclpy has them (Iron and newer); Humble: the graph's count
        matched = getattr(subscription, "get_publisher_count", None) or partial(
            self.node.count_publishers, subscription.topic_name)
        while matched() == 0:
            if time.monotonic() > deadline or self.stop_event.wait(0.05):
                return False
        return True

    def _new_stamp(self, original: int) -> int:
        stamp = self._stamp_map.get(original)
        if stamp is None:
            stamp = time.time_ns()
            self._stamp_map[original] = stamp
            if len(self._stamp_map) > 1000:
                self._stamp_map.popitem(last=False)
        return stamp

    def play(self, loop: bool = False) -> PlayStats:
        stats = PlayStats(published={t: 0 for t in self.publishers})
        start = time.monotonic()
        while not self.stop_event.is_set():
            with BagReader(self.bag) as reader:
                first: int | None = None
                t0 = time.monotonic()
                for topic, _msgtype, timestamp, cdr in reader.cdr_messages(list(self.publishers)):
                    if first is None:
                        first = timestamp
                    # recorded timing, relative to the first message, scaled by the rate
                    delay = t0 + (timestamp - first) / 1e9 / self.rate - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                    if self.stop_event.is_set():
                        break
                    data = bytes(cdr)
                    if self.headers[topic]:
                        original = read_stamp(data)
                        published = original
                        if self.restamp:
                            published = self._new_stamp(original)
                            data = restamp_cdr(data, published)
                    self.publishers[topic].publish(data)
                    stats.published[topic] += 1
                    if self.headers[topic] and self.on_publish is not None:
                        self.on_publish(topic, original, published)
                    if topic == self._lockstep_in:
                        self._lockstep(topic, data, stats)
            stats.loops += 1
            if not loop:
                break
        stats.interrupted = self.stop_event.is_set()
        stats.duration_s = round(time.monotonic() - start, 3)
        return stats

    def _lockstep(self, topic: str, data: bytes, stats: PlayStats) -> None:
        """Wait until OUT answered ``data`` (same header stamp). Best effort loses a sample the
        subscriber's side has not matched yet (typically the first one after discovery), so a
        message without an answer after the lockstep timeout is sent once more; then it is given
        up and counted. (Not sooner: a slow consumer would answer both and publish twice.)"""
        stamp = read_stamp(data)
        if self._wait_response(stamp, self.lockstep_timeout) or self.stop_event.is_set():
            return
        self.publishers[topic].publish(data)
        stats.published[topic] += 1
        stats.lockstep_resent += 1
        if not self._wait_response(stamp, self.lockstep_timeout):
            stats.lockstep_timeouts += 1

    def _wait_response(self, stamp: int, timeout: float) -> bool:
        """True once OUT delivered a message stamped ``stamp`` (or the player is stopping); False
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._response_cond:
            while stamp not in self._answered and not self.stop_event.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._response_cond.wait(remaining)
        return True


class SpinThread:
    """Spins a node in a background thread (subscriptions keep flowing while the main thread works)."""

    def __init__(self, node: Any) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self.thread.start()

    def _spin(self) -> None:
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us: stop quietly
                if not self._running:
                    return
                raise

    def stop(self) -> None:
        self._running = False
        self.thread.join(timeout=5.0)
        self.executor.shutdown()


def parse_remap(items: Sequence[str]) -> dict[str, str]:
    result = {}
    for item in items:
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise BagError(f"--remap {item!r}: expected FROM:=TO")
        result[source] = target
    return result


DESCRIPTION = """Publish a bag's topics over DDS at their recorded timing (scaled by --rate), like
ros2 bag play, from the stored CDR bytes.

  sfnet-bag-play --bag drive.mcap --topics /front/image_raw --rate 0.5 --wait-for-subscribers 1

ROS arguments go after --ros-args (e.g. --ros-args -r __ns:=/veh). SIGINT or SIGTERM stop the
playback: the report (with "interrupted": true) is printed and the exit status is 0. It writes no
file."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-bag-play", DESCRIPTION)
    p.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file, or ROS 1 .bag")
    p.add_argument("--topics", nargs="+", help="topics to play (default: all with an installed type)")
    p.add_argument("--rate", type=positive_float, default=1.0, help="playback speed factor")
    p.add_argument("--loop", action="store_true", help="start over at the end until interrupted")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable", help="publisher reliability")
    p.add_argument("--restamp", action="store_true", help="rewrite header stamps to the publish time")
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish a bag topic under another name")
    p.add_argument("--wait-for-subscribers", type=non_negative_int, default=0, metavar="N",
                   help="before playing, wait until each topic of --wait-topics has N subscribers")
    p.add_argument("--wait-topics", nargs="+", metavar="TOPIC",
                   help="the (bag) topics --wait-for-subscribers waits on (default: the --lockstep input, "
                        "else every played topic)")
    p.add_argument("--wait-timeout", type=positive_float, default=30.0, metavar="S",
                   help="seconds to wait for --wait-for-subscribers")
    p.add_argument("--lockstep", metavar="IN:OUT",
                   help="after each IN message wait for one OUT message (an Image topic, e.g. "
                        "/front/image_raw:/front/segmentation/labels; default: recorded timing)")
    p.add_argument("--lockstep-timeout", type=positive_float, default=10.0, metavar="S",
                   help="seconds to wait for each OUT message")
    return p


def main(argv: list[str] | None = None) -> int:
    own, ros_args = split_ros_args(argv)
    args = build_parser().parse_args(own)
    lockstep = None
    if args.lockstep:
        source, sep, target = args.lockstep.partition(":")
        if not sep or not source or not target:
            print(f"sfnet-bag-play: error: --lockstep {args.lockstep!r}: expected IN:OUT", file=sys.stderr)
            return 2
        lockstep = (source, target)
    try:
        remap = parse_remap(args.remap)
    except BagError as exc:
        print(f"sfnet-bag-play: error: {exc}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    player: BagPlayer | None = None

    def on_signal(_signum: int, _frame: Any) -> None:
        stopped.set()
        if player is not None:
            player.stop()

    # our own handlers: a signal ends playback cleanly (rclpy's would tear the context down mid-publish)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = None
    spinner: SpinThread | None = None
    try:
        import rclpy  # lazy: the ROS runtime, after the option checks above

        init_rclpy("sfnet-bag-play", ros_args)
        node = rclpy.create_node("sfnet_bag_play")
        player = BagPlayer(node, args.bag, args.topics, args.rate, args.qos, args.restamp,
                           remap, lockstep, args.lockstep_timeout)
        if stopped.is_set():
            player.stop()
        spinner = SpinThread(node)
        if args.wait_for_subscribers > 0:
            waited = [player.publishers[t].topic_name for t in player.wait_topics(args.wait_topics)]
            print(f"sfnet-bag-play: waiting for {args.wait_for_subscribers} subscriber(s) on {', '.join(waited)}",
                  file=sys.stderr, flush=True)

            def still_waiting(missing: list[str]) -> None:
                print(f"sfnet-bag-play: still no subscriber on {', '.join(missing)}", file=sys.stderr, flush=True)

            if not player.wait_for_subscribers(args.wait_for_subscribers, args.wait_timeout, args.wait_topics,
                                               on_wait=still_waiting):
                if player.stop_event.is_set():
                    print("sfnet-bag-play: stopped before playing", file=sys.stderr)
                    return 0
                missing = player.missing_subscribers(args.wait_for_subscribers, player.wait_topics(args.wait_topics))
                print(f"sfnet-bag-play: error: fewer than {args.wait_for_subscribers} subscriber(s) on "
                      f"{', '.join(missing)} after {args.wait_timeout} s (--wait-topics chooses the topics "
                      "to wait on)", file=sys.stderr)
                return 2
            if not player.wait_for_answer_publisher(args.wait_timeout) and not player.stop_event.is_set():
                print(f"sfnet-bag-play: warning: nothing publishes the lockstep answers on "
                      f"{player.lockstep_out_topic} yet; playing anyway", file=sys.stderr, flush=True)
        print(f"sfnet-bag-play: playing {', '.join(player.publishers)} at rate {args.rate}",
              file=sys.stderr, flush=True)
        stats = player.play(loop=args.loop)
        if stats.interrupted:
            print("sfnet-bag-play: stopped by a signal", file=sys.stderr)
        print(json.dumps({"published": stats.published, "loops": stats.loops, "duration_s": stats.duration_s,
                          "lockstep_timeouts": stats.lockstep_timeouts,
                          "lockstep_resent": stats.lockstep_resent, "interrupted": stats.interrupted}))
        return 0
    except SFNetError as exc:
        print(f"sfnet-bag-play: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if spinner is not None:
            spinner.stop()
        leave_rclpy(node, previous)


if __name__ == "__main__":
    sys.exit(main())
