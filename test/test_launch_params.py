"""The launch file, config/sfnet.yaml, the docs/node.md table and the node's declared parameters agree.

``launch``/``launch_ros`` cannot be installed here, so the launch file is read with ``ast``
(never imported); its argument logic lives in ``sfnet_ros.launch_support`` (tested directly here);
the launch file hands launch_ros what ``launch_support.node_launch`` computes, whose command line and
environment the tests start the node with (``node_harness.NodeProcess``); this module checks both.
"""
from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from doc_commands import fenced_blocks
from node_harness import DEFAULT_PARAMS_FILE, FASTDDS_PROFILE, NODE_NAME, REPO_ROOT, NodeProcess

from sfnet_core.errors import ConfigError
from sfnet_ros.launch_support import (
    PROFILE_FILE_NAME,
    PROFILE_VARIABLES,
    SWITCH_VARIABLE,
    CameraPlan,
    LaunchArgumentError,
    camera_info_topic,
    camera_plan,
    fastdds_profile_environment,
    node_launch,
    split_list,
)
from sfnet_ros.node.params import PARAMETERS, config_from_values, parameters_markdown, spec, topic_token
from sfnet_ros.ros_distro import ros_distribution

LAUNCH_FILE = REPO_ROOT / "launch" / "sfnet.launch.py"
NODE_DOC = REPO_ROOT / "docs" / "node.md"
LAUNCH_DOC = REPO_ROOT / "docs" / "launch.md"


# -- the launch file, read as a syntax tree --------------------------------------------------------

LAUNCH_ARGUMENTS = {"checkpoint", "image_topic", "cameras", "image_topics", "params_file", "namespace", "device",
                    "fastdds_profile"}
# What the launch file may import: documented launch/launch_ros APIs and the ROS-free argument logic.
LAUNCH_IMPORTS = {
    "os": None,
    "ament_index_python.packages": {"get_package_share_directory"},
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "GroupAction", "OpaqueFunction", "SetEnvironmentVariable"},
    "launch.substitutions": {"LaunchConfiguration"},
    "launch_ros.actions": {"LifecycleNode"},
    "sfnet_ros.launch_support": {"PROFILE_FILE_NAME", "node_launch"},
}


