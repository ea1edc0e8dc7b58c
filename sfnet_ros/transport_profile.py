"""The one rule for the large-frame Fast DDS profile: which profile a process of this package runs with.

Every process of this package that publishes or subscribes camera images (``sfnet_node``, the
tools through ``sfnet_ros.tools.ros_args.init_rclpy``, the benches) calls ``apply_profile()``
before ``rclpy.init``; ``launch/sfnet.launch.py`` computes the node's environment with the same
``decide_profile`` (``sfnet_ros.launch_support.fastdds_profile_environment``). Without the profile,
Fast DDS loses most camera-sized frames between two processes, silently (docs/transport.md).

The rule (``decide_profile``), first match wins:

1. the RMW is not Fast DDS (``RMW_IMPLEMENTATION`` set to anything but ``rmw_fastrtps_*``; unset
   means the distribution's default, Fast DDS from Humble to Kilted): nothing is set;
2. the switch ``SFNET_FASTDDS_PROFILE`` is ``off`` (or ``none``, ``0``, ``false``, ``no``):
   nothing is set, Fast DDS runs on its defaults (or on a profile the user exported);
3. the switch names a file: that file (it must exist);
4. the user has chosen a profile of their own: ``FASTDDS_DEFAULT_PROFILES_FILE`` or
   ``FASTRTPS_DEFAULT_PROFILES_FILE`` is set, a ``DEFAULT_FASTDDS_PROFILES.xml`` /
   ``DEFAULT_FASTRTPS_PROFILES.xml`` lies in the working directory (Fast DDS loads it from there
   by itself), or ``FASTDDS_BUILTIN_TRANSPORTS`` chooses the transports: theirs is kept, and
   the decision names it;
5. otherwise (``auto``, the default) this package's ``config/fastdds_large_frames.xml``, found
   next to the running code (source checkout, or the install prefix's ``share/sfnet_ros/config``)
   or through the ament index.

Fast DDS reads the variable once per process, when the process's first DDS participant is created
(``rclpy.init``): setting it later changes nothing. ROS-free (no rclpy import), so launch and the
tests use it where rclpy cannot run.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sfnet_ros.ros_distro import FAST_DDS_2_DISTROS, ros_distribution

__all__ = [
    "FAST_DDS_2_DISTROS",
    "OFF_VALUES",
    "PROFILE_FILE_NAME",
    "PROFILE_VARIABLES",
    "SWITCH_VARIABLE",
    "USER_PROFILE_FILES",
    "ProfileDecision",
    "apply_profile",
    "decide_profile",
    "find_profile_file",
    "is_fast_dds",
    "profile_candidates",
]

#: The profile shipped in config/ (installed to share/sfnet_ros/config/).
PROFILE_FILE_NAME = "fastdds_large_frames.xml"
#: The switch: unset or ``auto`` = the rule above; ``off`` = never apply ours; a path = that file.
SWITCH_VARIABLE = "SFNET_FASTDDS_PROFILE"
AUTO = "auto"
OFF_VALUES = frozenset({"off", "none", "0", "false", "no"})
#: Fast DDS 3 reads the first, Fast DDS 2 (the distributions below) the second.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: Files Fast DDS (3, 2) loads from the working directory by themselves.
USER_PROFILE_FILES = ("DEFAULT_FASTDDS_PROFILES.xml", "DEFAULT_FASTRTPS_PROFILES.xml")
#: Fast DDS >= 2.13: the built-in transports chosen by name (e.g. LARGE_DATA): a choice of the user's.
BUILTIN_TRANSPORTS_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"

DOCS = "docs/transport.md"


@dataclass(frozen=True)
class ProfileDecision:
    """What ``decide_profile`` chose.

    ``action``: ``package`` (this package's profile), ``explicit`` (a file the switch or the launch
    argument names), ``user`` (the user's own choice, kept), ``off`` (switched off), ``other-rmw``
    (not Fast DDS) or ``missing`` (the profile file to apply does not exist: Fast DDS runs on its
    defaults). ``variables``: what to set in the environment (empty unless ``package`` or
    ``explicit``). ``message``: one line for the log; ``warning``: log it as a warning.
    """

    action: str
    path: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    message: str = ""
    warning: bool = False

    @property
    def summary(self) -> str:
        """Short form for /diagnostics: ``package /path``, ``user FASTDDS_DEFAULT_PROFILES_FILE=...``, ``off``."""
        return f"{self.action} {self.path}" if self.path else self.action


def is_fast_dds(environ: Mapping[str, str]) -> bool:
    """True when the process's RMW is Fast DDS (``RMW_IMPLEMENTATION`` unset = the default, Fast DDS
    on Humble to Kilted; ``rmw_fastrtps_cpp`` / ``rmw_fastrtps_dynamic_cpp``)."""
    rmw = (environ.get("RMW_IMPLEMENTATION") or "").strip()
    return not rmw or rmw.startswith("rmw_fastrtps")


def profile_candidates(package_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where this package's profile may be, in the order looked at: the source checkout
    (``<repo>/config``, next to ``sfnet_ros/``), the install prefix of the running code
    (``<prefix>/share/sfnet_ros/config``, the package being ``<prefix>/lib/pythonX.Y/site-packages/
    sfnet_ros``), then the ament index's share directory (when ament_index_python is importable)."""
    package = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    candidates = [package.parent / "config" / PROFILE_FILE_NAME]
    for parent in list(package.parents)[1:5]:
        candidates.append(parent / "share" / "sfnet_ros" / "config" / PROFILE_FILE_NAME)
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("sfnet_ros")) / "config" / PROFILE_FILE_NAME)
    except Exception:  # not installed, AMENT_PREFIX_PATH unset, package not in the index
        pass
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def find_profile_file(candidates: Sequence[Path] | None = None) -> Path | None:
    """The first existing file of ``profile_candidates()`` (None when there is none)."""
    for candidate in profile_candidates() if candidates is None else candidates:
        if candidate.is_file():
            return candidate
    return None


