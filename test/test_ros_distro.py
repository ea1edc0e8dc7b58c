"""sfnet_ros.ros_distro: the distribution from ROS_DISTRO or the installed rclpy, and what differs.

The cross-check runs in each environment (Kilted's wheels in ``make test``, Jazzy's in
``make test-jazzy``): the distribution found must be the one whose Fast DDS is installed, or
the large-frame profile goes under a variable that Fast DDS never reads (frames lost, silently)."""
from __future__ import annotations

import contextlib
import importlib.metadata

import pytest

from sfnet_ros.ros_distro import (
    FAST_DDS_2_DISTROS,
    apply_localhost_discovery,
    distro_of_rclpy,
    localhost_discovery,
    ros_distribution,
)
from sfnet_ros.transport_profile import PROFILE_VARIABLES, decide_profile

pytestmark = pytest.mark.ros_api  # ROS messages and rclpy: run on every distribution CI tests


@pytest.mark.parametrize(("version", "distro"), [
    ("3.3.16", "humble"), ("4.1.7", "iron"), ("7.1.6", "jazzy"), ("9.1.2", "kilted"), ("10.0.1", "rolling"),
    ("2.0.0", None), ("x", None)])
def test_distro_of_rclpy(version: str, distro: str | None) -> None:
    assert distro_of_rclpy(version) == distro


def test_ros_distro_wins_over_the_installed_rclpy() -> None:
    assert ros_distribution({"ROS_DISTRO": "Humble"}) == "humble"
    installed = distro_of_rclpy(importlib.metadata.version("rclpy"))
    assert installed is not None and ros_distribution({}) == installed == ros_distribution({"ROS_DISTRO": ""})


def test_the_distribution_found_is_the_one_whose_fast_dds_is_installed(tmp_path) -> None:
    """ros-fastdds (3.x) comes with Kilted's wheels, ros-fastrtps (2.x) with Jazzy's."""
    versions = {}
    for name in ("ros-fastdds", "ros-fastrtps"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    assert len(versions) == 1, versions
    (name, version), = versions.items()
    fast_dds_2 = ros_distribution({}) in FAST_DDS_2_DISTROS
    assert fast_dds_2 == version.startswith("2."), (ros_distribution({}), versions)
    profile = tmp_path / "p.xml"
    profile.write_text("<dds/>")
    variables = decide_profile({}, default_profile=profile).variables
    # Fast DDS 2 reads only FASTRTPS_DEFAULT_PROFILES_FILE, Fast DDS 3 FASTDDS_DEFAULT_PROFILES_FILE
    assert PROFILE_VARIABLES[1 if fast_dds_2 else 0] in variables


def test_localhost_discovery_per_distribution() -> None:
    assert localhost_discovery("humble") == {"ROS_LOCALHOST_ONLY": "1"}
    for distro in ("iron", "jazzy", "kilted"):
        assert localhost_discovery(distro) == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    assert localhost_discovery(None) == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}
    inherited = {"ROS_LOCALHOST_ONLY": "1", "ROS_DISTRO": "jazzy", "PATH": "/bin"}
    apply_localhost_discovery(inherited)  # a shell's old variable would make Jazzy ignore the range
    assert inherited == {"ROS_DISTRO": "jazzy", "PATH": "/bin", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    humble = {"ROS_DISTRO": "humble"}
    apply_localhost_discovery(humble)
    assert humble == {"ROS_DISTRO": "humble", "ROS_LOCALHOST_ONLY": "1"}


# Test files that start a node or a ROS tool but test nothing a distribution changes: they run in
# the Kilted suite only (make test-jazzy runs JAZZY_TESTS of the Makefile in .venv-jazzy).
DISTRIBUTION_INDEPENDENT = {
    "test_launch_params.py": "the launch file read as a syntax tree, the node's command line",
    "test_cli_bad_input.py": "the tools' argument checks (one line, exit 2) before anything ROS starts",
    "test_signals_cli.py": "the tools' exit codes on signals (the node's are in test_node_faults.py)",
    "test_openvino.py": "the OpenVINO runtime behind the node",
    "test_threads.py": "the CPU thread settings",
    "test_custom_data.py": "docs/custom-data.md run as written (its node and tools: the files above)",
    "test_demo.py": "sfnet-demo end to end (its node and tools: the files above)",
    "test_doc_evaluation_and_bags.py": "docs/evaluation-and-bags.md run as written (idem)",
    "test_readme.py": "the README's commands (idem)",
}
_ROS_MARKERS = ("NodeProcess", "RosClient", "ScriptedProcess", "ros_domain", "import rclpy", "from rclpy", "init_rclpy",
                "from sensor_msgs", "from diagnostic_msgs", "from lifecycle_msgs")


def test_every_ros_facing_test_file_also_runs_on_jazzy() -> None:
    """A new test file that uses rclpy or ROS messages, or starts a node or a ROS tool, runs in both
    distributions' environments (the Makefile's JAZZY_TESTS), unless it is named above with the reason."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    listed = re.search(r"^JAZZY_TESTS := (.*)$", makefile, re.MULTILINE)
    assert listed is not None
    jazzy = {Path(word).name for word in listed.group(1).split()}
    assert all((repo / "test" / name).is_file() for name in jazzy), jazzy
    assert not jazzy & set(DISTRIBUTION_INDEPENDENT)
    ros_facing = {path.name for path in (repo / "test").glob("test_*.py")
                  if any(marker in path.read_text(encoding="utf-8") for marker in _ROS_MARKERS)}
    missing = sorted(ros_facing - jazzy - set(DISTRIBUTION_INDEPENDENT))
    assert not missing, f"start a node or a ROS tool: add to JAZZY_TESTS (Makefile) or to the list above: {missing}"
    assert set(DISTRIBUTION_INDEPENDENT) <= ros_facing, "the list above names only files that use ROS"
    # make test-jazzy JAZZY_SELECT="-m ros_api" runs the ros_api tests of those files: every group has some
    unmarked = sorted(name for name in jazzy if "pytest.mark.ros_api" not in (repo / "test" / name).read_text())
    assert not unmarked, f"mark the tests of these files that go through distribution-dependent code: {unmarked}"
    # and make test (CI) runs that selection on Jazzy beside the Kilted suite, its status counted
    recipe = makefile.split("\ntest:\n", 1)[1].split("\n\n", 1)[0]
    assert "make --no-print-directory setup-jazzy" in recipe and "$(JAZZY_PYTEST) -m ros_api" in recipe, recipe
    assert "wait $$jazzy; jazzy_tests=$$?" in recipe and "-a $$jazzy_tests -eq 0" in recipe, recipe
