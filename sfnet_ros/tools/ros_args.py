"""What the tools that start rclpy share: the ROS arguments of a command line, and ``rclpy.init``.

``init_rclpy`` also applies the large-frame Fast DDS profile before ``rclpy.init``
(``sfnet_ros.transport_profile``, the rule the node applies too): a tool that plays, records or
evaluates camera frames is not blind to them when started without the profile exported
(``SFNET_FASTDDS_PROFILE=off`` switches it off; docs/transport.md).

``rclpy.init()`` without ``args`` reads ``sys.argv``, where a tool's own ``NAME:=VALUE``
arguments (``sfnet-bag-record --type /front/image_raw:=sensor_msgs/msg/Image``) would be taken
as remaps. So each tool splits its command line: the ``--ros-args ... [--]`` sections go to rclpy,
the rest to argparse.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sfnet_core.errors import SFNetError
from sfnet_ros.transport_profile import apply_profile

__all__ = ["split_ros_args", "init_rclpy"]


def split_ros_args(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(own arguments, ROS arguments)`` of ``argv`` (default ``sys.argv[1:]``).

    The ROS arguments are every ``--ros-args`` section (up to a ``--`` or the end, as rcl reads
    them), each starting with its ``--ros-args``; empty when there is none.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    own: list[str] = []
    ros: list[str] = []
    inside = False
    for arg in args:
        if arg == "--ros-args":
            inside = True
            ros.append(arg)
        elif inside and arg == "--":
            inside = False
        elif inside:
            ros.append(arg)
        else:
            own.append(arg)
    return own, ros


@contextlib.contextmanager
def _stderr_held() -> Iterator[list[bytes]]:
    """Hold what C code writes to file descriptor 2 (rcl logs its own "Failed to parse global
    arguments" line before raising); the caller decides whether to let it through."""
    sys.stderr.flush()
    saved = os.dup(2)
    held: list[bytes] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.append(sink.read())


def init_rclpy(prog: str, ros_args: Sequence[str], context: Any = None) -> None:
    """``rclpy.init`` with only ``ros_args`` and without rclpy's signal handlers (each tool
    handles SIGINT/SIGTERM itself so that its outputs are finalised or removed). Malformed ROS
    arguments are one SFNetError naming them (rcl's own log line about them is dropped).

    First the large-frame Fast DDS profile is applied to this process
    (``sfnet_ros.transport_profile.apply_profile``); the decision is logged once rclpy runs: at
    debug level when this package's profile is applied or the RMW is not Fast DDS (the expected
    cases, so a tool's stderr stays its own), as info when the user's own profile is kept or the
    profile is switched off, as a warning when the profile file is missing."""
    import rclpy
    from rclpy.logging import get_logger
    from rclpy.signals import SignalHandlerOptions

    profile = apply_profile()
    failure = None
    with _stderr_held() as held:
        try:
            rclpy.init(args=[prog, *ros_args], context=context, signal_handler_options=SignalHandlerOptions.NO)
        except Exception as exc:  # rcl's parser: RCLError / ValueError on a malformed --ros-args section
            failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if failure is not None:
        reason = failure.split(". Error:")[0].replace("failed to initialize rcl: ", "")
        raise SFNetError(f"invalid ROS arguments {' '.join(ros_args)!r}: {reason}")
    if held and held[0]:
        sys.stderr.write(held[0].decode(errors="replace"))
    logger = get_logger(prog)
    if profile.warning:
        logger.warning(profile.message)
    elif profile.action in ("package", "other-rmw"):
        logger.debug(profile.message)
    else:
        logger.info(profile.message)


def leave_rclpy(node: Any, previous_handlers: Mapping[signal.Signals, Any]) -> None:
    """The end of a tool that ran rclpy (after its executor stopped): destroy ``node`` (if it was
    created), shut the default context down and put back the signal handlers the tool replaced."""
    import rclpy

    if node is not None:
        node.destroy_node()
    if rclpy.ok():
        rclpy.shutdown()
    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)
