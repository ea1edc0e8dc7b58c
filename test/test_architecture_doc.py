"""docs/architecture.md stays true: every file and function it names exists, and its tree lists
every module of the two packages.

Names are resolved the way a reader resolves them: a path in backticks is looked up from the
repository root, then from ``sfnet_core/``, ``sfnet_ros/`` and ``sfnet_ros/node/`` (the frame-path
table's default folder); an identifier in the same table cell after a file names a function, class
or ``Class.method`` defined in that file.
"""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
BASES = ("", "sfnet_core", "sfnet_ros", "sfnet_ros/node")
PATH = re.compile(r"^[\w./-]+\.(py|yaml|xml|sh|md)$|^[a-z_][\w-]*(/[a-z_][\w.-]*)+/?$")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)?$")


def resolve(name: str, near: str | None = None) -> Path | None:
    """The file ``name`` means; ``near``: a path named just before it (a sibling is meant first)."""
    context = resolve(near) if near else None
    bases = ((str(context.parent.relative_to(REPO)),) if context else ()) + BASES
    for base in bases:
        candidate = REPO / base / name.rstrip("/")
        if candidate.exists():
            return candidate
    return None


@cache
def definitions(path: Path) -> frozenset[str]:
    """Top-level functions and classes of a module, and ``Class.method`` for their methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.update((f"{node.name}.{item.name}", item.name))
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def table_cells(text: str) -> list[str]:
    """The rows of the frame-path table (``| <number> | file | what |``), step number left out: a
    file named in the file column is the context of the names in the description."""
    return [line.strip("|").split("|", 1)[1] for line in text.splitlines() if re.match(r"^\| *\d+ *\|", line)]


def named_in_cell(cell: str) -> list[tuple[str, str | None]]:
    """(token, context) for every backticked token of a cell, in order. An identifier's context is
    the last file named before it in the cell (where it is defined); a path's context is the first
    path of the cell (``models/sfnet.py`` then ``heads.py``: a sibling); None where there is none."""
    out: list[tuple[str, str | None]] = []
    first: str | None = None
    current: str | None = None
    for token in re.findall(r"`([^`]+)`", cell):
        if PATH.match(token):
            out.append((token, first))
            first = first or token
            current = token
        else:
            out.append((token, current))
    return out


def tree_files(text: str) -> list[str]:
    """The files and folders of the tree block (indentation = nesting), as repository paths."""
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    stack: list[tuple[int, str]] = []
    paths = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        if not re.match(r"^[\w./*-]+(, [\w./*-]+)*$", entry):
            continue  # a continuation line of a description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "/".join(name for _, name in stack)
        for name in entry.split(", "):
            paths.append(f"{prefix}/{name}" if prefix else name)
        if entry.endswith("/"):
            stack.append((indent, entry.rstrip("/")))
    return paths


TEXT = DOC.read_text()


def test_every_path_in_backticks_exists() -> None:
    in_table = [(t, near) for cell in table_cells(TEXT) for t, near in named_in_cell(cell) if PATH.match(t)]
    tokens = {t for t in re.findall(r"`([^`\s]+)`", TEXT) if PATH.match(t) and "*" not in t}
    assert tokens and in_table, "the pattern found no paths: the test would pass on anything"
    missing = sorted({t for t, near in in_table if resolve(t, near) is None}
                     | {t for t in tokens - {t for t, _ in in_table}
                        if resolve(t) is None and not (REPO / "docs" / t).exists()})
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_function_named_in_the_frame_path_exists_in_its_file() -> None:
    """The table's file column: each file, then the functions / classes of that file."""
    checked = 0
    wrong = []
    for row in table_cells(TEXT):
        cell = named_in_cell(row.split("|", 1)[0])
        first = next((t for t, _ in cell if PATH.match(t)), None)
        for token, owner in cell:
            if owner is None or PATH.match(token) or not IDENTIFIER.match(token):
                continue
            path = resolve(owner, first if owner != first else None)
            assert path is not None, f"{owner}: no such file"
            if path.suffix != ".py":
                continue
            checked += 1
            if token not in definitions(path):
                wrong.append(f"{token} (in {owner})")
    assert checked >= 8, f"only {checked} names checked: the table lost its file/function pairs"
    assert not wrong, f"docs/architecture.md's frame path names what its file does not define: {wrong}"


def test_the_tree_lists_every_module_and_nothing_else() -> None:
    listed = tree_files(TEXT)
    assert any(p.endswith("segmentation_node.py") for p in listed), listed
    listed_files = {p for p in listed if p.endswith(".py")}
    missing_on_disk = sorted(p for p in listed if "*" not in p and not (REPO / p.rstrip("/")).exists())
    assert not missing_on_disk, f"the tree lists what does not exist: {missing_on_disk}"
    modules = {str(p.relative_to(REPO)) for package in ("sfnet_core", "sfnet_ros")
               for p in (REPO / package).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    unlisted = sorted(modules - listed_files)
    assert not unlisted, f"modules missing from the tree in docs/architecture.md: {unlisted}"


@pytest.mark.parametrize("cell, expected", [
    ("`worker.py` `LatestFrameMailbox`, `InferenceWorker`",
     [("worker.py", None), ("LatestFrameMailbox", "worker.py"), ("InferenceWorker", "worker.py")]),
    ("`x` then `inference/geometry.py`", [("x", None), ("inference/geometry.py", None)]),
    ("`models/sfnet.py` (`heads.py`, `f`)", [("models/sfnet.py", None), ("heads.py", "models/sfnet.py"),
                                             ("f", "heads.py")]),
])
def test_cells_are_read_as_file_then_names(cell: str, expected: list) -> None:
    assert named_in_cell(cell) == expected


def test_a_wrong_name_would_be_caught() -> None:
    worker = resolve("worker.py")
    assert worker is not None and "LatestFrameMailbox" in definitions(worker)
    assert "NoSuchFunction" not in definitions(worker)
    assert resolve("inference/no_such_module.py") is None
    assert resolve("heads.py") is None and resolve("heads.py", "sfnet_core/models/sfnet.py") is not None
