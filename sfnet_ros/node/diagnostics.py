"""Per-camera counters and the /diagnostics message built from them.

The callback thread counts arrivals and stale drops, the worker thread counts bad input and
publications and records latencies; the diagnostics timer takes a snapshot once per period and
starts a new window. One lock per camera keeps the three threads apart (the work under it is a
few additions, so nobody waits noticeably).

Keys in each camera's DiagnosticStatus (values are strings, as KeyValue requires):
``input_rate_hz``, ``output_rate_hz``, ``latency_receive_to_publish_ms_mean|max``,
``latency_stamp_to_publish_ms_mean|max`` (window; ``nan`` without publications),
``dropped_stale``, ``dropped_bad_input``, ``skipped_no_subscribers`` (window) and their
``*_total`` twins since activation, ``frames_received_total``, ``frames_published_total``,
``last_bad_input`` (why the last bad frame was dropped).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["CameraStats", "StatsWindow", "camera_status", "node_status", "diagnostic_array"]


@dataclass
class StatsWindow:
    """What happened to one camera during one diagnostics window."""

    seconds: float
    received: int = 0
    published: int = 0
    dropped_stale: int = 0
    dropped_bad_input: int = 0
    skipped_no_subscribers: int = 0
    receive_to_publish_ms: list[float] = field(default_factory=list)
    stamp_to_publish_ms: list[float] = field(default_factory=list)


class CameraStats:
    """Thread-safe counters of one camera: a current window plus totals since creation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._window = StatsWindow(seconds=0.0)
        self.totals = StatsWindow(seconds=0.0)  # latency lists unused in totals
        self.last_bad_input = ""

    def received(self, replaced_stale: bool) -> None:
        with self._lock:
            self._window.received += 1
            self.totals.received += 1
            if replaced_stale:
                self._window.dropped_stale += 1
                self.totals.dropped_stale += 1

    def dropped_stale(self, count: int = 1) -> None:
        with self._lock:
            self._window.dropped_stale += count
            self.totals.dropped_stale += count

    def bad_input(self, reason: str) -> None:
        with self._lock:
            self._window.dropped_bad_input += 1
            self.totals.dropped_bad_input += 1
            self.last_bad_input = reason

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

    def take_window(self) -> StatsWindow:
        """The window since the previous call (its duration filled in); starts a new one."""
        now = time.monotonic()
        with self._lock:
            window, self._window = self._window, StatsWindow(seconds=0.0)
            window.seconds, self._window_start = now - self._window_start, now
        return window


def _mean_max(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return sum(values) / len(values), max(values)


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.2f}"
    return KeyValue(key=key, value=str(value))


def camera_status(name: str, hardware_id: str, window: StatsWindow, stats: CameraStats,
                  active: bool) -> DiagnosticStatus:
    """DiagnosticStatus of one camera for one window (see the module docstring for the keys)."""
    seconds = max(window.seconds, 1e-9)
    in_rate, out_rate = window.received / seconds, window.published / seconds
    r2p_mean, r2p_max = _mean_max(window.receive_to_publish_ms)
    s2p_mean, s2p_max = _mean_max(window.stamp_to_publish_ms)
    totals = stats.totals
    if not active:
        level, message = DiagnosticStatus.WARN, "not active"
    elif window.dropped_bad_input:
        level, message = DiagnosticStatus.WARN, f"{window.dropped_bad_input} bad frame(s) dropped: {stats.last_bad_input}"
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
        _kv("skipped_no_subscribers", window.skipped_no_subscribers),
        _kv("dropped_stale_total", totals.dropped_stale),
        _kv("dropped_bad_input_total", totals.dropped_bad_input),
        _kv("skipped_no_subscribers_total", totals.skipped_no_subscribers),
        _kv("frames_received_total", totals.received),
        _kv("frames_published_total", totals.published),
        _kv("last_bad_input", stats.last_bad_input),
    ]
    return status


def node_status(name: str, hardware_id: str, state: str, error: str,
                details: dict[str, object]) -> DiagnosticStatus:
    """The node's own status: lifecycle state, device, precision, model; ERROR after a failed configure."""
    if error:
        level, message = DiagnosticStatus.ERROR, error
    elif state == "active":
        level, message = DiagnosticStatus.OK, "active"
    else:
        level, message = DiagnosticStatus.WARN, state
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id)
    status.values = [_kv("state", state)] + [_kv(k, v) for k, v in details.items()]
    return status


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg
