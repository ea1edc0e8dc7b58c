"""The layering of docs/architecture.md, checked on the source: who may import whom, and no cycles.

Imports inside functions count too (a cycle or a back arrow hidden in a function is still one), so
the check reads every ``import`` statement with ``ast`` instead of importing the modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sfnet_core", "sfnet_ros")
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces",
               "builtin_interfaces", "vision_msgs", "launch", "launch_ros", "ament_index_python")

# The packages' order, lowest first. A unit (a subpackage or a top-level module) may import itself
# and the units of lower layers only: never a unit above it, nor one beside it in its own layer
# (siblings stay independent: data / models, node / tools). Every module must fall in a unit, so a
# new top-level module or package is placed here on purpose.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sfnet_core", "sfnet_core.errors"),  # the package's facade resolves its names lazily: no imports
    ("sfnet_core.device_spec", "sfnet_core.threads"),  # torch-free: the device syntax; the threads setting
    ("sfnet_core.io_utils", "sfnet_core.yaml_config", "sfnet_core.devices", "sfnet_core.viz"),
    ("sfnet_core.data", "sfnet_core.models"),
    ("sfnet_core.checkpoint",),
    ("sfnet_core.onnx",),  # export, metadata, int8: below inference, which runs what it writes
    ("sfnet_core.inference",),
    ("sfnet_core.evaluation",),  # evaluates through inference's loader and predict_logits
    ("sfnet_core.training",),  # validates through evaluation
    ("sfnet_core.cli",),
    ("sfnet_ros.ros_distro",),  # which distribution, from metadata: below everything that differs by it
    ("sfnet_ros", "sfnet_ros.conversions", "sfnet_ros.transport_profile"),
    ("sfnet_ros.launch_support",),
    ("sfnet_ros.node", "sfnet_ros.tools"),  # the tools never import the node, nor it them
)
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}

# Third-party rules the layers cannot say: (importer prefix, forbidden prefixes).
FORBIDDEN = [
    ("sfnet_core", ROS_MODULES),  # plain PyTorch: never ROS
    ("sfnet_ros.conversions", ("rclpy",)),  # message <-> numpy only, shared by the node and tools
    # imported by the launch file: must load without ROS, launch or torch
    ("sfnet_ros.launch_support", (*ROS_MODULES, "sfnet_core", "torch")),
    ("sfnet_ros.ros_distro", (*ROS_MODULES, "sfnet_core", "torch")),  # tells the distro before rclpy loads
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports (absolute names; relative imports
    resolved), at module level and inside functions and classes alike."""
    tree = ast.parse(source, filename=module)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # `from pkg import submodule` imports the submodule
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports and every third-party module."""
    paths = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = _imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in paths and m != name} | {
            m for m in imported if not m.startswith(PACKAGES)}
    return graph


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _unit(module: str) -> str | None:
    """The unit of LAYERS that ``module`` belongs to (the longest that holds it), None if none."""
    holding = [u for u in RANK if module == u or (u not in PACKAGES and module.startswith(u + "."))]
    return max(holding, key=len) if holding else None


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a project module that does not point down (see LAYERS)."""
    found = []
    for importer, targets in sorted(graph.items()):
        low = _unit(importer)
        if low is None:
            found.append(f"{importer} is in no layer: place its package in LAYERS")
            continue
        for target in sorted(t for t in targets if t.startswith(PACKAGES)):
            high = _unit(target)
            if high is None or high == low:
                continue  # an unplaced target is reported as an importer
            if RANK[high] >= RANK[low]:
                where = "beside it" if RANK[high] == RANK[low] else "above it"
                found.append(f"{importer} imports {target}: {high} is {where} ({low})")
    return found


def test_layers_only_point_down() -> None:
    violations = _layer_violations(_graph())
    assert not violations, "\n".join(violations)


def test_third_party_rules() -> None:
    violations = [f"{importer} imports {target}"
                  for importer, targets in sorted(_graph().items())
                  for low, forbidden in FORBIDDEN if _matches(importer, low)
                  for target in sorted(targets) if any(_matches(target, f) for f in forbidden)]
    assert not violations, "\n".join(violations)


def test_no_import_cycles() -> None:
    graph = {m: {t for t in targets if t.startswith(PACKAGES)} for m, targets in _graph().items()}
    # A package's __init__ re-exporting its own submodules is not a cycle with them.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not (_matches(module, t) and module != t)}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The back arrow this test was extended for (issue 17): the ONNX export imported the inference
# package, once at module level and once inside a function, while inference imported the export.
OLD_EXPORT = '''
from sfnet_core.inference.onnx_model import build_metadata


def check_size(height):
    from sfnet_core.inference.predict import STRIDE
    return height % STRIDE == 0
'''


def test_the_checker_sees_a_back_arrow() -> None:
    """The rules above would catch the old export <-> inference arrow (so the layering test can fail)."""
    old_modules = {"sfnet_core.inference.onnx_model", "sfnet_core.inference.predict"}
    imported = _imports(OLD_EXPORT, "sfnet_core.onnx.export") & old_modules
    assert imported == old_modules  # the import inside the function too
    graph = {"sfnet_core.onnx.export": imported, "sfnet_core.inference.cache": {"sfnet_core.onnx.export"}}
    violations = _layer_violations(graph)
    assert violations == [
        "sfnet_core.onnx.export imports sfnet_core.inference.onnx_model: sfnet_core.inference is above it "
        "(sfnet_core.onnx)",
        "sfnet_core.onnx.export imports sfnet_core.inference.predict: sfnet_core.inference is above it "
        "(sfnet_core.onnx)",
    ]
    # where the old module sat (sfnet_core/export.py), it is in no layer at all
    assert _layer_violations({"sfnet_core.export": imported}) == [
        "sfnet_core.export is in no layer: place its package in LAYERS"]


@pytest.mark.parametrize("importer,target", [
    ("sfnet_core.evaluation.scoring", "sfnet_core.training.engine"),  # up
    ("sfnet_core.checkpoint", "sfnet_core.onnx.metadata"),  # up
    ("sfnet_core.onnx.export", "sfnet_ros.conversions"),  # up: the library never imports the ROS layer
    ("sfnet_ros.tools.demo", "sfnet_ros.node.main"),  # beside
    ("sfnet_core.models.sfnet", "sfnet_core.data.classes"),  # beside
])
def test_the_checker_sees_a_forbidden_import(importer: str, target: str) -> None:
    assert len(_layer_violations({importer: {target}})) == 1


@pytest.mark.parametrize("importer,target", [
    ("sfnet_core.inference.cache", "sfnet_core.onnx.export"),
    ("sfnet_core.onnx.export", "sfnet_core.onnx.metadata"),  # within a unit
    ("sfnet_ros.tools.export_with_bags", "sfnet_core.cli.export_command"),
])
def test_the_checker_lets_arrows_down_pass(importer: str, target: str) -> None:
    assert _layer_violations({importer: {target}}) == []


def test_the_checker_sees_a_forbidden_third_party_import() -> None:
    assert any(_matches("sfnet_core.inference.segmenter", low) and any(_matches("rclpy", f) for f in forbidden)
               for low, forbidden in FORBIDDEN)
