"""Latest-frame mailboxes and the inference thread that empties them.

Real time means bounded latency: when cameras deliver faster than the network runs, waiting
frames would only grow older, so each camera has a one-slot mailbox and a newer frame replaces
the one waiting (the replaced frame is counted as a stale drop). Subscription callbacks only
``put`` (no conversion, no copy), so they never wait for inference; the worker thread takes every
waiting frame at once, which lets several cameras share one batched forward pass.

Activations: the node keeps ONE mailbox and ONE worker thread for its whole life. Each lifecycle
activation ``reset``s the mailbox with its cameras and a new generation number; every frame
carries the generation it was received in, so a batch that was still in the network when the
node was deactivated (a forward pass cannot be interrupted) is recognised and discarded instead
of being published by the next activation. One thread means never two forward passes at once,
and nobody ever has to wait for the batch in flight.

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
    generation: int = 0      # the mailbox generation (= node activation) it was received in


class LatestFrameMailbox:
    """One slot per camera holding its newest unprocessed frame; a condition wakes the worker."""

    def __init__(self, cameras: Sequence[str] = (), generation: int = 0) -> None:
        self._cond = threading.Condition()
        self._slots: dict[str, Frame | None] = {camera: None for camera in cameras}
        self._generation = generation
        self._closed = False

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def put(self, camera: str, msg: Any) -> Frame | None:
        """Store ``msg`` as ``camera``'s newest frame; returns the frame it replaced (stale), if any.

        Raises KeyError for a camera the mailbox does not serve (a callback of a subscription
        that is being destroyed may still arrive after a ``reset``); nothing is stored then.
        """
        received_ns = time.monotonic_ns()
        with self._cond:
            if camera not in self._slots:
                raise KeyError(camera)
            replaced = self._slots[camera]
            self._slots[camera] = Frame(camera, msg, received_ns, self._generation)
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

    def reset(self, cameras: Sequence[str], generation: int) -> list[Frame]:
        """Serve ``cameras`` from now on, tagging new frames with ``generation``; returns the
        frames that were waiting (they will not be processed)."""
        with self._cond:
            waiting = [frame for frame in self._slots.values() if frame is not None]
            self._slots = {camera: None for camera in cameras}
            self._generation = generation
        return waiting

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
    ``busy_for()`` says how long the batch in flight has been running (None when idle): the node
    reports it on /diagnostics and uses it to decide whether it can exit normally.
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
        self._busy_since: float | None = None  # time.monotonic() when the batch in flight started
        # A daemon: a forward pass cannot be interrupted, and the process must be able to end
        # without it (see sfnet_ros/node/main.py for how the process then leaves).
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def alive(self) -> bool:
        return self._thread.is_alive()

    def busy_for(self) -> float | None:
        """Seconds the batch in flight has been running, or None when the worker waits for frames."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def _run(self) -> None:
        while True:
            frames = self._mailbox.take_all()
            if frames is None:
                return
            if not frames:
                continue
            self._busy_since = time.monotonic()
            try:
                self._process(frames)
            except Exception as exc:  # reported, and the loop must survive
                self._on_error(exc)
            finally:
                self._busy_since = None

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; True if it has (or never started)."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Close the mailbox and join; False if the thread is still busy after ``timeout`` s.

        A forward pass cannot be interrupted, so the caller chooses how long to wait for the
        batch in flight (the thread is a daemon: it never keeps the process alive).
        """
        self._mailbox.close()
        return self.join(timeout)
