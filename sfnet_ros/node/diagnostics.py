"""Per-camera counters and the /diagnostics message built from them.

The callback thread counts arrivals and stale drops, the worker thread counts bad input,
oversized frames and publications and records latencies, the executor records incompatible-QoS
events; the diagnostics timer takes a snapshot once per period and starts a new window. One lock
per camera keeps the threads apart (the work under it is a few additions, so nobody waits
noticeably).

Keys in each camera's DiagnosticStatus (values are strings, as KeyValue requires):
``input_rate_hz``, ``output_rate_hz``, ``latency_receive_to_publish_ms_mean|max``,
``latency_stamp_to_publish_ms_mean|max`` (window; ``nan`` without publications),
``dropped_stale``, ``dropped_bad_input``, ``dropped_too_large``, ``skipped_no_subscribers``
(window) and their ``*_total`` twins since activation, ``frames_received_total``,
``frames_published_total``, ``last_bad_input`` / ``last_too_large`` (why the last such frame was
dropped), ``seconds_since_last_frame`` (since activation while none came), ``output_subscribers``
(subscriptions matched on this camera's image outputs), ``qos_incompatible`` (the incompatible
QoS peers of this camera's topics, offered and requested policies; empty when none),
``qos_incompatible_events_total``, the loss counts (``lost_dds`` and ``lost_stamp_gaps`` in the
window and their ``*_total`` twins: frames DDS reported lost between a matched publisher and the
node through the subscription's message-lost event, and frames missing by the header stamps
against the camera's observed period, ``stamp_period_ms``; ``loss_ratio``: the larger of the two
over the window's received + lost; ``message_lost_event``: whether the rclpy/RMW in use delivers
that event), ``input_publishers`` (publishers matched on the camera's input), and the camera_info
counts since activation:
``camera_info_received_total``, ``camera_info_published_total`` (segmentation/camera_info
messages sent), ``camera_info_stamp_mismatch_total`` (of those, sent with the newest camera_info
because none carried the frame's stamp) and ``frames_without_camera_info_total`` (frames published
before any camera_info arrived: no segmentation/camera_info for them).

Levels: ERROR when no frame came for ``input_timeout_error`` s; WARN when the node is not active,
no frame came for ``input_timeout_warn`` s, a peer has incompatible QoS, frames were dropped
(bad input, too large) in the window, or the window's loss ratio is above ``input_loss_warn``; OK
otherwise. The message names every cause, and says when frames arrive but no output has a
subscriber (so none is processed). A camera whose input has a matched publisher but that received
nothing within the timeout says exactly that, and points at docs/transport.md.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = [
    "LOSS_CAUSE",
    "CameraStats",
    "StampGaps",
    "StatsWindow",
    "camera_status",
    "count_message_lost",
    "diagnostic_array",
    "loss_ratio",
    "node_status",
    "process_memory_mb",
]


@dataclass
class StatsWindow:
    """What happened to one camera during one diagnostics window."""

    seconds: float
    received: int = 0
    published: int = 0
    dropped_stale: int = 0
    dropped_bad_input: int = 0
    dropped_too_large: int = 0
    skipped_no_subscribers: int = 0
    lost_dds: int = 0           # DDS message-lost events (total_count_change)
    lost_stamp_gaps: int = 0    # frames missing by the header stamps
    receive_to_publish_ms: list[float] = field(default_factory=list)
    stamp_to_publish_ms: list[float] = field(default_factory=list)


#: The stamp-gap rule: the camera's period is a low percentile of its last STAMP_HISTORY stamp
#: intervals (robust to jitter and to the long intervals of the gaps themselves), estimated once
#: STAMP_MIN_INTERVALS are known; an interval of at least STAMP_GAP_FACTOR periods misses
#: round(interval / period) - 1 frames. Longer than STAMP_RESTART_S (a camera or bag restarted, a
#: pause) or backwards (a bag played again) is a new start, not loss: the input timeout reports
#: silence.
STAMP_HISTORY = 16
STAMP_MIN_INTERVALS = 4
STAMP_PERCENTILE = 0.25
STAMP_GAP_FACTOR = 1.5
STAMP_RESTART_S = 5.0
#: What the message says about frames that went missing (counted by DDS or by the stamps).
LOSS_CAUSE = ("large frames lost in transport (a publisher without the large-frame Fast DDS profile?), the "
              "node's input queue overflowing (qos_depth), or the camera dropping frames: see docs/transport.md")


class StampGaps:
    """Frames missing between consecutive header stamps of one camera (not thread-safe: the
    caller holds its lock)."""

    def __init__(self) -> None:
        self._last_ns: int | None = None
        self._intervals: deque[int] = deque(maxlen=STAMP_HISTORY)

    def period_ns(self) -> int | None:
        """The camera's observed period (None until STAMP_MIN_INTERVALS intervals are known)."""
        if len(self._intervals) < STAMP_MIN_INTERVALS:
            return None
        ordered = sorted(self._intervals)
        return ordered[int(STAMP_PERCENTILE * (len(ordered) - 1))]

    def observe(self, stamp_ns: int) -> int:
        """Take the stamp of the next received frame; returns the frames missing before it."""
        if stamp_ns <= 0:  # an unstamped camera: nothing to judge by
            return 0
        last, self._last_ns = self._last_ns, stamp_ns
        if last is None or stamp_ns == last:
            return 0
        interval = stamp_ns - last
        if interval < 0 or interval > STAMP_RESTART_S * 1e9:
            self._intervals.clear()
            return 0
        period = self.period_ns()
        self._intervals.append(interval)
        if not period or interval < STAMP_GAP_FACTOR * period:
            return 0
        return max(1, round(interval / period) - 1)