def _distribution(ros_distro: str | None) -> str | None:
    """``ROS_DISTRO``'s value, or (unset: the PyPI wheels) the installed rclpy's distribution."""
    return (ros_distro or "").strip().lower() or ros_distribution({})


def _variables(path: str, ros_distro: str | None) -> dict[str, str]:
    # an unknown distribution gets both variables: Fast DDS 2 silently ignores the new one and the
    # frames would be lost, where Kilted only warns about the old one
    distro = _distribution(ros_distro)
    names = PROFILE_VARIABLES if distro is None or distro in FAST_DDS_2_DISTROS else PROFILE_VARIABLES[:1]
    return {name: path for name in names}


def _user_choice(environ: Mapping[str, str], cwd: str | os.PathLike | None) -> tuple[str, str] | None:
    """(what, path or value) of a profile / transport choice the user made, None if none."""
    for name in PROFILE_VARIABLES:
        value = environ.get(name)
        if value:
            return f"{name}={value}", value
    folder = Path.cwd() if cwd is None else Path(cwd)
    for name in USER_PROFILE_FILES:
        try:
            if (folder / name).is_file():
                return f"{name} in the working directory {folder}", str(folder / name)
        except OSError:
            continue
    value = environ.get(BUILTIN_TRANSPORTS_VARIABLE)
    if value:
        return f"{BUILTIN_TRANSPORTS_VARIABLE}={value}", value
    return None