def _call_name(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _launch_config_name(node: ast.AST) -> str | None:
    """'x' for ``LaunchConfiguration("x")`` or ``argument("x")`` (the launch file's helper that
    performs it), else None."""
    if (isinstance(node, ast.Call) and _call_name(node) in ("LaunchConfiguration", "argument")
            and isinstance(node.args[0], ast.Constant)):
        return ast.literal_eval(node.args[0])
    return None


class LaunchFile:
    def __init__(self, path: Path) -> None:
        tree = ast.parse(path.read_text(), filename=str(path))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        self.calls = calls
        self.arguments: dict[str, ast.Call] = {
            ast.literal_eval(c.args[0]): c for c in calls if _call_name(c) == "DeclareLaunchArgument"}
        nodes = [c for c in calls if _call_name(c) in ("Node", "LifecycleNode")]
        assert len(nodes) == 1, "the launch file should start exactly one node"
        self.node = {kw.arg: kw.value for kw in nodes[0].keywords}
        self.used = {name for c in calls if (name := _launch_config_name(c)) is not None}
        self.tree = tree

    def literal(self, key: str) -> object:
        return ast.literal_eval(self.node[key])

    def node_launch(self) -> tuple[list[ast.AST], dict[str, ast.AST]]:
        """The positional and keyword arguments of the launch file's ``node_launch(...)`` call."""
        call = self.call("node_launch")
        return call.args, {kw.arg: kw.value for kw in call.keywords}

    def call(self, name: str) -> ast.Call:
        (found,) = [c for c in self.calls if _call_name(c) == name]
        return found

    def assignment(self, name: str) -> ast.AST:
        (found,) = [n.value for n in ast.walk(self.tree) if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]
        return found

    def default(self, argument: str) -> ast.AST:
        return next(kw.value for kw in self.arguments[argument].keywords if kw.arg == "default_value")

    def share_path(self, name: str) -> list[object]:
        """``[<share dir of>, "config", ...]`` for ``name = os.path.join(share, "config", ...)``."""
        join = self.assignment(name)
        assert _call_name(join) == "join"
        share, *parts = join.args
        share_call = self.assignment(share.id) if isinstance(share, ast.Name) else share
        assert _call_name(share_call) == "get_package_share_directory"
        return [ast.literal_eval(share_call.args[0]), *(ast.unparse(p) if isinstance(p, ast.Name)
                                                        else ast.literal_eval(p) for p in parts)]


@pytest.fixture(scope="module")
def launch() -> LaunchFile:
    return LaunchFile(LAUNCH_FILE)


def test_launch_starts_the_node_executable(launch):
    assert launch.literal("package") == "sfnet_ros"
    assert launch.literal("executable") == "sfnet_node"
    assert launch.literal("name") == NODE_NAME
    assert ast.unparse(launch.node["namespace"]) == "node.namespace"
    assert _launch_config_name(launch.node_launch()[1]["namespace"]) == "namespace"
    # argument(name) is LaunchConfiguration(name) performed in the OpaqueFunction's context.
    helper = next(n for n in ast.walk(launch.tree) if isinstance(n, ast.FunctionDef) and n.name == "argument")
    assert ast.unparse(helper.body[0]) == "return LaunchConfiguration(name).perform(context)"


def test_launch_arguments_are_declared_and_used(launch):
    assert set(launch.arguments) == LAUNCH_ARGUMENTS
    assert launch.used == set(launch.arguments), "every argument used, every use declared"
    for name, call in launch.arguments.items():
        keywords = {kw.arg for kw in call.keywords}
        assert {"default_value", "description"} <= keywords, name
    defaults = {name: ast.unparse(launch.default(name)) for name in LAUNCH_ARGUMENTS}
    assert defaults["cameras"] == defaults["image_topics"] == "''"  # default: one camera
    assert defaults["image_topic"] == "'/camera/image_raw'" and defaults["fastdds_profile"] == "'auto'"


def test_launch_imports_only_documented_apis():
    tree = ast.parse(LAUNCH_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(alias.name in LAUNCH_IMPORTS for alias in node.names), ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module in LAUNCH_IMPORTS, ast.unparse(node)
            assert {alias.name for alias in node.names} <= LAUNCH_IMPORTS[node.module], ast.unparse(node)
    # The argument logic module really is launch-free (it is imported by the tests and the harness).
    support = ast.parse((REPO_ROOT / "sfnet_ros" / "launch_support.py").read_text())
    imported = {a.name for n in ast.walk(support) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(support) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "os", "re", "sys", "collections.abc", "dataclasses", "typing",
                        "sfnet_ros.transport_profile"}
    # ... and so is the profile rule it shares with the node and the tools (ament_index_python only
    # inside a function, guarded: the package's share directory is one place the profile may be).
    rule = ast.parse((REPO_ROOT / "sfnet_ros" / "transport_profile.py").read_text())
    top = {a.name for n in rule.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in rule.body if isinstance(n, ast.ImportFrom)}
    assert top <= {"__future__", "os", "collections.abc", "dataclasses", "pathlib", "sfnet_ros.ros_distro"}
    # ... and the distribution lookup it uses reads metadata, never rclpy itself
    distro = ast.parse((REPO_ROOT / "sfnet_ros" / "ros_distro.py").read_text())
    top = {a.name for n in distro.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in distro.body if isinstance(n, ast.ImportFrom)}
    assert top <= {"__future__", "importlib.metadata", "os", "collections.abc"}


def test_launch_parameters_match_the_node(launch):
    # The params file first, then overrides of declared parameters from launch arguments, then
    # the cameras parameter when several cameras are named (node_launch, by camera_plan).
    assert ast.unparse(launch.node["parameters"]) == "[node.params_file, node.parameters]"
    (overrides,), keywords = launch.node_launch()
    assert _launch_config_name(keywords["params_file"]) == "params_file"
    assert isinstance(overrides, ast.Dict)
    keys = [ast.literal_eval(k) for k in overrides.keys]
    assert set(keys) <= {p.name for p in PARAMETERS}
    assert {k: _launch_config_name(v) for k, v in zip(keys, overrides.values)} == {
        "checkpoint": "checkpoint", "device": "device"}
    several = node_launch({"checkpoint": "/m.pt"}, cameras="front,left", image_topics="/a/image,/b/image")
    assert several.parameters == {"checkpoint": "/m.pt", "cameras": ["front", "left"]}
    assert set(several.parameters) <= {p.name for p in PARAMETERS}
    # The default params file is the package's config/sfnet.yaml.
    default_value = launch.default("params_file")
    assert isinstance(default_value, ast.Name)
    assert launch.share_path(default_value.id) == ["sfnet_ros", "config", "sfnet.yaml"]


def test_launch_remaps_what_camera_plan_says(launch):
    assert ast.unparse(launch.node["remappings"]) == "node.remappings"
    _, keywords = launch.node_launch()
    assert {name: _launch_config_name(keywords[name]) for name in ("cameras", "image_topics", "image_topic")} == {
        "cameras": "cameras", "image_topics": "image_topics", "image_topic": "image_topic"}
    plan = camera_plan("front,left", "/a/image_raw,/b/image_raw", "/camera/image_raw")
    assert node_launch(cameras="front,left", image_topics="/a/image_raw,/b/image_raw",
                       image_topic="/camera/image_raw").remappings == plan.remappings


def test_launch_sets_the_fastdds_profile_for_the_node(launch):
    _, keywords = launch.node_launch()
    assert _launch_config_name(keywords["fastdds_profile"]) == "fastdds_profile"
    assert ast.unparse(keywords["environ"]) == "environment"
    assert ast.unparse(launch.assignment("environment")) == "getattr(context, 'environment', os.environ)"
    assert ast.unparse(keywords["ros_distro"]) == "os.environ.get('ROS_DISTRO')"
    # The default profile is the package's config/fastdds_large_frames.xml, handed to the function.
    assert ast.unparse(keywords["default_profile"]) == "default_profile"
    assert launch.share_path("default_profile") == ["sfnet_ros", "config", "PROFILE_FILE_NAME"]
    assert (REPO_ROOT / "config" / PROFILE_FILE_NAME).is_file()
    opaque = launch.call("OpaqueFunction")
    assert {kw.arg: ast.unparse(kw.value) for kw in opaque.keywords} == {
        "function": "_launch_node", "kwargs": "{'default_profile': default_profile}"}
    # Each variable is set by SetEnvironmentVariable in the node's scoped group, before the node.
    group = launch.call("GroupAction")
    assert {kw.arg: ast.unparse(kw.value) for kw in group.keywords}["scoped"] == "True"
    actions = next(kw.value for kw in group.keywords if kw.arg == "actions")
    first, node = actions.elts
    assert isinstance(first, ast.Starred) and _call_name(node) == "LifecycleNode"
    setter = first.value.elt
    assert _call_name(setter) == "SetEnvironmentVariable"
    assert ast.unparse(first.value.generators[0].iter) == "node.environment.items()"
    # ... which are fastdds_profile_environment's, through node_launch.
    environ = {"ROS_DISTRO": "humble"}
    assert node_launch(fastdds_profile="auto", environ=environ, default_profile=FASTDDS_PROFILE).environment == \
        fastdds_profile_environment("auto", environ, FASTDDS_PROFILE, "humble")
    assert node_launch(fastdds_profile="none", environ={}, default_profile=FASTDDS_PROFILE).environment == {
        SWITCH_VARIABLE: "off"}
    assert node_launch().environment == {}, "no profile rule: a start from a shell"


def test_harness_command_is_what_the_launch_file_runs(tmp_path):
    # the launch file's defaults: one camera on /camera/image_raw (an .onnx: for a .pt without a
    # backend the harness adds backend torch, see node_harness.py)
    cmd = NodeProcess({}, tmp_path, parameters={"checkpoint": "/m.onnx", "device": "cpu"},
                      remaps=dict(camera_plan("", "", "/camera/image_raw").remappings), namespace="/veh").command
    assert cmd == node_launch({"checkpoint": "/m.onnx", "device": "cpu"}, params_file=DEFAULT_PARAMS_FILE,
                              image_topic="/camera/image_raw", namespace="/veh").argv()
    assert cmd[1:4] == ["-m", "sfnet_ros.node", "--ros-args"]
    assert cmd[4:6] == ["--params-file", str(DEFAULT_PARAMS_FILE)]
    assert cmd[6:] == ["-p", 'checkpoint:="/m.onnx"', "-p", 'device:="cpu"', "-r", "image:=/camera/image_raw",
                       "-r", "camera_info:=/camera/camera_info", "-r", "__ns:=/veh"]


def test_harness_environment_is_what_the_launch_file_sets(tmp_path, monkeypatch):
    """NodeProcess gives the node the profile variable exactly as fastdds_profile:=auto does."""
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    plain = {"PATH": "/usr/bin", "ROS_DOMAIN_ID": "7", "ROS_DISTRO": "kilted"}
    node = NodeProcess(plain, tmp_path)
    assert node.env == {**plain, "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}
    assert FASTDDS_PROFILE == REPO_ROOT / "config" / PROFILE_FILE_NAME
    humble = NodeProcess({**plain, "ROS_DISTRO": "humble"}, tmp_path)
    assert humble.env["FASTRTPS_DEFAULT_PROFILES_FILE"] == humble.env["FASTDDS_DEFAULT_PROFILES_FILE"]
    exported = {**plain, "FASTDDS_DEFAULT_PROFILES_FILE": "/stack/profile.xml"}  # the stack's own wins
    assert NodeProcess(exported, tmp_path).env == exported
    assert plain == {"PATH": "/usr/bin", "ROS_DOMAIN_ID": "7", "ROS_DISTRO": "kilted"}, "the caller's mapping is kept"


def test_setup_installs_launch_and_config():
    setup_py = (REPO_ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in setup_py and 'glob("config/*.yaml")' in setup_py
    assert "sfnet_node = sfnet_ros.node.main:main" in setup_py


def test_setup_installs_the_fastdds_profile():
    """The launch file's default profile is share/sfnet_ros/config/fastdds_large_frames.xml."""
    assert 'glob("config/*.xml")' in (REPO_ROOT / "setup.py").read_text(), (
        'setup.py data_files: add ("share/" + package_name + "/config", glob("config/*.xml"))')


# -- the launch arguments' logic (sfnet_ros.launch_support) -----------------------------------------


def test_one_camera_by_default():
    plan = camera_plan("", "", "/camera/image_raw")
    assert plan == CameraPlan({}, [("image", "/camera/image_raw"), ("camera_info", "/camera/camera_info")])


def test_several_cameras_set_the_parameter_and_remap_each_input():
    plan = camera_plan("front,left,rear", "/cam/front/image_raw,/cam/left/image_raw,/cam/rear/image_raw",
                       "/camera/image_raw")
    assert plan.parameters == {"cameras": ["front", "left", "rear"]}
    assert plan.remappings == [
        ("front/image", "/cam/front/image_raw"), ("front/camera_info", "/cam/front/camera_info"),
        ("left/image", "/cam/left/image_raw"), ("left/camera_info", "/cam/left/camera_info"),
        ("rear/image", "/cam/rear/image_raw"), ("rear/camera_info", "/cam/rear/camera_info"),
    ]
    # Spaces and a YAML-style list are accepted; names stay in order.
    listed = camera_plan("[front, rear/left]", " /a/image , b/image ", "")
    assert listed.parameters == {"cameras": ["front", "rear/left"]}
    assert spec("cameras").kind == "string_array"  # a parameter the node declares, of that type


@pytest.mark.parametrize("topic, info", [
    ("/cam/front/image_raw", "/cam/front/camera_info"), ("/image", "/camera_info"), ("image_raw", "camera_info"),
    ("front/image_rect_color", "front/camera_info"), ("~/image", "~/camera_info"),
    ("/a/b/c/image", "/a/b/c/camera_info")])
def test_camera_info_is_the_sibling_of_the_image_topic(topic, info):
    assert camera_info_topic(topic) == info


@pytest.mark.parametrize("cameras, topics, image_topic, message", [
    ("front,left,rear", "/a/image,/b/image", "", r"cameras has 3 name\(s\) \(front, left, rear\) but image_topics "
                                                 r"has 2 topic\(s\) \(/a/image, /b/image\)"),
    ("front,left", "", "", r"cameras has 2 name\(s\) .* image_topics has 0 topic\(s\) \(none\)"),
    ("", "/a/image,/b/image", "/camera/image_raw", "image_topics:='/a/image,/b/image' is set but cameras is empty"),
    ("front,front", "/a/image,/b/image", "", "cameras: duplicate camera name"),
    ("front,,rear", "/a/image,/b/image", "", "cameras:='front,,rear' has an empty item"),
    ("front,", "/a/image", "", "has an empty item"),
    ("1st", "/a/image", "", "cameras: '1st' is not a valid relative topic name"),
    ("/abs", "/a/image", "", "cameras: '/abs' is not a valid relative topic name"),
    ("front", "/a/image raw", "", "image_topics: '/a/image raw' is not a valid topic name"),
    ("", "", "", "image_topic: '' is not a valid topic name"),
])
def test_launch_argument_errors_are_clear(cameras, topics, image_topic, message):
    with pytest.raises(LaunchArgumentError, match=message):
        camera_plan(cameras, topics, image_topic)


def test_split_list():
    assert split_list("", "x") == [] and split_list("[]", "x") == [] and split_list("  ", "x") == []
    assert split_list("a, b ,c", "x") == ["a", "b", "c"]
    assert split_list("['a', \"b\"]", "x") == ["a", "b"]


def test_fastdds_profile_environment(tmp_path, monkeypatch):
    profile = tmp_path / "large.xml"
    profile.write_text("<dds/>")
    mine = tmp_path / "mine.xml"
    mine.write_text("<dds/>")
    # auto: our profile, under the variable(s) the distribution's Fast DDS reads
    assert fastdds_profile_environment("auto", {}, profile, "kilted") == {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}
    # no ROS_DISTRO (the PyPI wheels): the installed rclpy's distribution decides (sfnet_ros.ros_distro)
    assert fastdds_profile_environment("auto", {}, profile, None) == fastdds_profile_environment(
        "auto", {}, profile, ros_distribution())
    for distro in ("humble", "jazzy", "Humble"):
        assert fastdds_profile_environment("auto", {}, profile, distro) == {
            "FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "FASTRTPS_DEFAULT_PROFILES_FILE": str(profile)}
    # auto keeps a profile the whole stack exports (either variable)
    for name in PROFILE_VARIABLES:
        assert fastdds_profile_environment("auto", {name: "/stack.xml"}, profile, "humble") == {}
    assert fastdds_profile_environment("auto", {"FASTDDS_DEFAULT_PROFILES_FILE": ""}, profile, "kilted") != {}
    # none / empty: the node's own profile application switched off too (it would apply ours)
    assert fastdds_profile_environment("none", {}, profile, "humble") == {SWITCH_VARIABLE: "off"}
    assert fastdds_profile_environment("", {}, profile, "humble") == {SWITCH_VARIABLE: "off"}
    # auto follows the same rule as every process of the package (sfnet_ros.transport_profile): the
    # switch in the environment, another RMW, a Fast DDS default file in the working directory
    assert fastdds_profile_environment("auto", {SWITCH_VARIABLE: "off"}, profile, "kilted") == {SWITCH_VARIABLE: "off"}
    assert fastdds_profile_environment("auto", {SWITCH_VARIABLE: str(mine)}, profile, "kilted") == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(mine)}
    assert fastdds_profile_environment("auto", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, profile, "kilted") == {}
    assert fastdds_profile_environment("auto", {"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}, profile,
                                       "kilted") == {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}
    assert fastdds_profile_environment("auto", {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, profile, "kilted") == {}
    # a path wins over an exported one, made absolute
    monkeypatch.chdir(tmp_path)
    assert fastdds_profile_environment("mine.xml", {"FASTDDS_DEFAULT_PROFILES_FILE": "/stack.xml"}, profile,
                                       "kilted") == {"FASTDDS_DEFAULT_PROFILES_FILE": str(mine)}
    with pytest.raises(LaunchArgumentError, match=r"fastdds_profile: Fast DDS profile file not found: .*nope\.xml"):
        fastdds_profile_environment("nope.xml", {}, profile, "kilted")
    with pytest.raises(LaunchArgumentError, match="the package's default profile: .* not found"):
        fastdds_profile_environment("auto", {}, tmp_path / "missing.xml", "kilted")
    (tmp_path / "DEFAULT_FASTDDS_PROFILES.xml").write_text("<dds/>")  # Fast DDS loads it from the cwd
    assert fastdds_profile_environment("auto", {}, profile, "kilted") == {}


# -- docs/launch.md: every command is one the launch file accepts -----------------------------------


def _doc_commands(page: Path) -> list[list[str]]:
    text = page.read_text()
    blocks = [body for language, body in fenced_blocks(text) if language in ("bash", "sh", "shell")]
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(shlex.split(command))
    return commands


def test_launch_doc_commands_are_accepted_by_the_launch_file(launch):
    """docs/launch.md's launch commands, through the launch file's own logic: every argument is a
    declared one and camera_plan / fastdds_profile_environment accept the values (launch cannot be
    installed here; the real `ros2 launch` runs them in review)."""
    commands = _doc_commands(LAUNCH_DOC)
    launches = [c for c in commands if c[:3] == ["ros2", "launch", "sfnet_ros"]]
    assert launches and len(launches) == len(commands), "only ros2 launch commands on this page"
    four_cameras = None
    for words in launches:
        assert words[3] == "sfnet.launch.py"
        arguments = dict(word.split(":=", 1) for word in words[4:])
        assert set(arguments) <= LAUNCH_ARGUMENTS, set(arguments) - LAUNCH_ARGUMENTS
        plan = camera_plan(arguments.get("cameras", ""), arguments.get("image_topics", ""),
                           arguments.get("image_topic", "/camera/image_raw"))
        if len(plan.parameters.get("cameras", [])) == 4:
            four_cameras = plan
        if arguments.get("fastdds_profile", "auto") not in ("auto", "none"):
            assert arguments["fastdds_profile"].endswith(".xml")
    assert four_cameras is not None, "docs/launch.md shows a complete four-camera example"
    # The page's remapping table is what camera_plan computes for the example.
    text = LAUNCH_DOC.read_text()
    for source, target in four_cameras.remappings:
        assert f"| `{source}` | `{target}` |" in text, (source, target)


# -- config/sfnet.yaml -----------------------------------------------------------------------------


def test_params_file_lists_every_parameter_with_its_default():
    data = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
    assert list(data) == ["/**"], "the file must apply under any node name and namespace"
    values = data["/**"]["ros__parameters"]
    assert list(values) == [p.name for p in PARAMETERS], "same parameters, same order as params.PARAMETERS"
    for p in PARAMETERS:
        assert values[p.name] == p.default, p.name
        assert type(values[p.name]) is type(p.default), p.name


def test_params_file_comments_every_parameter():
    lines = DEFAULT_PARAMS_FILE.read_text().splitlines()
    for p in PARAMETERS:
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{p.name}:"))
        assert lines[index - 1].strip().startswith("#"), f"{p.name} has no comment above it"


def test_readme_parameter_table_is_current():
    assert parameters_markdown() in NODE_DOC.read_text(), (
        "docs/node.md, node parameters: paste the output of sfnet_ros.node.params.parameters_markdown()")


# -- the node's declarations (a real rclpy node, no spinning, no model) --------------------------


def test_node_declares_exactly_the_parameter_table(ros_domain):
    import rclpy
    from rcl_interfaces.msg import ParameterType
    from rclpy.context import Context

    from sfnet_ros.node import SegmentationNode  # lazy: rclpy's node machinery, for this test only

    context = Context()
    rclpy.init(args=["sfnet_node", "--ros-args", "--params-file", str(DEFAULT_PARAMS_FILE)], context=context)
    try:
        # Parameters every rclpy node declares by itself (use_sim_time, ...) are not ours.
        plain = rclpy.create_node("plain_node", context=context)
        builtin = set(plain.get_parameters_by_prefix(""))
        plain.destroy_node()
        node = SegmentationNode(context=context)
        try:
            declared = set(node.get_parameters_by_prefix("")) - builtin
            assert declared == {p.name for p in PARAMETERS}
            for p in PARAMETERS:
                (descriptor,) = node.describe_parameters([p.name])
                assert descriptor.description == p.description
                assert descriptor.read_only == p.read_only
                if p.kind == "integer":
                    assert descriptor.type == ParameterType.PARAMETER_INTEGER
                    bounds = descriptor.integer_range[0]
                    assert (bounds.from_value, bounds.to_value) == p.value_range
                if p.kind == "double" and p.value_range:
                    r = descriptor.floating_point_range[0]
                    assert (r.from_value, r.to_value) == p.value_range
                if p.kind.endswith("_array"):
                    assert descriptor.dynamic_typing
            # The params file loads cleanly: every value is the default, nothing was rejected.
            values = {p.name: node.get_parameter(p.name).value for p in PARAMETERS}
            assert node._param_errors == {}
            config_values = {k: v for k, v in values.items()}
            config_values["checkpoint"] = str(DEFAULT_PARAMS_FILE)  # any existing file
            config = config_from_values(config_values)
            assert config.cameras == () and config.input_size is None and config.mask_classes == ()
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()


# -- validation ------------------------------------------------------------------------------------


def _values(tmp_path, **overrides):
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"x")
    return {"checkpoint": str(checkpoint), **overrides}


def test_valid_values_become_a_config(tmp_path):
    config = config_from_values(_values(tmp_path, input_size=[512, 1024], cameras=["front", "rear/left"],
                                        mask_classes=["road", "traffic light"], device="CUDA:1"))
    assert config.input_size == (512, 1024)
    assert config.camera_names == ("front", "rear/left")
    assert config.device == "cuda:1"
    assert config_from_values(_values(tmp_path, cameras=None)).camera_names == ("",)


@pytest.mark.parametrize("name, value, message", [
    ("checkpoint", "", "parameter 'checkpoint': not set"),
    ("checkpoint", "/nonexistent/m.pt", "parameter 'checkpoint': file not found: /nonexistent/m.pt"),
    ("device", "gpu", "parameter 'device': expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("precision", "fp8", "parameter 'precision': 'fp8' is not one of: auto, fp32, fp16, bf16"),
    ("input_size", [512], "parameter 'input_size': expected [H, W]"),
    ("input_size", [512, 0], "parameter 'input_size': expected [H, W]"),
    ("input_size", ["a", "b"], "parameter 'input_size': expected a list of two integers"),
    ("cameras", ["front", "front"], "parameter 'cameras': duplicate camera names"),
    ("cameras", ["1st"], "parameter 'cameras': '1st' is not a valid relative topic name"),
    ("cameras", ["/abs"], "parameter 'cameras': '/abs' is not a valid relative topic name"),
    ("transport", "theora", "parameter 'transport': 'theora' is not one of: raw, compressed"),
    ("mask_classes", ["traffic light", "traffic_light"], "parameter 'mask_classes': names map to duplicate"),
    ("qos_reliability", "best-effort", "parameter 'qos_reliability': 'best-effort' is not one of"),
    ("qos_depth", 0, "parameter 'qos_depth': 0 is outside the range 1..100"),
    ("qos_depth", True, "parameter 'qos_depth': expected integer"),
    ("overlay_alpha", 1.5, "parameter 'overlay_alpha': 1.5 is outside the range 0..1"),
    ("diagnostics_period", 0.0, "parameter 'diagnostics_period': 0.0 is outside the range 0.1..60"),
    ("publish_color", "yes", "parameter 'publish_color': expected bool"),
])
def test_invalid_values_name_the_parameter(tmp_path, name, value, message):
    with pytest.raises(ConfigError) as info:
        config_from_values(_values(tmp_path, **{name: value}))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("overrides, message", [
    ({"resize": "letterbox"}, "parameter 'resize': letterbox needs input_size"),
    ({"resize": "fit"}, "parameter 'resize': 'fit' is not one of: stretch, letterbox, crop"),
    ({"output_resolution": "network"}, "parameter 'output_resolution': network needs input_size"),
    ({"output_resolution": "half", "input_size": [64, 64]},
     "parameter 'output_resolution': 'half' is not one of: input, network"),
    ({"backend": "tensorrt"}, "parameter 'backend': 'tensorrt' is not one of: auto, torch, onnxruntime"),
    ({"backend": "onnxruntime", "publish_flow": True}, "parameter 'publish_flow': needs the torch backend"),
    ({"precision": "int8"}, "parameter 'precision': int8 needs an int8 .onnx model"),
])
def test_invalid_combinations_name_the_parameter(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        config_from_values(_values(tmp_path, **overrides))
    assert str(info.value).startswith(message)


def test_onnx_checkpoint_with_the_torch_backend_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(ConfigError, match="parameter 'backend': torch cannot run the exported model m.onnx"):
        config_from_values({"checkpoint": str(model), "backend": "torch"})
    config = config_from_values({"checkpoint": str(model), "input_size": [48, 64], "resize": "crop",
                                 "output_resolution": "network"})
    assert (config.backend, config.resize, config.output_resolution) == ("auto", "crop", "network")


def test_unknown_parameter_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter"):
        config_from_values(_values(tmp_path, colour=True))


@pytest.mark.parametrize("name, token", [
    ("traffic light", "traffic_light"), ("Road", "road"), ("t-shirt / top", "t_shirt_top"),
    ("3d object", "c3d_object"), ("???", "unnamed")])
def test_topic_token(name, token):
    assert topic_token(name) == token


def test_spec_lookup():
    assert spec("autostart").read_only
    assert not spec("checkpoint").read_only
    with pytest.raises(KeyError):
        spec("nope")


def test_launch_description_builds_on_a_ros_install():
    """Where launch_ros is installed (colcon test on a ROS machine), build the real description."""
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not installable from PyPI here; "
                        "the ast-based tests above cover the launch file")
    import importlib.util

    from launch import LaunchDescription

    module_spec = importlib.util.spec_from_file_location("sfnet_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        description = module.generate_launch_description()
    except Exception as exc:  # the package share directory exists only after `colcon build`
        if "PackageNotFoundError" in type(exc).__name__:
            pytest.skip(f"sfnet_ros is not installed in an ament index: {exc}")
        raise
    assert isinstance(description, LaunchDescription)
    names = {entity.name for entity in description.entities if hasattr(entity, "default_value")}
    assert names == LAUNCH_ARGUMENTS
    # The OpaqueFunction's body on a real LaunchContext: mismatched lists end the launch with the
    # LaunchArgumentError's message; matching ones give one scoped group holding the node.
    from launch.actions import GroupAction

    from launch import LaunchContext

    context = LaunchContext()
    context.launch_configurations.update({
        "cameras": "front,left", "image_topics": "/cam/front/image_raw", "image_topic": "/camera/image_raw",
        "fastdds_profile": "none"})
    with pytest.raises(LaunchArgumentError, match="cameras has 2 name"):
        module._launch_node(context, default_profile=str(FASTDDS_PROFILE))
    context.launch_configurations["image_topics"] = "/cam/front/image_raw,/cam/left/image_raw"
    (group,) = module._launch_node(context, default_profile=str(FASTDDS_PROFILE))
    assert isinstance(group, GroupAction)


def test_launch_doc_command_line_is_the_harness_command():
    """docs/launch.md, "Without launch": the same node command line the tests run
    (launch_support.node_launch, `python -m sfnet_ros.node` for `ros2 run sfnet_ros sfnet_node`) for
    the four-camera example, with no profile variable: the node applies the profile itself
    (`ros2 run` is not installable here)."""
    text = LAUNCH_DOC.read_text()
    section = text[text.index("## Without launch"):]
    block = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    words = [""] + shlex.split(block.replace("\\\n", " "))
    assert not any(word.startswith(PROFILE_VARIABLES) for word in words), "the node applies the profile itself"
    assert words[1:4] == ["ros2", "run", "sfnet_ros"] and words[4] == "sfnet_node" and words[5] == "--ros-args"

    def options(args: list[str]) -> set[tuple[str, object]]:
        pairs = set()
        for flag, item in zip(args[::2], args[1::2]):
            if flag == "-p":
                name, _, text_value = item.partition(":=")
                pairs.add((f"-p {name}", repr(yaml.safe_load(text_value))))
            else:
                pairs.add((flag, item.replace(str(REPO_ROOT / "config"), "<share>/sfnet_ros/config")))
        return pairs

    four = next(c for c in _doc_commands(LAUNCH_DOC) if "cameras:=front,left,right,rear" in c)
    arguments = dict(word.split(":=", 1) for word in four[4:])
    harness = node_launch({"checkpoint": arguments["checkpoint"], "device": "auto"}, params_file=DEFAULT_PARAMS_FILE,
                          cameras=arguments["cameras"], image_topics=arguments["image_topics"],
                          namespace=arguments["namespace"]).argv()
    assert options(words[6:]) == options(harness[4:])


@pytest.mark.parametrize("ros_args", [["-r", "__ns:=/bench_openvino-int8"], ["-r", "nonsense"]])
def test_malformed_ros_arguments_end_the_node_in_one_line(ros_args: list[str], tmp_path: Path) -> None:
    """A namespace with a dash (met as the bench's backend name) or a broken remap: rcl refuses
    it at init; the node says so in one line of its own and exits 2, no traceback."""
    run = subprocess.run([sys.executable, "-m", "sfnet_ros.node", "--ros-args", *ros_args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    ours = [line for line in run.stderr.splitlines() if line.startswith("sfnet_node: ")]
    assert len(ours) == 1 and ours[0].startswith("sfnet_node: invalid ROS arguments: "), run.stderr