class CameraStats:
    """Thread-safe counters of one camera: a current window plus totals since creation
    (= since the activation that created it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self._window_start = self.started
        self._window = StatsWindow(seconds=0.0)
        self.totals = StatsWindow(seconds=0.0)  # latency lists unused in totals
        self.last_bad_input = ""
        self.last_too_large = ""
        self.last_received: float | None = None  # time.monotonic() of the newest frame
        self.qos_events_total = 0
        self.camera_info_received_total = 0
        self.camera_info_published_total = 0
        self.camera_info_stamp_mismatch_total = 0
        self.frames_without_camera_info_total = 0
        self._stamps = StampGaps()
        # time.monotonic() since which the input has had a matched publisher (None: none now).
        self.publisher_since: float | None = None
        # endpoint ("input" or an output topic) -> (text of the incompatibility, time.monotonic()
        # of the event), kept while the incompatible peer exists (the node re-checks the graph).
        self._qos_incompatible: dict[str, tuple[str, float]] = {}

    def received(self, replaced_stale: bool, stamp_ns: int = 0) -> None:
        with self._lock:
            self.last_received = time.monotonic()
            self._window.received += 1
            self.totals.received += 1
            if replaced_stale:
                self._window.dropped_stale += 1
                self.totals.dropped_stale += 1
            missing = self._stamps.observe(stamp_ns)
            if missing:
                self._window.lost_stamp_gaps += missing
                self.totals.lost_stamp_gaps += missing

    def message_lost(self, count: int) -> None:
        """DDS reported ``count`` more messages lost between a matched publisher and us."""
        if count <= 0:
            return
        with self._lock:
            self._window.lost_dds += count
            self.totals.lost_dds += count

    def stamp_period_ms(self) -> float:
        with self._lock:
            period = self._stamps.period_ns()
        return math.nan if period is None else period / 1e6

    def publishers_seen(self, count: int, now: float | None = None) -> None:
        """The input's matched publisher count, as the diagnostics timer sees it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if count <= 0:
                self.publisher_since = None
            elif self.publisher_since is None:
                self.publisher_since = now

    def dropped_stale(self, count: int = 1) -> None:
        with self._lock:
            self._window.dropped_stale += count
            self.totals.dropped_stale += count

    def bad_input(self, reason: str) -> None:
        with self._lock:
            self._window.dropped_bad_input += 1
            self.totals.dropped_bad_input += 1
            self.last_bad_input = reason

    def too_large(self, reason: str) -> None:
        with self._lock:
            self._window.dropped_too_large += 1
            self.totals.dropped_too_large += 1
            self.last_too_large = reason

    def skipped(self) -> None:
        with self._lock:
            self._window.skipped_no_subscribers += 1
            self.totals.skipped_no_subscribers += 1

    def published(self, receive_to_publish_ms: float, stamp_to_publish_ms: float) -> None:
        with self._lock:
            self._window.published += 1
            self.totals.published += 1
            self._window.receive_to_publish_ms.append(receive_to_publish_ms)
            self._window.stamp_to_publish_ms.append(stamp_to_publish_ms)

    def camera_info_received(self) -> None:
        with self._lock:
            self.camera_info_received_total += 1

    def camera_info_published(self, stamp_matched: bool) -> None:
        with self._lock:
            self.camera_info_published_total += 1
            if not stamp_matched:
                self.camera_info_stamp_mismatch_total += 1

    def camera_info_missing(self) -> None:
        with self._lock:
            self.frames_without_camera_info_total += 1

    def qos_event(self, endpoint: str, text: str) -> None:
        """An incompatible-QoS event on ``endpoint`` ("input" or the output's topic)."""
        with self._lock:
            self.qos_events_total += 1
            self._qos_incompatible[endpoint] = (text, time.monotonic())

    def qos_update(self, endpoint: str, text: str) -> None:
        """The incompatibility on ``endpoint`` is still there, as ``text`` says now."""
        with self._lock:
            if endpoint in self._qos_incompatible:
                self._qos_incompatible[endpoint] = (text, self._qos_incompatible[endpoint][1])

    def qos_resolved(self, endpoint: str) -> None:
        """No incompatible peer is left on ``endpoint``."""
        with self._lock:
            self._qos_incompatible.pop(endpoint, None)

    def qos_entries(self) -> dict[str, tuple[str, float]]:
        with self._lock:
            return dict(self._qos_incompatible)

    def qos_snapshot(self) -> dict[str, str]:
        with self._lock:
            return {endpoint: text for endpoint, (text, _) in self._qos_incompatible.items()}

    def take_window(self) -> StatsWindow:
        """The window since the previous call (its duration filled in); starts a new one."""
        now = time.monotonic()
        with self._lock:
            window, self._window = self._window, StatsWindow(seconds=0.0)
            window.seconds, self._window_start = now - self._window_start, now
        return window


