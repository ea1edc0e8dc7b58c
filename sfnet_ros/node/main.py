"""The ``sfnet_node`` process: start the node, keep the main thread free for signals, and leave.

Threads: the main thread only waits for a stop request (SIGINT, SIGTERM, a lifecycle shutdown
with ``exit_on_shutdown``) and then leaves through ``_leave``; the executor runs in a thread of its
own, autostart in another, inference in the node's worker thread. Leaving never waits on a
forward pass that cannot be interrupted (see ``_hard_exit`` for why that matters): exit code 0
within about 2 s of the request, whatever the inference thread is doing.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from functools import partial
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from sfnet_ros.node.segmentation_node import SegmentationNode
from sfnet_ros.node.segmentation_node import __doc__ as NODE_DOC
from sfnet_ros.transport_profile import apply_profile

__all__ = ["main", "StopRequest"]

# The main thread checks for a stop request this often, and the executor thread comes back from
# its wait this often to see whether it must stop.
SPIN_STEP_S = 0.1
# On the way out: how long to wait for the executor callback in progress (callbacks are short;
# only a configure requested over change_state can take seconds) ...
EXIT_CALLBACK_GRACE_S = 1.0
# ... and for the batch in flight. Its results could not be published anyway (the publishers are
# gone by then); the wait only lets a batch that is about to end end, so the interpreter can exit
# the ordinary way. A forward pass on a large frame on a CPU takes seconds and is not waited for.
EXIT_WORKER_GRACE_S = 0.5
STOP_SIGNAL_MESSAGE = "stop requested (SIGINT/SIGTERM): shutting down"
STOP_SHUTDOWN_MESSAGE = "lifecycle shutdown: exiting (exit_on_shutdown)"


def _install_core_logging() -> None:
    # sfnet_core reports (device choice, precision fallbacks) through `logging`; show them next to
    # the ROS log lines instead of losing them.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[sfnet_core] [%(levelname)s] %(message)s"))
    core = logging.getLogger("sfnet_core")
    core.addHandler(handler)
    core.setLevel(logging.INFO)
    core.propagate = False


class StopRequest:
    """Why the process should end (None while it should not). Set from signal handlers and
    threads: a plain attribute, no lock, because a signal handler that waits for a lock the
    interrupted main thread holds would deadlock."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None


def autostart(node: SegmentationNode, stop: StopRequest) -> None:
    """configure + activate, stopping quietly (already logged) at the first failure or when
    ``stop`` was set meanwhile (a shutdown requested during the model load). main() runs this in
    a thread of its own, so the node's services answer meanwhile."""
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().info("autostart: staying unconfigured; fix the cause, then trigger configure "
                                   "(lifecycle manager or <node>/change_state)")
            return
        if not stop.is_set():
            node.trigger_activate()
    except Exception as exc:  # a thread must not die with a traceback
        if stop.is_set():
            return  # the process is leaving under us
        node.get_logger().error(f"autostart failed: {type(exc).__name__}: {exc}")


def _stop_on_signals(stop: StopRequest | None = None) -> StopRequest:
    """Ctrl-C / SIGTERM set the returned request instead of tearing the context down mid-work.

    rclpy's own handlers shut the context down at once: a signal during the (seconds long)
    checkpoint load then makes every later call fail noisily. Here the signal only asks the
    main thread, which does nothing but wait for such a request, to leave (see ``_leave``).
    """
    stop = StopRequest() if stop is None else stop

    def request_stop(signum: int, frame: Any) -> None:
        stop.request(STOP_SIGNAL_MESSAGE)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _spin(executor: SingleThreadedExecutor, spin_stop: threading.Event, failure: list[BaseException]) -> None:
    """The executor thread: callbacks until ``spin_stop`` is set or the context shuts down."""
    try:
        while not spin_stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_STEP_S)
    except ExternalShutdownException:
        pass
    except Exception as exc:  # reported by main, which then leaves with code 1
        if not spin_stop.is_set():
            failure.append(exc)
            traceback.print_exc()


def _hard_exit(code: int) -> None:
    """End the process now, skipping interpreter finalisation (only while a thread is busy).

    Why: a thread (the inference worker, or a transition loading the model) is inside a PyTorch
    op, which cannot be interrupted. If the interpreter finalised now, that thread would try to
    take the GIL back when the op returns, and CPython (before 3.14) ends such a daemon thread
    with pthread_exit(); its forced unwinding runs through C++ frames of libtorch_python that
    must not throw (pybind11::gil_scoped_release's destructor), so std::terminate() aborts the
    process: "terminate called without an active exception", exit code -6 (SIGABRT), seen in 7
    of 8 tries of issue 9 (core dump: THPVariable_matmul -> ~gil_scoped_release ->
    PyEval_RestoreThread -> take_gil -> PyThread_exit_thread -> pthread_exit -> std::terminate).
    os._exit runs no atexit handlers and flushes no buffers, so everything printed is flushed
    first; the ROS entities have been destroyed by the caller where that was safe.
    """
    for handler in logging.getLogger("sfnet_core").handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (rcutils console output)
    os._exit(code)


