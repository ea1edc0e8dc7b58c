"""README.md's commands, as written.

Every command line of the README's ``bash`` blocks is accounted for, in one folder holding what
the README's reader has at that point: the authors' ``sfnet_r18_cityscapes.pth`` (a file of the
released format with random weights stands in for the download) and a recording ``drive.mcap``
with ``/front/image_raw`` and ``/front/labels`` (a synthetic drive):

* ``sfnet-*`` commands run as written, in README order, with bash (venv scripts first on PATH);
  ``ros2 run sfnet_ros <exe> ...`` (the form that works in a colcon workspace, where the console
  scripts are installed in ``lib/sfnet_ros`` and not on PATH) runs ``<exe> ...`` the same way,
  ``<exe>`` being one of setup.py's console scripts (``ros2`` is not installable here);
* ``ros2 launch ...`` cannot run here (launch is not installable): its arguments must be ones the
  launch file declares and go through the launch file's own camera logic
  (``sfnet_ros.launch_support.camera_plan``), and its checkpoint must be the file the README's
  ``sfnet-import`` wrote;
* skipped, because they set up a machine or a workspace rather than use the project, or run what
  other tests run: ``make demo`` (``test_demo.py``, ``test_doc_evaluation_and_bags.py``),
  ``make test`` (the suite itself), ``cd``, ``git clone``, ``rosdep``, ``pip install``,
  ``colcon build``, ``source``.

Any other command fails the test: a command added to the README needs a test.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from doc_commands import (
    bash_blocks,
    check_launch_command,
    commands,
    doc_environment,
    run_block,
    write_released_stand_in,
)
from node_harness import REPO_ROOT

from sfnet_ros.tools.bag_io import BagReader
from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

README = REPO_ROOT / "README.md"
SKIPPED = (("make", "demo"), ("make", "test"), ("cd",), ("git", "clone"), ("rosdep",), ("pip", "install"),
           ("colcon", "build"), ("source",))
TIMEOUT_S = 300
FRAMES = 4


def console_scripts() -> set[str]:
    """The executables setup.py installs (into lib/sfnet_ros in a colcon workspace)."""
    return set(re.findall(r'"([\w-]+) = [\w.]+:\w+"', (REPO_ROOT / "setup.py").read_text()))


def skipped(command: str) -> bool:
    """True when every part of a ``&&`` chain is a setup step listed in SKIPPED."""
    parts = [shlex.split(part, comments=True) for part in command.split("&&")]
    return all(any(tuple(words[:len(prefix)]) == prefix for prefix in SKIPPED) for words in parts if words)


def readme_commands() -> list[str]:
    return [line for block in bash_blocks(README.read_text(encoding="utf-8")) for line in commands(block)]


def test_readme_commands(tmp_path: Path, ros_domain: dict[str, str]) -> None:
    write_released_stand_in(tmp_path / "sfnet_r18_cityscapes.pth")
    write_synthetic_bag(tmp_path / "drive.mcap", num_frames=FRAMES, height=64, width=128)
    env = doc_environment(ros_domain, OMP_NUM_THREADS="1")
    ran, checked = [], []
    for command in readme_commands():
        if skipped(command):
            continue
        if command.startswith("ros2 launch "):
            remaps = check_launch_command(command, tmp_path)
            assert remaps["image"] == "/camera/front/image_raw", remaps
            assert remaps["camera_info"] == "/camera/front/camera_info", remaps
            checked.append(command)
        elif command.startswith(("sfnet-", "ros2 run sfnet_ros ")):
            if command.startswith("ros2 run "):
                command = command.removeprefix("ros2 run sfnet_ros ")
                assert command.split()[0] in console_scripts(), command
            outputs = run_block(command, tmp_path, env, TIMEOUT_S)
            ran.append((command, outputs))
        else:
            raise AssertionError(f"README.md: no test runs {command!r} (run it here, or list it as skipped)")

    tools = [shlex.split(command)[0] for command, _ in ran]
    assert tools == ["sfnet-import", "sfnet-bag-eval"], tools
    assert len(checked) == 1
    # what the README says they do: a project checkpoint of the 19 Cityscapes classes; the bag's
    # FPS, latency and mIoU, and its outputs in a bag
    from sfnet_core.checkpoint import load_checkpoint

    imported = load_checkpoint(tmp_path / "weights" / "sfnet_r18.pt")
    assert imported.model_name == "sfnet_resnet18" and imported.num_classes == 19
    report = json.loads(next(line for line in reversed(ran[1][1].splitlines()) if line.startswith("{")))
    assert report["frames"] == FRAMES and report["matched"] == FRAMES
    assert 0.0 <= report["miou"] <= 1.0 and report["fps"] > 0 and report["latency_ms"]["p50"] > 0
    with BagReader(tmp_path / "drive_segmented.mcap") as reader:
        assert reader.topics["/front/segmentation/labels"].count == FRAMES
        assert reader.topics["/front/segmentation/color"].count == FRAMES


def test_readme_import_again_is_refused_before_torch(tmp_path: Path) -> None:
    """The README's sfnet-import run a second time (a reader repeating the quick start): refused
    with one line and exit 2 because the output exists, without loading PyTorch (the output
    check comes first, so the answer is immediate)."""
    command = next(c for c in readme_commands() if "sfnet-import " in c)
    args = shlex.split(command.split("sfnet-import ", 1)[1])
    out = tmp_path / args[args.index("--out") + 1]
    out.parent.mkdir(parents=True)
    out.write_bytes(b"an earlier import")
    (tmp_path / args[0]).write_bytes(b"not read")
    probe = ("import sys\nfrom sfnet_core.cli.import_command import main\nrc = main(sys.argv[1:])\n"
             "print('torch' in sys.modules)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("sfnet-import: error: --out: "), proc.stderr
    assert proc.stdout.strip() == "False", "sfnet-import imported torch before refusing its output"
    assert out.read_bytes() == b"an earlier import"
