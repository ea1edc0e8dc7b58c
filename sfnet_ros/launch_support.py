"""How ``sfnet_node`` is started, as plain functions: the launch file's rules and the command line.

The launch file's ``OpaqueFunction`` only reads its launch configurations and calls ``node_launch``;
nothing here imports launch, launch_ros or rclpy, so the tests (where launch cannot be installed),
``test/node_harness.py``, ``bench/node_latency.py`` and ``sfnet-demo`` start the node by exactly the
same rules: ``node_launch(...)`` gives a ``NodeLaunch``, which the launch file hands to launch_ros
and the others run as ``argv()`` with ``process_environment(os.environ)``.

Camera inputs (``camera_plan``):

* one camera (``cameras`` empty, the default): ``image -> <image_topic>`` and
  ``camera_info -> <sibling camera_info of image_topic>``; no ``cameras`` parameter is set.
* several cameras: ``cameras:=front,left`` and ``image_topics:=/cam/front/image_raw,/cam/left/image_raw``
  (same order, same count) set the node's ``cameras`` parameter and remap each
  ``<camera>/image`` to its topic and ``<camera>/camera_info`` to that topic's sibling.

The camera_info rule is image_transport's: the camera_info of ``<ns>/<image name>`` is
``<ns>/camera_info`` (``/cam/front/image_raw`` -> ``/cam/front/camera_info``, ``image_raw`` ->
``camera_info``).

Fast DDS profile (``fastdds_profile_environment``): the environment variables that make every
Fast DDS participant of the node load the profile file (``FASTDDS_DEFAULT_PROFILES_FILE``, read by
Fast DDS 3 = Kilted and later; plus ``FASTRTPS_DEFAULT_PROFILES_FILE`` for the Fast DDS 2
distributions, Humble to Jazzy, which only read that one; Kilted warns that it is deprecated, so it
is set only where it is needed), by the rule of ``sfnet_ros.transport_profile`` that the node also
applies to itself when started without launch.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfnet_ros.transport_profile import (
    FAST_DDS_2_DISTROS,
    PROFILE_FILE_NAME,
    PROFILE_VARIABLES,
    SWITCH_VARIABLE,
    decide_profile,
)

__all__ = [
    "AUTO_PROFILE",
    "FAST_DDS_2_DISTROS",
    "NO_PROFILE",
    "PROFILE_FILE_NAME",
    "PROFILE_VARIABLES",
    "SWITCH_VARIABLE",
    "NODE_PROGRAM",
    "CameraPlan",
    "LaunchArgumentError",
    "NodeLaunch",
    "camera_info_topic",
    "camera_plan",
    "fastdds_profile_environment",
    "node_launch",
    "split_list",
]

#: ``fastdds_profile`` values: ``auto`` = the stack's exported profile if there is one, else ours.
AUTO_PROFILE = "auto"
#: ``fastdds_profile:=none`` leaves the environment as it is (Fast DDS defaults unless exported).
NO_PROFILE = "none"

# ROS 2 name tokens: letters, digits and underscores, not starting with a digit.
_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_RELATIVE_NAME = re.compile(rf"^{_TOKEN}(/{_TOKEN})*$")
_TOPIC_NAME = re.compile(rf"^(/|~/)?{_TOKEN}(/{_TOKEN})*$")


class LaunchArgumentError(ValueError):
    """Launch arguments that cannot work together; the message names the arguments and values."""


@dataclass(frozen=True)
class CameraPlan:
    """What the node is started with: parameter overrides and topic remappings.

    ``parameters`` is ``{}`` for one camera (the params file decides) or ``{"cameras": [...]}``;
    ``remappings`` are ``(from, to)`` pairs in the order the node's inputs are listed.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)