# A message-lost event's total_count_change at or above this is not a count (count_message_lost).
MESSAGE_LOST_INVALID = 2**31 - 1


def count_message_lost(stats: CameraStats, event: Any, topic: str, logger: Any, throttle_s: float) -> None:
    """A DDS message-lost event of one input (best effort: a frame missing a fragment, or
    overwritten in the writer's shared-memory segment): counted, and warned about (throttled)."""
    count = int(getattr(event, "total_count_change", 0) or 0)
    if count >= MESSAGE_LOST_INVALID:
        # Fast DDS 3.2 reports, when a writer resumes after a pause during which some of its
        # samples were lost, one event of 2**31 - 1 (a negative difference of sequence numbers,
        # saturated) next to the real ones: not a count (docs/transport.md).
        logger.debug(f"ignoring a message-lost event of {count} on {topic}")
        return
    stats.message_lost(count)
    if count > 0:
        logger.warning(f"{count} message(s) lost in transport on {topic} "
                       f"({getattr(event, 'total_count', '?')} since it subscribed): see docs/transport.md",
                       throttle_duration_sec=throttle_s)


def _mean_max(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return sum(values) / len(values), max(values)


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.2f}"
    return KeyValue(key=key, value=str(value))


def _level_value(level: bytes | int) -> int:
    """A DiagnosticStatus level as an int (the message field is a one-byte ``bytes``)."""
    return level[0] if isinstance(level, bytes) else int(level)


def loss_ratio(window: StatsWindow) -> float:
    """Frames lost in the window over frames that should have arrived (received + lost); the DDS
    count and the stamp count see the same losses, so the larger of the two is taken."""
    lost = max(window.lost_dds, window.lost_stamp_gaps)
    return lost / (window.received + lost) if lost else 0.0


