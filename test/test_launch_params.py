"""The launch file, config/sfnet.yaml, the README table and the node's declared parameters agree.

``launch``/``launch_ros`` cannot be installed here, so the launch file is read with ``ast``
(never imported); the tests start the node with the command line it amounts to
(``node_harness.node_command``), and this module checks the two stay the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from node_harness import DEFAULT_PARAMS_FILE, NODE_NAME, REPO_ROOT, node_command
from sfnet_core.errors import ConfigError
from sfnet_ros.node.params import PARAMETERS, config_from_values, parameters_markdown, spec, topic_token

LAUNCH_FILE = REPO_ROOT / "launch" / "sfnet.launch.py"
NODE_DOC = REPO_ROOT / "docs" / "node.md"


# -- the launch file, read as a syntax tree --------------------------------------------------------


def _call_name(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _launch_config_name(node: ast.AST) -> str | None:
    """'x' for ``LaunchConfiguration("x")``, else None."""
    if isinstance(node, ast.Call) and _call_name(node) == "LaunchConfiguration":
        return ast.literal_eval(node.args[0])
    return None


class LaunchFile:
    def __init__(self, path: Path) -> None:
        tree = ast.parse(path.read_text(), filename=str(path))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        self.arguments: dict[str, ast.Call] = {
            ast.literal_eval(c.args[0]): c for c in calls if _call_name(c) == "DeclareLaunchArgument"}
        nodes = [c for c in calls if _call_name(c) in ("Node", "LifecycleNode")]
        assert len(nodes) == 1, "the launch file should start exactly one node"
        self.node = {kw.arg: kw.value for kw in nodes[0].keywords}
        self.used = {name for c in calls if (name := _launch_config_name(c)) is not None}
        self.tree = tree

    def literal(self, key: str) -> object:
        return ast.literal_eval(self.node[key])


@pytest.fixture(scope="module")
def launch() -> LaunchFile:
    return LaunchFile(LAUNCH_FILE)


def test_launch_starts_the_node_executable(launch):
    assert launch.literal("package") == "sfnet_ros"
    assert launch.literal("executable") == "sfnet_node"
    assert launch.literal("name") == NODE_NAME
    assert _launch_config_name(launch.node["namespace"]) == "namespace"


def test_launch_arguments_are_declared_and_used(launch):
    assert set(launch.arguments) == {"checkpoint", "image_topic", "params_file", "namespace", "device"}
    assert launch.used == set(launch.arguments), "every argument used, every use declared"
    for name, call in launch.arguments.items():
        keywords = {kw.arg for kw in call.keywords}
        assert {"default_value", "description"} <= keywords, name


def test_launch_parameters_match_the_node(launch):
    parameters = launch.node["parameters"]
    assert isinstance(parameters, ast.List)
    # The params file first, then overrides of declared parameters from launch arguments.
    assert _launch_config_name(parameters.elts[0]) == "params_file"
    overrides = parameters.elts[1]
    assert isinstance(overrides, ast.Dict)
    keys = [ast.literal_eval(k) for k in overrides.keys]
    assert set(keys) <= {p.name for p in PARAMETERS}
    assert {k: _launch_config_name(v) for k, v in zip(keys, overrides.values)} == {
        "checkpoint": "checkpoint", "device": "device"}
    # The default params file is the package's config/sfnet.yaml.
    default = launch.arguments["params_file"]
    default_value = next(kw.value for kw in default.keywords if kw.arg == "default_value")
    assert isinstance(default_value, ast.Name)
    (assignment,) = [n for n in ast.walk(launch.tree) if isinstance(n, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == default_value.id for t in n.targets)]
    join = assignment.value  # os.path.join(get_package_share_directory("sfnet_ros"), "config", "sfnet.yaml")
    assert _call_name(join) == "join"
    share, *parts = join.args
    assert _call_name(share) == "get_package_share_directory" and ast.literal_eval(share.args[0]) == "sfnet_ros"
    assert [ast.literal_eval(part) for part in parts] == ["config", "sfnet.yaml"]


def test_launch_remaps_the_image_input(launch):
    remaps = launch.node["remappings"]
    assert isinstance(remaps, ast.List) and len(remaps.elts) == 1
    source, target = remaps.elts[0].elts
    assert ast.literal_eval(source) == "image"
    assert _launch_config_name(target) == "image_topic"


def test_harness_command_is_what_the_launch_file_runs():
    cmd = node_command(parameters={"checkpoint": "/m.pt", "device": "cpu"},
                       remaps={"image": "/camera/image_raw"}, namespace="/veh")
    assert cmd[1:4] == ["-m", "sfnet_ros.node", "--ros-args"]
    assert cmd[4:6] == ["--params-file", str(DEFAULT_PARAMS_FILE)]
    assert cmd[6:] == ["-p", 'checkpoint:="/m.pt"', "-p", 'device:="cpu"', "-r", "image:=/camera/image_raw",
                       "-r", "__ns:=/veh"]


def test_setup_installs_launch_and_config():
    setup_py = (REPO_ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in setup_py and 'glob("config/*.yaml")' in setup_py
    assert "sfnet_node = sfnet_ros.node.segmentation_node:main" in setup_py


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

    from sfnet_ros.node import SegmentationNode

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
                    assert (descriptor.integer_range[0].from_value, descriptor.integer_range[0].to_value) == p.value_range
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
    assert names == {"checkpoint", "image_topic", "params_file", "namespace", "device"}
