"""The layering of docs/architecture.md, checked on the source: who may import whom, and no cycles.

Imports inside functions count too (a cycle hidden in a function is still a cycle), so the check
reads every ``import`` statement with ``ast`` instead of importing the modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sfnet_core", "sfnet_ros")
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces",
               "builtin_interfaces", "vision_msgs", "launch", "launch_ros", "ament_index_python")

# (importer prefix, forbidden prefixes): arrows only point down.
FORBIDDEN = [
    ("sfnet_core", ("sfnet_ros", *ROS_MODULES)),
    ("sfnet_core.models", ("sfnet_core.data", "sfnet_core.training", "sfnet_core.evaluation",
                           "sfnet_core.inference", "sfnet_core.cli", "sfnet_core.checkpoint")),
    ("sfnet_core.data", ("sfnet_core.training", "sfnet_core.evaluation", "sfnet_core.inference",
                         "sfnet_core.cli", "sfnet_core.models")),
    ("sfnet_core.inference", ("sfnet_core.training", "sfnet_core.evaluation", "sfnet_core.cli")),
    ("sfnet_core.evaluation", ("sfnet_core.training", "sfnet_core.cli")),
    ("sfnet_core.training", ("sfnet_core.cli",)),
    ("sfnet_ros.node", ("sfnet_ros.tools",)),
    ("sfnet_ros.conversions", ("sfnet_ros.node", "sfnet_ros.tools", "rclpy")),
    # imported by the launch file: must load without ROS, launch or torch
    ("sfnet_ros.launch_support", (*ROS_MODULES, "sfnet_ros.node", "sfnet_ros.tools", "sfnet_core", "torch")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from pkg import submodule` imports the submodule
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} | {
        m for m in _imports(path) if not m.startswith(PACKAGES)} for name, path in modules.items()}


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_layers_only_point_down() -> None:
    graph = _graph()
    violations = [f"{importer} imports {target}"
                  for importer, targets in sorted(graph.items())
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


@pytest.mark.parametrize("importer,target", [("sfnet_core.evaluation.evaluate", "sfnet_core.training.engine"),
                                             ("sfnet_core.inference.segmenter", "rclpy")])
def test_the_checker_sees_a_forbidden_import(importer: str, target: str) -> None:
    """The rules above would catch these (so the layering test can fail)."""
    assert any(_matches(importer, low) and any(_matches(target, f) for f in forbidden) for low, forbidden in FORBIDDEN)