def decide_profile(environ: Mapping[str, str], choice: str | None = None,
                   default_profile: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None,
                   candidates: Sequence[Path] | None = None) -> ProfileDecision:
    """The profile a process started with ``environ`` should run with (the rule of the module
    docstring). ``choice``: ``auto``, ``off``/``none`` or a path (default: ``environ``'s
    ``SFNET_FASTDDS_PROFILE``, else ``auto``); ``default_profile``: this package's profile file
    (default: ``find_profile_file(candidates)``); ``cwd``: the process's working directory (Fast DDS
    looks for its default file there). ``ROS_DISTRO`` in ``environ`` decides the variable names; unset,
    the installed rclpy does (``sfnet_ros.ros_distro``)."""
    if not is_fast_dds(environ):
        rmw = environ.get("RMW_IMPLEMENTATION")
        return ProfileDecision("other-rmw", message=f"RMW_IMPLEMENTATION={rmw} is not Fast DDS: no Fast DDS "
                                                    "profile applied")
    switch = (environ.get(SWITCH_VARIABLE) or "").strip() if choice is None else choice.strip()
    origin = SWITCH_VARIABLE if choice is None else "fastdds_profile"
    if switch.lower() in OFF_VALUES:
        user = _user_choice(environ, cwd)
        theirs = f"; Fast DDS uses the user's {user[0]}" if user else ""
        return ProfileDecision(
            "off", message=f"large-frame Fast DDS profile off ({origin}={switch}){theirs}: camera-sized "
                           f"frames between processes may be lost without it (see {DOCS})")
    ros_distro = environ.get("ROS_DISTRO")
    if switch and switch.lower() != AUTO:
        path = os.path.abspath(os.path.expanduser(switch))
        if not os.path.isfile(path):
            return ProfileDecision(
                "missing", path=path, warning=True,
                message=f"{origin}: Fast DDS profile file not found: {path}; Fast DDS runs on its defaults and "
                        f"camera-sized frames between processes may be lost (see {DOCS})")
        return ProfileDecision("explicit", path=path, variables=_variables(path, ros_distro),
                               message=f"Fast DDS profile {path} ({origin})")
    user = _user_choice(environ, cwd)
    if user is not None:
        what, value = user
        ours = default_profile if default_profile is not None else find_profile_file(candidates)
        try:
            same = ours is not None and os.path.samefile(value, ours)
        except OSError:
            same = False
        if same:
            return ProfileDecision("package", path=value, message=f"large-frame Fast DDS profile {value} "
                                                                  f"(already set: {what})")
        missing = ""
        if what.startswith(PROFILE_VARIABLES) and not os.path.isfile(value):
            missing = " - that file does not exist: Fast DDS only logs this and runs on its defaults"
        distro = _distribution(ros_distro)
        if what.startswith(PROFILE_VARIABLES[0]) and distro in FAST_DDS_2_DISTROS and \
                not environ.get(PROFILE_VARIABLES[1]):
            missing += (f" - but the Fast DDS 2 of {distro} reads only {PROFILE_VARIABLES[1]}: export it too (the same "
                        "file), or Fast DDS runs on its defaults")
        return ProfileDecision("user", path=value, warning=bool(missing),
                               message=f"Fast DDS profile of the user's own kept: {what}{missing} (this package's "
                                       f"large-frame profile is not applied; see {DOCS})")
    if default_profile is not None:
        path = os.path.abspath(os.fspath(default_profile))
        looked = [Path(path)]
    else:
        looked = list(profile_candidates() if candidates is None else candidates)
        found = find_profile_file(looked)
        path = "" if found is None else os.path.abspath(found)
    if not path or not os.path.isfile(path):
        where = ", ".join(str(p) for p in looked)
        return ProfileDecision(
            "missing", path=path, warning=True,
            message=f"the package's default profile: Fast DDS profile file not found ({PROFILE_FILE_NAME}, looked in "
                    f"{where}); Fast DDS runs on its defaults and camera-sized frames between processes may be lost "
                    f"(see {DOCS})")
    variables = _variables(path, ros_distro)
    return ProfileDecision("package", path=path, variables=variables,
                           message=f"large-frame Fast DDS profile {path} applied ({', '.join(variables)}; "
                                   f"{SWITCH_VARIABLE}=off runs without it, see {DOCS})")


def apply_profile(environ: MutableMapping[str, str] | None = None, cwd: str | os.PathLike | None = None
                  ) -> ProfileDecision:
    """Decide (``decide_profile``) and set the variables into ``environ`` (default ``os.environ``, so
    this process's Fast DDS reads them: call it before ``rclpy.init``). Returns the decision, for
    the caller to log (``message``, as a warning when ``warning``)."""
    target = os.environ if environ is None else environ
    decision = decide_profile(target, cwd=cwd)
    target.update(decision.variables)
    return decision