def _release_participant(node: SegmentationNode) -> None:
    """Destroy the node's ROS entities and its DDS participant before an ``os._exit``.

    Without this, Fast DDS's shared-memory segments of the process (``/dev/shm/fastdds_*``, 70 MB
    each with the large-frames profile) outlive it: nothing else removes them until a
    ``fastdds shm clean``. The participant goes with the last rcl node of the context, and the
    lifecycle state machine holds a reference to the node, so it is released too. Entities a
    still-running thread uses are released when it lets go of them (never, if it is the one
    that keeps the process from exiting normally: only those leak).
    """
    with contextlib.suppress(Exception):
        node.destroy_node()
    state_machine = getattr(node, "_state_machine", None)  # rclpy LifecycleNode internals
    if state_machine is not None:
        with contextlib.suppress(Exception):
            state_machine.destroy_when_not_in_use()
    with contextlib.suppress(Exception):
        rclpy.try_shutdown()


def _leave(node: SegmentationNode, spin_stop: threading.Event, spin_thread: threading.Thread,
           autostart_thread: threading.Thread | None, reason: str, code: int) -> int:
    """Release the ROS entities and end, without waiting on work that cannot be interrupted."""
    logger = node.get_logger()
    logger.info(reason)
    spin_stop.set()
    spin_thread.join(EXIT_CALLBACK_GRACE_S)
    if spin_thread.is_alive() or (autostart_thread is not None and autostart_thread.is_alive()):
        # A lifecycle transition (in practice: configure, loading and warming up the model) is
        # still running. Destroying the node under it would make it fail noisily, and it holds
        # no subscription or output publisher yet (those are made by activate).
        logger.warning("a lifecycle transition (configure) is still running: leaving without waiting for it")
        node.prepare_exit()
        _release_participant(node)
        _hard_exit(code)
    node.release()
    if not node.stop_worker(EXIT_WORKER_GRACE_S):
        busy = node.worker_busy_for()
        since = "" if busy is None else f" (batch started {busy:.1f} s ago)"
        logger.warning(f"inference still running{since}: leaving without waiting for it, results discarded")
    node.prepare_exit()
    if node.worker_alive():
        _release_participant(node)
        _hard_exit(code)
    node.destroy_node()
    rclpy.try_shutdown()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM (or a lifecycle shutdown with ``exit_on_shutdown``);
    returns the exit code (0 on a normal stop). Leaves within about 2 s of the request, whatever
    the inference thread is doing."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) and "--ros-args" not in args:
        print(NODE_DOC)
        print("usage: sfnet_node [--ros-args --params-file config/sfnet.yaml -p checkpoint:=model.pt "
              "-r image:=/camera/image_raw -r __ns:=/perception]")
        return 0
    _install_core_logging()
    stop = _stop_on_signals()  # from here on a signal never kills the process mid-way
    # Before rclpy.init: Fast DDS reads its profile when the process's first participant is made.
    # Started without the launch file, the node must not be blind to camera-sized frames.
    profile = apply_profile()
    try:
        try:
            from rclpy.signals import SignalHandlerOptions

            rclpy.init(args=["sfnet_node", *args], signal_handler_options=SignalHandlerOptions.NO)
        except ImportError:  # an rclpy without SignalHandlerOptions installs its own: replace them
            rclpy.init(args=["sfnet_node", *args])
            _stop_on_signals(stop)
    except RuntimeError as exc:  # rclpy's RCLError: a malformed --ros-args (remap, parameter, ...)
        reason = str(exc).split(", at ")[0].strip()
        print(f"sfnet_node: invalid ROS arguments: {reason}", file=sys.stderr)
        return 2
    try:
        node = SegmentationNode()
    except BaseException:
        rclpy.try_shutdown()
        raise
    node.transport_profile = profile.summary
    (node.get_logger().warning if profile.warning else node.get_logger().info)(profile.message)
    node.on_exit_request = partial(stop.request, STOP_SHUTDOWN_MESSAGE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin_stop, failure = threading.Event(), list[BaseException]()
    spin_thread = threading.Thread(target=_spin, args=(executor, spin_stop, failure), name="sfnet_executor",
                                   daemon=True)
    spin_thread.start()
    autostart_thread = None
    if node.autostart:
        autostart_thread = threading.Thread(target=autostart, args=(node, stop), name="sfnet_autostart",
                                            daemon=True)
        autostart_thread.start()
    # The main thread only waits: Python runs signal handlers in the main thread, so it must
    # never be inside a long native call (a forward pass, a model load) when a signal comes.
    while not stop.is_set() and spin_thread.is_alive():
        time.sleep(SPIN_STEP_S)
    if stop.reason is not None:
        return _leave(node, spin_stop, spin_thread, autostart_thread, stop.reason, 0)
    return _leave(node, spin_stop, spin_thread, autostart_thread,
                  f"executor stopped ({'; '.join(map(str, failure)) or 'context shut down'}): shutting down",
                  1 if failure else 0)


if __name__ == "__main__":
    sys.exit(main())
