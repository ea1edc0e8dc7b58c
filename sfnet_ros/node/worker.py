"""Latest-frame mailboxes and the inference thread that empties them.

Real time means bounded latency: when cameras deliver faster than the network runs, waiting
frames would only grow older, so each camera has a one-slot mailbox and a newer frame replaces
the one waiting (the replaced frame is counted as a stale drop). Subscription callbacks only
``put`` (no conversion, no copy), so they never wait for inference; the worker thread takes every
waiting frame at once, which lets several cameras share one batched forward pass.

Nothing here imports rclpy: frames are opaque messages plus receive times.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Frame", "InferenceWorker", "LatestFrameMailbox"]


@dataclass
class Frame:
    """One received message waiting for inference."""

    camera: str
    msg: Any                 # sensor_msgs Image or CompressedImage, untouched
    received_ns: int         # time.monotonic_ns() when the callback ran


class LatestFrameMailbox:
    """One slot per camera holding its newest unprocessed frame; a condition wakes the worker."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self._cond = threading.Condition()
        self._slots: dict[str, Frame | None] = {camera: None for camera in cameras}
        self._closed = False

    def put(self, camera: str, msg: Any) -> Frame | None:
        """Store ``msg`` as ``camera``'s newest frame; returns the frame it replaced (stale), if any."""
        frame = Frame(camera, msg, time.monotonic_ns())
        with self._cond:
            replaced = self._slots[camera]
            self._slots[camera] = frame
            self._cond.notify()
        return replaced

    def take_all(self, timeout: float | None = None) -> list[Frame] | None:
        """Wait for at least one frame and empty every slot.

        Returns the frames (camera order), ``[]`` when ``timeout`` passed with none, or None once
        the mailbox is closed (the worker's signal to exit).
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or any(self._slots.values()), timeout)
            if self._closed:
                return None
            frames = [frame for frame in self._slots.values() if frame is not None]
            for camera in self._slots:
                self._slots[camera] = None
            return frames

    def close(self) -> list[Frame]:
        """Wake the worker for good; returns the frames still waiting (they will not be processed)."""
        with self._cond:
            self._closed = True
            waiting = [frame for frame in self._slots.values() if frame is not None]
            self._slots = {camera: None for camera in self._slots}
            self._cond.notify_all()
        return waiting


class InferenceWorker:
    """A thread that runs ``process(frames)`` for every batch taken from a mailbox.

    ``process`` must not raise; if it does anyway, ``on_error`` gets the exception and the loop
    goes on with the next batch (a camera glitch must not silently stop all segmentation).
    """

    def __init__(
        self,
        mailbox: LatestFrameMailbox,
        process: Callable[[list[Frame]], None],
        on_error: Callable[[BaseException], None],
        name: str = "sfnet_inference",
    ) -> None:
        self._mailbox = mailbox
        self._process = process
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            frames = self._mailbox.take_all()
            if frames is None:
                return
            if not frames:
                continue
            try:
                self._process(frames)
            except Exception as exc:  # noqa: BLE001 - reported, and the loop must survive
                self._on_error(exc)

    def stop(self, timeout: float) -> bool:
        """Close the mailbox and join; False if the thread is still busy after ``timeout`` s.

        A forward pass cannot be interrupted, so the caller chooses how long to wait for the
        batch in flight (the thread is a daemon: it never keeps the process alive).
        """
        self._mailbox.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