def split_list(text: str, argument: str) -> list[str]:
    """``"front, left"`` (or ``"[front, left]"``) -> ``["front", "left"]``; ``""`` -> ``[]``.

    Raises LaunchArgumentError for an empty item (``"front,,left"``, a trailing comma).
    """
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):  # YAML-style list, as in the params file
        text = text[1:-1].strip()
    if not text:
        return []
    items = [item.strip().strip("'\"") for item in text.split(",")]
    if any(not item for item in items):
        raise LaunchArgumentError(f"{argument}:={text!r} has an empty item (two commas, or a trailing comma)")
    return items


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic beside an image topic: its last name token replaced by ``camera_info``."""
    namespace, _, _ = image_topic.rpartition("/")
    return f"{namespace}/camera_info" if namespace or image_topic.startswith("/") else "camera_info"


def _check_topic(topic: str, argument: str) -> None:
    if not _TOPIC_NAME.match(topic):
        raise LaunchArgumentError(
            f"{argument}: {topic!r} is not a valid topic name (tokens of letters, digits and "
            f"underscores separated by '/', not starting with a digit)")


def camera_plan(cameras: str, image_topics: str, image_topic: str) -> CameraPlan:
    """The node's ``cameras`` parameter and input remappings from the three launch arguments.

    ``cameras`` and ``image_topics`` are comma-separated lists of the same length; with
    ``cameras`` empty the single ``image_topic`` is used and ``image_topics`` must be empty.
    Raises LaunchArgumentError with a message naming the arguments when they do not fit.
    """
    names = split_list(cameras, "cameras")
    topics = split_list(image_topics, "image_topics")
    if not names:
        if topics:
            raise LaunchArgumentError(
                f"image_topics:={image_topics!r} is set but cameras is empty: name the cameras "
                f"(cameras:=front,left,... in the same order), or use image_topic:=<topic> for one camera")
        topic = (image_topic or "").strip()
        _check_topic(topic, "image_topic")
        return CameraPlan({}, [("image", topic), ("camera_info", camera_info_topic(topic))])
    if len(names) != len(topics):
        raise LaunchArgumentError(
            f"cameras has {len(names)} name(s) ({', '.join(names)}) but image_topics has "
            f"{len(topics)} topic(s) ({', '.join(topics) or 'none'}): give one image topic per camera, "
            f"in the same order")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LaunchArgumentError(f"cameras: duplicate camera name(s): {', '.join(duplicates)}")
    for name in names:
        if not _RELATIVE_NAME.match(name):
            raise LaunchArgumentError(
                f"cameras: {name!r} is not a valid relative topic name (it prefixes the node's "
                f"topics: {name}/image, {name}/segmentation/labels, ...)")
    remappings: list[tuple[str, str]] = []
    for name, topic in zip(names, topics):
        _check_topic(topic, "image_topics")
        remappings += [(f"{name}/image", topic), (f"{name}/camera_info", camera_info_topic(topic))]
    return CameraPlan({"cameras": names}, remappings)


def fastdds_profile_environment(argument: str, environ: Mapping[str, str], default_profile: str | os.PathLike,
                                ros_distro: str | None = None) -> dict[str, str]:
    """Environment variables to set for the node so that Fast DDS loads the right profile.

    The rule is ``sfnet_ros.transport_profile.decide_profile``, the one every process of this package
    applies to itself before ``rclpy.init``; ``argument`` is the ``fastdds_profile`` launch argument:

    * ``auto``: the ``SFNET_FASTDDS_PROFILE`` switch of ``environ`` if set, else keep a profile the
      user chose (the whole stack's, exported), else ``default_profile`` (the package's
      ``config/fastdds_large_frames.xml``); nothing for an RMW other than Fast DDS;
    * ``none`` or empty: ``SFNET_FASTDDS_PROFILE=off`` (the node then applies no profile itself);
    * a path: that file (made absolute).

    ``ros_distro`` (``$ROS_DISTRO``; unset: the installed rclpy's, ``sfnet_ros.ros_distro``) decides
    the variables: ``FASTDDS_DEFAULT_PROFILES_FILE`` always, ``FASTRTPS_DEFAULT_PROFILES_FILE`` too
    for the Fast DDS 2 distributions. Raises
    LaunchArgumentError when the file does not exist (Fast DDS would only log it and run with its
    defaults, losing large frames silently).
    """
    choice = (argument or "").strip()
    if choice.lower() in ("", NO_PROFILE):
        return {SWITCH_VARIABLE: "off"}
    environment = {**environ, "ROS_DISTRO": ros_distro or ""}
    decision = decide_profile(environment, choice=None if choice.lower() == AUTO_PROFILE else choice,
                              default_profile=default_profile)
    if decision.action == "missing":
        raise LaunchArgumentError(f"{decision.message} (fastdds_profile:=none runs without one)")
    if decision.action == "off":
        return {SWITCH_VARIABLE: "off"}
    return dict(decision.variables)


# -- the node's command line -----------------------------------------------------------------------

#: The node as a Python module of this interpreter (``ros2 run sfnet_ros sfnet_node`` where the
#: package is installed in an ament index; this works from a checkout too).
NODE_PROGRAM = (sys.executable, "-m", "sfnet_ros.node")


def _param_text(value: Any) -> str:
    # `-p name:=value` parses value as YAML; JSON is YAML and keeps strings strings ("1.0" stays a
    # string, "traffic light" keeps its space inside a list).
    return json.dumps(value)


@dataclass(frozen=True)
class NodeLaunch:
    """One start of sfnet_node: what the launch file hands to launch_ros, and (``argv``,
    ``process_environment``) the command line and environment that amounts to."""

    params_file: str | None                  # the parameter file, read first (None: none)
    parameters: dict[str, Any]               # overrides, after the params file, in this order
    remappings: list[tuple[str, str]]        # (from, to): the cameras' inputs first, then the rest
    namespace: str = ""                      # "" = the root namespace
    node_name: str | None = None             # None: the node's own name (sfnet_node)
    environment: dict[str, str] = field(default_factory=dict)  # set for the node: the Fast DDS profile

    def ros_arguments(self) -> list[str]:
        """``--ros-args --params-file F -p name:=value ... -r from:=to ... -r __ns:=/ns -r __node:=name``."""
        args = ["--ros-args"]
        if self.params_file is not None:
            args += ["--params-file", self.params_file]
        for name, value in self.parameters.items():
            args += ["-p", f"{name}:={_param_text(value)}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        if self.node_name:
            args += ["-r", f"__node:={self.node_name}"]
        return args

    def argv(self, program: Sequence[str] = NODE_PROGRAM) -> list[str]:
        """The whole command line, ``program`` first (default: ``python -m sfnet_ros.node``)."""
        return [*program, *self.ros_arguments()]

    def process_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the environment the node would inherit) plus ``environment``; ``base`` is not changed."""
        return {**base, **self.environment}


def node_launch(
    parameters: Mapping[str, Any] | None = None,
    *,
    params_file: str | os.PathLike | None = None,
    cameras: str = "",
    image_topics: str = "",
    image_topic: str | None = None,
    remaps: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    namespace: str | None = None,
    node_name: str | None = None,
    fastdds_profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    default_profile: str | os.PathLike | None = None,
    ros_distro: str | None = None,
) -> NodeLaunch:
    """How to start the node with these parameter overrides, cameras, remappings and profile rule.

    Cameras (the launch arguments of the same names, ``camera_plan``): with ``cameras`` or
    ``image_topic`` set, the ``cameras`` parameter and the inputs' remappings come from
    ``camera_plan(cameras, image_topics, image_topic)`` (parameters after ``parameters``,
    remappings before ``remaps``); with neither, only ``remaps`` (the node's own ``image`` topic).

    Fast DDS profile: ``fastdds_profile`` None sets no variable (as a start from a shell: the node
    then applies ``sfnet_ros.transport_profile`` itself); otherwise it is the launch argument
    (``auto``, ``none`` or a path) and ``environment`` is ``fastdds_profile_environment(
    fastdds_profile, environ, default_profile, ros_distro)`` (``ros_distro`` defaults to
    ``environ["ROS_DISTRO"]``). Raises LaunchArgumentError as those two functions do.
    """
    overrides = dict(parameters or {})
    remappings: list[tuple[str, str]] = []
    if cameras or image_topics or image_topic is not None:
        plan = camera_plan(cameras, image_topics, image_topic or "")
        overrides.update(plan.parameters)
        remappings += plan.remappings
    remappings += list(remaps.items() if isinstance(remaps, Mapping) else remaps)
    environment: dict[str, str] = {}
    if fastdds_profile is not None:
        if default_profile is None:
            raise ValueError("node_launch: fastdds_profile needs default_profile (the package's profile file)")
        environ = os.environ if environ is None else environ
        environment = fastdds_profile_environment(fastdds_profile, environ, default_profile,
                                                  ros_distro if ros_distro is not None else environ.get("ROS_DISTRO"))
    return NodeLaunch(None if params_file is None else str(params_file), overrides, remappings,
                      (namespace or "").strip(), node_name or None, environment)
