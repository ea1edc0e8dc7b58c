"""``sfnet-status``: look at and operate a running ``sfnet_node`` without the ``ros2`` command.

What ``ros2 topic echo /diagnostics``, ``ros2 lifecycle set`` and ``ros2 param get/set`` do for
this package's node, through the node's own services and its ``/diagnostics`` statuses:

    sfnet-status                              # live: state + one line per camera, refreshed
    sfnet-status --once                       # one snapshot, then exit (scripts, CI logs)
    sfnet-status configure|activate|deactivate|cleanup|shutdown
    sfnet-status get checkpoint input_timeout_warn
    sfnet-status set input_timeout_warn:=5.0 publish_confidence:=true

``--node`` names the node (default ``/sfnet_node``; with a namespace, e.g. ``/veh/sfnet_node``).
ROS arguments go after ``--ros-args`` as for every tool. Exit status: 0 when the request was
carried out, 2 with one line when it was not (node not found, transition not available from the
current state, parameter refused, ...).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from sfnet_core.cli.common import Terminated, make_parser, positive_float, run_command
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.ros_args import init_rclpy, leave_rclpy, split_ros_args

if TYPE_CHECKING:  # rclpy is imported when the tool talks to the node, after its option checks
    from rclpy.client import Client

__all__ = ["NodeClient", "render_status", "parse_assignment", "build_parser", "main"]

PROG = "sfnet-status"
TRANSITIONS = ("configure", "activate", "deactivate", "cleanup", "shutdown")
PRIMARY_STATES = ("unconfigured", "inactive", "active", "finalized")
# where each transition ends when it succeeds (a TransitionDescription's goal_state is the
# intermediate state, e.g. "configuring")
SUCCESS_STATE = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
                 "cleanup": "unconfigured", "shutdown": "finalized"}
WAIT = object()  # NodeClient._call: keep waiting for the answer
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
# The keys shown on a camera's line (every key is in `--once --all`): what says at a glance
# whether the camera is seen, processed and delivered.
CAMERA_KEYS = ("input_rate_hz", "output_rate_hz", "latency_receive_to_publish_ms_mean",
               "frames_received_total", "frames_published_total", "frames_lost_total",
               "seconds_since_last_frame", "output_subscribers")


class StatusError(SFNetError):
    """The node did not answer, or refused the request."""


def _level(status: Any) -> int:
    level = status.level
    return level[0] if isinstance(level, bytes) else int(level)


def render_status(node: str, state: str | None, statuses: Sequence[Any], every_key: bool = False) -> str:
    """The screen for ``node``: its lifecycle state, then one block per status of ``/diagnostics``
    that belongs to it (the node's own first, then each camera's), level and message first."""
    lines = [f"{node}: {state or 'state unknown (get_state did not answer)'}"]
    for status in statuses:
        values = {kv.key: kv.value for kv in status.values}
        label = status.name[len(node):].lstrip(": ") or "node"
        lines.append(f"  [{LEVELS.get(_level(status), _level(status))}] {label}: {status.message}")
        keys = values if every_key or label == "node" else [k for k in CAMERA_KEYS if k in values]
        shown = [f"{k}={values[k]}" for k in keys if values.get(k, "") != ""]
        for start in range(0, len(shown), 4):
            lines.append("      " + "  ".join(shown[start:start + 4]))
    return "\n".join(lines)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``NAME:=VALUE`` (VALUE read as YAML, as ``-p`` does: 5, 5.0, true, [a, b], text)."""
    name, sep, raw = text.partition(":=")
    if not sep or not name:
        raise StatusError(f"set {text!r}: expected NAME:=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return name, value


class NodeClient:
    """An rclpy node of this process, spun by a thread, talking to one ``sfnet_node``."""

    def __init__(self, target: str, timeout: float) -> None:
        import os

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.target = "/" + target.strip("/")
        self.timeout = timeout
        self.node = rclpy.create_node(f"_sfnet_status_{os.getpid()}")  # leading _: hidden
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends with the context
            self.executor.spin()

    def close(self) -> None:
        # The spin thread must be gone before the interpreter ends: a thread still inside rcl
        # then aborts the process ("terminate called without an active exception").
        self.executor.shutdown(timeout_sec=2)
        self._thread.join(5)

    def _call(self, srv_type: Any, service: str, request: Any,
              unanswered: Callable[[], Any] | None = None) -> Any:
        """The response of ``<node>/<service>``. A request sent right after discovery can be lost
        while the reply path is still being matched (a DDS race, common on a loaded machine): after
        0.25 s without an answer it is sent again (then after 0.5, 1, 2, 3 s), or, when ``unanswered``
        is given (a request that must not run twice), ``unanswered()`` decides: a result to return,
        WAIT to keep waiting for the answer, or None to send the request again."""
        name = f"{self.target}/{service}"
        client: Client[Any, Any] = self.node.create_client(srv_type, name)
        try:
            deadline = time.monotonic() + self.timeout
            while not client.service_is_ready():
                if time.monotonic() > deadline:
                    raise StatusError(f"{self.target}: no node answers {name} within {self.timeout:g} s "
                                      "(wrong --node or ROS_DOMAIN_ID? is sfnet_node running?)")
                time.sleep(0.05)
            future = client.call_async(request)
            wait = 0.25  # soon, then less and less often
            while True:
                resend = time.monotonic() + wait
                wait = min(wait * 2, 3.0)
                while not future.done() and time.monotonic() < min(deadline, resend):
                    time.sleep(0.02)
                if future.done():
                    return future.result()
                if time.monotonic() >= deadline:
                    raise StatusError(f"{self.target}: {service} did not answer within {self.timeout:g} s")
                verdict = unanswered() if unanswered is not None else None
                if verdict is None:
                    client.remove_pending_request(future)
                    future = client.call_async(request)
                elif verdict is not WAIT:
                    return verdict
        finally:
            self.node.destroy_client(client)

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(GetState, "get_state", GetState.Request()).current_state.label

    def transition(self, label: str) -> str:
        """Carry out ``label`` (configure, activate, ...) from the current state; the new state."""
        from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions

        available = self._call(GetAvailableTransitions, "get_available_transitions",
                               GetAvailableTransitions.Request()).available_transitions
        match = [t for t in available if t.transition.label == label]
        if not match:
            offered = ", ".join(sorted({t.transition.label for t in available})) or "none"
            raise StatusError(f"{self.target}: cannot {label} from state {self.state()!r} (possible: {offered})")
        start, goal = match[0].start_state.label, SUCCESS_STATE[label]

        def unanswered() -> Any:
            # Sent again only while the node is still where it was; under way (configuring, ...)
            # the answer is awaited; at rest elsewhere the outcome is known.
            state = self.state()
            if state == start:
                return None
            if state not in PRIMARY_STATES:
                return WAIT
            return ChangeState.Response(success=state == goal)

        request = ChangeState.Request(transition=match[0].transition)
        # A request sent again after a lost answer may find the transition done by the first one
        # (and fail as not possible from there): the state the node ends in is what counts.
        if not self._call(ChangeState, "change_state", request, unanswered).success and self.state() != goal:
            raise StatusError(f"{self.target}: {label} failed; the node's reason is in its log and on "
                              f"/diagnostics (sfnet-status --once); state now {self.state()!r}")
        return self.state()

    def get(self, names: Sequence[str]) -> dict[str, Any]:
        from rcl_interfaces.msg import ParameterType
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        values = self._call(GetParameters, "get_parameters", GetParameters.Request(names=list(names))).values
        missing = [n for n, v in zip(names, values) if v.type == ParameterType.PARAMETER_NOT_SET]
        if len(values) != len(names):  # rclpy answers an empty list when any name is undeclared
            from rcl_interfaces.srv import ListParameters

            declared = set(self._call(ListParameters, "list_parameters", ListParameters.Request()).result.names)
            missing = [n for n in names if n not in declared]
        if missing:
            raise StatusError(f"{self.target}: no parameter {', '.join(missing)}")
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def set(self, assignments: Sequence[tuple[str, Any]]) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        current = self.get([name for name, _ in assignments])
        params = []
        for name, value in assignments:
            # `-p x:=5` for a double parameter: what the user means is 5.0 (the node's types are strict)
            if isinstance(current[name], float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            params.append(Parameter(name, value=value).to_parameter_msg())
        results = self._call(SetParameters, "set_parameters", SetParameters.Request(parameters=params)).results
        refused = [f"{name}: {r.reason or 'refused'}" for (name, _), r in zip(assignments, results) if not r.successful]
        if refused:
            raise StatusError(f"{self.target}: not set: {'; '.join(refused)}")

    def watch_diagnostics(self, on_array: Callable[[list[Any]], None]) -> Any:
        """Subscribe to /diagnostics; ``on_array`` gets the statuses of the target node."""
        from diagnostic_msgs.msg import DiagnosticArray

        def callback(msg: Any) -> None:
            mine = [s for s in msg.status if s.name == self.target or s.name.startswith(self.target + ":")]
            if mine:
                on_array(mine)

        return self.node.create_subscription(DiagnosticArray, "/diagnostics", callback, 10)


def _show(client: NodeClient, args: argparse.Namespace) -> int:
    latest: dict[str, list[Any]] = {}
    changed = threading.Event()

    def on_array(statuses: list[Any]) -> None:
        latest["statuses"] = statuses
        changed.set()

    client.watch_diagnostics(on_array)
    deadline = time.monotonic() + args.timeout
    while not changed.wait(0.1):
        if time.monotonic() > deadline:
            raise StatusError(f"{client.target}: no /diagnostics from this node within {args.timeout:g} s "
                              "(wrong --node or ROS_DOMAIN_ID? is sfnet_node running?)")
    live = not args.once
    try:
        _redraw(client, args, latest, changed, live)
    except (KeyboardInterrupt, Terminated):  # the way out of the live screen: not an error
        if not live:
            raise
    return 0


def _redraw(client: NodeClient, args: argparse.Namespace, latest: dict[str, list[Any]],
            changed: threading.Event, live: bool) -> None:
    while True:
        changed.clear()
        try:
            state = client.state()
        except StatusError:
            state = None
        screen = render_status(client.target, state, latest["statuses"], every_key=args.all)
        if live and sys.stdout.isatty():
            sys.stdout.write("\033[H\033[J")  # one screen, redrawn
        print(screen + ("\n" if live else ""), flush=True)
        if not live:
            return
        changed.wait(args.period)


DESCRIPTION = """Look at and operate a running sfnet_node without the ros2 command: its lifecycle
state and each camera's status from /diagnostics, lifecycle transitions, parameters.

  sfnet-status                      live: state + each camera, redrawn until Ctrl-C
  sfnet-status --once               one snapshot, then exit
  sfnet-status configure            (or activate, deactivate, cleanup, shutdown)
  sfnet-status get checkpoint input_timeout_warn
  sfnet-status set input_timeout_warn:=5.0 publish_confidence:=true

ROS arguments (e.g. a domain or discovery setting) go after --ros-args.
Exit status 0 when the request was carried out; 2 with one line when it was not."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION)
    p.add_argument("command", nargs="?", default="show", choices=("show", *TRANSITIONS, "get", "set"),
                   help="show the node's status (default), carry out a lifecycle transition, or get / set parameters")
    p.add_argument("items", nargs="*", metavar="NAME[:=VALUE]", help="parameter names (get) or NAME:=VALUE (set)")
    p.add_argument("--node", default="/sfnet_node", help="the node's fully qualified name")
    p.add_argument("--once", action="store_true", help="show: print one snapshot and exit")
    p.add_argument("--all", action="store_true", help="show: every diagnostics key, not only the main ones")
    p.add_argument("--period", type=positive_float, default=1.0, metavar="S", help="show: redraw at most every S s")
    p.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                   help="seconds to wait for the node to answer")
    return p


def main(argv: list[str] | None = None) -> int:
    own, ros_args = split_ros_args(argv)
    args = build_parser().parse_args(own)
    if args.command in ("get", "set") and not args.items:
        build_parser().error(f"{args.command} needs at least one parameter")
    if args.command not in ("get", "set") and args.items:
        build_parser().error(f"{args.command} takes no parameters: {' '.join(args.items)}")

    def body() -> int:
        assignments = [parse_assignment(item) for item in args.items] if args.command == "set" else []
        init_rclpy(PROG, ros_args)
        client = None
        try:
            client = NodeClient(args.node, args.timeout)
            if args.command == "show":
                return _show(client, args)
            if args.command == "get":
                for name, value in client.get(args.items).items():
                    print(f"{name}: {value!r}" if isinstance(value, str) else f"{name}: {value}")
            elif args.command == "set":
                client.set(assignments)
                print(f"{client.target}: set {', '.join(name for name, _ in assignments)}")
            else:
                print(f"{client.target}: {args.command} -> {client.transition(args.command)}")
            return 0
        finally:
            if client is not None:
                client.close()
            leave_rclpy(client.node if client is not None else None, {})

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
