"""Which ROS 2 distribution this process runs with, and the settings that differ between them.

A sourced ROS install sets ``ROS_DISTRO``; the PyPI wheels (``ros-rclpy`` for Kilted,
``ros-jazzy-rclpy`` for Jazzy, this project's test environments) set nothing. There the
distribution follows from the installed rclpy's version, read from its package metadata without
importing rclpy (launch and the transport rule use this before ``rclpy.init``): each
distribution's rclpy has its own major version.

What differs, and which distributions this package supports for it:

* the Fast DDS profile variable: Fast DDS 2 (Humble, Iron, Jazzy) reads only
  ``FASTRTPS_DEFAULT_PROFILES_FILE``, Fast DDS 3 (Kilted and later) ``FASTDDS_DEFAULT_PROFILES_FILE``
  (and warns about the old one): ``sfnet_ros.transport_profile``;
* localhost-only discovery: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` from Iron on;
  ``ROS_LOCALHOST_ONLY=1`` on Humble, which Jazzy and Kilted still honour but warn about on
  every process start (and which then overrides the range): ``localhost_discovery``;
* rclpy's event handler module and matched-endpoint counts: handled where they are used
  (``sfnet_ros.node.segmentation_node``, ``sfnet_ros.tools.bag_play``).

Tested: Kilted (rclpy 9) by ``make test`` (CI) and Jazzy (rclpy 7) by ``make test-jazzy``, both
from wheels; Humble (rclpy 3) by the mapping below only.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping, MutableMapping

#: rclpy's major version -> the distribution that ships it.
RCLPY_MAJOR_TO_DISTRO = {3: "humble", 4: "iron", 7: "jazzy", 9: "kilted"}
#: Distributions whose rmw_fastrtps uses Fast DDS 2.x (profile variable FASTRTPS_...).
FAST_DDS_2_DISTROS = frozenset({"foxy", "galactic", "humble", "iron", "jazzy"})
#: Distributions without ROS_AUTOMATIC_DISCOVERY_RANGE (localhost-only is ROS_LOCALHOST_ONLY there).
LOCALHOST_ONLY_DISTROS = frozenset({"foxy", "galactic", "humble"})


def distro_of_rclpy(version: str) -> str | None:
    """``"7.1.6"`` -> ``"jazzy"``; a major version newer than the table's -> ``"rolling"``;
    None for a version that is not a version or older than Humble's."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        return None
    if major in RCLPY_MAJOR_TO_DISTRO:
        return RCLPY_MAJOR_TO_DISTRO[major]
    return "rolling" if major > max(RCLPY_MAJOR_TO_DISTRO) else None


def ros_distribution(environ: Mapping[str, str] | None = None) -> str | None:
    """The distribution's name in lower case: ``ROS_DISTRO`` when set, else the installed rclpy's
    (see the module docstring); None when neither tells."""
    env = os.environ if environ is None else environ
    named = (env.get("ROS_DISTRO") or "").strip().lower()
    if named:
        return named
    try:
        return distro_of_rclpy(importlib.metadata.version("rclpy"))
    except importlib.metadata.PackageNotFoundError:
        return None


def localhost_discovery(distro: str | None) -> dict[str, str]:
    """The variables that keep DDS discovery on this machine for ``distro``: the range from Iron
    on, ``ROS_LOCALHOST_ONLY`` on Humble and older; both when the distribution is unknown."""
    if distro is None:
        return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}
    if distro in LOCALHOST_ONLY_DISTROS:
        return {"ROS_LOCALHOST_ONLY": "1"}
    return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def apply_localhost_discovery(environ: MutableMapping[str, str], distro: str | None = None) -> None:
    """Set ``localhost_discovery`` in ``environ`` (for child processes or this one, before
    ``rclpy.init``) and drop ``ROS_LOCALHOST_ONLY`` where the range replaces it: a value inherited
    from the shell would make Jazzy and later warn on every start and ignore the range."""
    wanted = localhost_discovery(ros_distribution(environ) if distro is None else distro)
    if "ROS_LOCALHOST_ONLY" not in wanted:
        environ.pop("ROS_LOCALHOST_ONLY", None)
    environ.update(wanted)
