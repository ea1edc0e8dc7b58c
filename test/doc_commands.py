"""Run the shell commands of a documentation page exactly as written (shared by the doc tests).

A page's fenced ``bash`` blocks are its commands. ``run_block`` runs one block with ``bash``
(``set -euo pipefail``: the first failing command fails the block) in a prepared folder, with the
venv's scripts first on ``PATH`` (what ``source .venv/bin/activate`` gives the reader), and
stops whatever the block started in the background when it ends. ``fenced_blocks`` gives every
block with its language, in page order, for pages that interleave commands with files to write.

Two things a page may show that cannot run here have their own checks: ``check_launch_command``
(``ros2 launch``: no launch here; the arguments go through the launch file's own logic) and
``write_released_stand_in`` (the authors' published checkpoint a page starts from cannot be
downloaded: a file of the same format with random weights stands in for it).
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / "launch" / "sfnet.launch.py"

#: The scripts of the environment running the tests (sfnet-*, sfnet_node, python).
VENV_BIN = Path(sys.executable).parent

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", flags=re.S | re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block of a Markdown text, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ``bash`` blocks, in order."""
    return [body for language, body in fenced_blocks(text) if language == "bash"]


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines dropped."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(" ".join(line.split()))
    return found


def doc_environment(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """``base`` (e.g. the ``ros_domain`` environment) with the venv's scripts first on PATH."""
    return {**base, "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', os.environ['PATH'])}", **extra}


def run_block(block: str, cwd: str | os.PathLike, env: Mapping[str, str], timeout: float) -> str:
    """Run ``block`` with bash in ``cwd``; its combined output. AssertionError (with the block and
    the end of its output) when it fails; on a timeout its whole process group is killed."""
    # a block that fails stops there (-e), and whatever it started in the background goes too
    script = "set -euo pipefail\ntrap 'kill -INT $(jobs -p) 2>/dev/null || true' EXIT\n" + block
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, f"{block}\n--- exit {proc.returncode} ---\n{output[-4000:]}"
    return output


def launch_arguments() -> set[str]:
    """The argument names ``launch/sfnet.launch.py`` declares (read with ``ast``, never imported)."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    names = set()
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", "")) == "DeclareLaunchArgument":
            names.add(ast.literal_eval(node.args[0]))
    return names


def check_launch_command(line: str, cwd: str | os.PathLike) -> dict[str, str]:
    """A page's ``ros2 launch sfnet_ros sfnet.launch.py ...`` line, as far as it can be checked
    without launch: every argument is declared by the launch file, ``camera_plan`` (the launch
    file's own camera logic) accepts the camera arguments, and ``checkpoint`` (``$PWD`` read as
    ``cwd``) is a file. Returns the node's input remappings (from -> to)."""
    from sfnet_ros.launch_support import camera_plan

    words = shlex.split(line.replace("$PWD", str(cwd)))
    assert words[:4] == ["ros2", "launch", "sfnet_ros", "sfnet.launch.py"], line
    arguments = dict(word.split(":=", 1) for word in words[4:])
    unknown = set(arguments) - launch_arguments()
    assert not unknown, f"{line}: the launch file declares no argument {sorted(unknown)}"
    plan = camera_plan(arguments.get("cameras", ""), arguments.get("image_topics", ""),
                       arguments.get("image_topic", "/camera/image_raw"))
    assert Path(arguments["checkpoint"]).is_file(), f"{line}: checkpoint {arguments['checkpoint']} is not a file"
    return dict(plan.remappings)


def write_released_stand_in(path: str | os.PathLike, seed: int = 0) -> Path:
    """The authors' SFNet-R18 Cityscapes checkpoint as their train.py saves it (``module.``
    prefixes, epoch, numpy ``mean_iu``), with random weights (``released_reference``)."""
    import numpy as np
    import torch
    from released_reference import random_released_weights, released_table

    weights = random_released_weights(released_table("r18"), "r18", seed=seed, size=(64, 128))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 179,
                "mean_iu": np.float64(0.79)}, path)
    return Path(path)