def camera_status(name: str, hardware_id: str, window: StatsWindow, stats: CameraStats,
                  active: bool, input_timeout_warn: float = 0.0, input_timeout_error: float = 0.0,
                  output_subscribers: int = -1, now: float | None = None, input_publishers: int = -1,
                  input_loss_warn: float = 1.0, message_lost_event: str = "unknown") -> DiagnosticStatus:
    """DiagnosticStatus of one camera for one window (see the module docstring for keys and levels).

    ``output_subscribers``: subscriptions matched on the camera's image outputs (-1 = unknown).
    ``now``: time.monotonic() of the snapshot (default: now). ``input_publishers``: publishers
    matched on the camera's input (-1 = unknown). ``input_loss_warn``: WARN above this loss ratio.
    ``message_lost_event``: ``yes``, or why the DDS message-lost count is not available.
    """
    now = time.monotonic() if now is None else now
    seconds = max(window.seconds, 1e-9)
    in_rate, out_rate = window.received / seconds, window.published / seconds
    r2p_mean, r2p_max = _mean_max(window.receive_to_publish_ms)
    s2p_mean, s2p_max = _mean_max(window.stamp_to_publish_ms)
    totals = stats.totals
    last = stats.last_received
    silent_s = now - (stats.started if last is None else last)
    qos = stats.qos_snapshot()

    problems: list[tuple[bytes, str]] = []  # (level, text), reported most severe first
    if not active:
        problems.append((DiagnosticStatus.WARN, "not active"))
    else:
        timeout = None
        if input_timeout_error > 0 and silent_s >= input_timeout_error:
            timeout = (DiagnosticStatus.ERROR, f"input_timeout_error {input_timeout_error:g} s")
        elif input_timeout_warn > 0 and silent_s >= input_timeout_warn:
            timeout = (DiagnosticStatus.WARN, f"input_timeout_warn {input_timeout_warn:g} s")
        if timeout is not None:
            level, limit = timeout
            # Silent although a publisher has been matched all that time: frames are sent and lost.
            since = stats.publisher_since
            matched_s = None if since is None or input_publishers <= 0 else now - max(since, now - silent_s)
            matched = matched_s is not None and matched_s >= min(t for t in (input_timeout_warn, input_timeout_error)
                                                                  if t > 0)
            if matched and last is None:
                text = (f"{input_publishers} publisher(s) matched but no frame arrived in {silent_s:.1f} s ({limit}): "
                        "large frames lost in transport? see docs/transport.md")
            elif matched:
                text = (f"no frame for {silent_s:.1f} s ({limit}) although {input_publishers} publisher(s) "
                        "matched: large frames lost in transport? see docs/transport.md")
            elif last is None:
                nobody = "; no publisher matched" if input_publishers == 0 else ""
                text = f"no frame received since activation for {silent_s:.1f} s ({limit}{nobody})"
            else:
                text = f"no frame for {silent_s:.1f} s ({limit})"
            problems.append((level, text))
    for text in qos.values():
        problems.append((DiagnosticStatus.WARN, f"incompatible QoS: {text}"))
    if window.dropped_bad_input:
        problems.append((DiagnosticStatus.WARN,
                         f"{window.dropped_bad_input} bad frame(s) dropped: {stats.last_bad_input}"))
    if window.dropped_too_large:
        problems.append((DiagnosticStatus.WARN,
                         f"{window.dropped_too_large} frame(s) dropped: {stats.last_too_large}"))
    ratio = loss_ratio(window)
    if ratio > input_loss_warn:
        lost = max(window.lost_dds, window.lost_stamp_gaps)
        problems.append((DiagnosticStatus.WARN,
                         f"{lost} of {window.received + lost} frame(s) lost in {window.seconds:.1f} s ({ratio:.0%} > "
                         f"input_loss_warn {input_loss_warn:.0%}; DDS message-lost {window.lost_dds}, header-stamp "
                         f"gaps {window.lost_stamp_gaps}): {LOSS_CAUSE}"))

    notes: list[str] = []
    if window.received and output_subscribers == 0:
        notes.append(f"{in_rate:.1f} Hz in, but no output has a subscriber: frames are not processed")
    if problems:
        problems.sort(key=lambda p: -_level_value(p[0]))
        level = problems[0][0]
        message = "; ".join([text for _, text in problems] + notes)
    elif notes:
        level, message = DiagnosticStatus.OK, "; ".join(notes)
    elif window.received == 0 and window.published == 0:
        level, message = DiagnosticStatus.OK, "no frames received"
    else:
        level, message = DiagnosticStatus.OK, f"{in_rate:.1f} Hz in, {out_rate:.1f} Hz out"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id)
    status.values = [
        _kv("input_rate_hz", in_rate),
        _kv("output_rate_hz", out_rate),
        _kv("latency_receive_to_publish_ms_mean", r2p_mean),
        _kv("latency_receive_to_publish_ms_max", r2p_max),
        _kv("latency_stamp_to_publish_ms_mean", s2p_mean),
        _kv("latency_stamp_to_publish_ms_max", s2p_max),
        _kv("dropped_stale", window.dropped_stale),
        _kv("dropped_bad_input", window.dropped_bad_input),
        _kv("dropped_too_large", window.dropped_too_large),
        _kv("skipped_no_subscribers", window.skipped_no_subscribers),
        _kv("dropped_stale_total", totals.dropped_stale),
        _kv("dropped_bad_input_total", totals.dropped_bad_input),
        _kv("dropped_too_large_total", totals.dropped_too_large),
        _kv("skipped_no_subscribers_total", totals.skipped_no_subscribers),
        _kv("frames_received_total", totals.received),
        _kv("frames_published_total", totals.published),
        _kv("last_bad_input", stats.last_bad_input),
        _kv("last_too_large", stats.last_too_large),
        _kv("seconds_since_last_frame", float(silent_s)),
        _kv("output_subscribers", output_subscribers),
        _kv("input_publishers", input_publishers),
        _kv("lost_dds", window.lost_dds),
        _kv("lost_stamp_gaps", window.lost_stamp_gaps),
        _kv("lost_dds_total", totals.lost_dds),
        _kv("lost_stamp_gaps_total", totals.lost_stamp_gaps),
        _kv("loss_ratio", float(ratio)),
        _kv("stamp_period_ms", stats.stamp_period_ms()),
        _kv("message_lost_event", message_lost_event),
        _kv("qos_incompatible", "; ".join(qos.values())),
        _kv("qos_incompatible_events_total", stats.qos_events_total),
        _kv("camera_info_received_total", stats.camera_info_received_total),
        _kv("camera_info_published_total", stats.camera_info_published_total),
        _kv("camera_info_stamp_mismatch_total", stats.camera_info_stamp_mismatch_total),
        _kv("frames_without_camera_info_total", stats.frames_without_camera_info_total),
    ]
    return status


def node_status(name: str, hardware_id: str, state: str, error: str,
                details: dict[str, object], warnings: list[str] | tuple[str, ...] = ()) -> DiagnosticStatus:
    """The node's own status: lifecycle state, device, precision, model; ERROR after a failed
    configure; WARN while not active or with ``warnings`` (e.g. another node of the same name)."""
    if error:
        level, message = DiagnosticStatus.ERROR, "; ".join([error, *warnings])
    elif state == "active" and not warnings:
        level, message = DiagnosticStatus.OK, "active"
    else:
        level, message = DiagnosticStatus.WARN, "; ".join([state, *warnings])
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id)
    status.values = [_kv("state", state)] + [_kv(k, v) for k, v in details.items()]
    return status


def process_memory_mb() -> dict[str, float]:
    """This process's resident memory now (``rss_mb``) and its peak so far (``peak_rss_mb``),
    from /proc/self/status (VmRSS, VmHWM); empty where that file does not exist (not Linux)."""
    keys = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                parts = line.split()
                if parts and parts[0] in keys and len(parts) >= 2:
                    out[keys[parts[0]]] = int(parts[1]) / 1024.0  # kB -> MiB
    except OSError:
        return {}
    return out


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg
