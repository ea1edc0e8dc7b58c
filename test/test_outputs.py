"""Outputs keep what users wrote (sfnet_core.io_utils): the manifest rule, no-replace publishing,
races between tools, and a disk that is full (a small tmpfs, mounted where that is permitted)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from node_harness import write_test_checkpoint

from sfnet_core import io_utils
from sfnet_core.io_utils import (
    MANIFEST,
    OutputError,
    atomic_write,
    check_output,
    foreign_files,
    rename_noreplace,
    staging_path,
)

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _staging_left(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.name != MANIFEST and not p.name.startswith(".sfnet_")
            and p.name != ".sfnet-predictions"]


def _one_line(proc: subprocess.CompletedProcess, tool: str, expect: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), proc.stderr[-2000:]
    assert expect.lower() in lines[0].lower(), lines[0]


# ----------------------------------------------------------------------------- the manifest
def test_the_manifest_names_added_edited_and_foreign_entries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_write(out, overwrite=False, tool="sfnet-x") as stage:
        (stage / "labels").mkdir(parents=True)
        (stage / "labels" / "a.png").write_bytes(b"label a")
        (stage / "b.txt").write_bytes(b"bbb")
    assert foreign_files(out, "sfnet-x") == [] and foreign_files(out, "sfnet-y") is None
    (out / "labels" / "a.png").write_bytes(b"label A")  # same size, other content: the digest tells
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "link").symlink_to(out / "b.txt")
    assert foreign_files(out, "sfnet-x") == ["labels/a.png", "link", "mine/", "notes.txt"]
    with pytest.raises(OutputError, match=r"holds files that sfnet-x did not write .*labels/a.png, link, mine/ "
                                          r"and 1 more"):
        check_output(out, overwrite=True, kind="dir", tool="sfnet-x")
    (out / "manifest-less").mkdir()
    (out / "manifest-less" / "x").write_text("x")
    with pytest.raises(OutputError, match="sfnet-x did not write; it is never replaced"):
        check_output(out / "manifest-less", overwrite=True, kind="dir", tool="sfnet-x")


def test_overwrite_checks_the_folder_again_when_publishing(tmp_path: Path) -> None:
    """A file added while the tool worked is not replaced: the old folder stays, whole."""
    out = tmp_path / "out"
    with atomic_write(out, tool="sfnet-x") as stage:
        stage.mkdir()
        (stage / "a").write_text("1")
    check_output(out, overwrite=True, kind="dir", tool="sfnet-x")
    with pytest.raises(OutputError, match=r"\(late.txt\); they are never replaced"), \
            atomic_write(out, overwrite=True, tool="sfnet-x") as stage:
        stage.mkdir()
        (stage / "a").write_text("2")
        (out / "late.txt").write_text("added meanwhile")
    assert (out / "a").read_text() == "1" and (out / "late.txt").exists()
    (out / "late.txt").unlink()
    with atomic_write(out, overwrite=True, tool="sfnet-x") as stage:
        stage.mkdir()
        (stage / "a").write_text("2")
    assert (out / "a").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["out"]


# ----------------------------------------------------------------------------- publishing
@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_publishing_never_replaces_what_appeared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 renameat2: bool) -> None:
    if not renameat2:
        monkeypatch.setattr(io_utils, "_renameat2", None)
    target = tmp_path / "out.json"
    with pytest.raises(OutputError, match="appeared while the output was being written; it was not replaced"), \
            atomic_write(target, overwrite=False, what="--json") as stage:
        stage.write_text("ours")
        target.write_text("theirs")
    assert target.read_text() == "theirs" and os.listdir(tmp_path) == ["out.json"]
    folder = tmp_path / "folder"
    with pytest.raises(OutputError, match="appeared"), atomic_write(folder, overwrite=False, tool="t") as stage:
        stage.mkdir()
        (stage / "x").write_text("ours")
        folder.mkdir()  # even an empty folder is somebody's
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(os.listdir(tmp_path)) == ["folder", "out.json"]
    source = tmp_path / "src"
    source.write_text("s")
    with pytest.raises(FileExistsError):
        rename_noreplace(source, target)
    rename_noreplace(source, tmp_path / "new")
    assert (tmp_path / "new").read_text() == "s" and not source.exists()


def test_staging_names_fit_where_the_output_name_fits(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 255)
    assert len(staging_path(target).name) <= 255
    with atomic_write(target, overwrite=False) as stage:
        stage.write_text("x")
        assert len(stage.name) <= 255
    assert target.read_text() == "x" and os.listdir(tmp_path) == [target.name]


def test_special_files_are_never_outputs(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is a FIFO; only a regular file"):
            check_output(fifo, overwrite=overwrite)
    with pytest.raises(OutputError, match="is a character device"):
        check_output("/dev/null", overwrite=True)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(OutputError, match="a symlink loop"):
        check_output(tmp_path / "loop1" / "x.json")
    with pytest.raises(OutputError, match="file name too long"):
        check_output(tmp_path / ("n" * 256))


# ----------------------------------------------------------------------------- races, end to end
def test_a_file_that_appears_during_the_run_is_kept(tmp_path: Path) -> None:
    """sfnet-synthetic is stopped (SIGSTOP) once its staging folder exists, a user's file is put
    at --out, the tool continues: it refuses to publish and the user's file is untouched."""
    out = tmp_path / "synth"
    proc = subprocess.Popen([str(BIN / "sfnet-synthetic"), "--out", str(out), "--frames", "30", "--size", "64x128"],
                            cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".synth.") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        out.write_text("the user's file")
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _one_line(subprocess.CompletedProcess([], proc.returncode, "", stderr), "sfnet-synthetic",
              "appeared while the output was being written; it was not replaced")
    assert out.read_text() == "the user's file" and sorted(os.listdir(tmp_path)) == ["synth"]


def test_two_exports_to_one_new_path_one_wins(tmp_path: Path) -> None:
    write_test_checkpoint(tmp_path / "model.pt", model_name="sfnet_shufflenetv2")
    args = ("sfnet-export", "--checkpoint", str(tmp_path / "model.pt"), "--onnx", str(tmp_path / "m.onnx"),
            "--height", "64", "--width", "128")
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda _: _run(*args, cwd=tmp_path), range(2)))
    winners = [p for p in procs if p.returncode == 0]
    losers = [p for p in procs if p.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(p.returncode, p.stderr[-500:]) for p in procs]
    lines = losers[0].stderr.strip().splitlines()
    assert losers[0].returncode == 2 and len(lines) == 1, losers[0].stderr
    assert "appeared while" in lines[0] or "exists (file)" in lines[0], lines[0]
    import onnx

    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))  # the winner's file, whole
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "model.pt"]


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from released_reference import released_table

    d = tmp_path_factory.mktemp("disk_models")
    write_test_checkpoint(d / "model.pt", model_name="sfnet_shufflenetv2")
    state = {k: torch.zeros(shape) for k, shape in released_table("df1").items()}
    torch.save({"state_dict": state}, d / "released.pth")
    for folder in ("pred", "gt"):
        (d / folder).mkdir()
        import cv2
        import numpy as np

        cv2.imwrite(str(d / folder / "f0.png"), np.zeros((8, 8), np.uint8))
    return d


@pytest.mark.parametrize("leave", [0, 256 * 1024], ids=["full", "fills-up"])
def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Path, fill_small_disk: Callable, models: Path,
                                                    leave: int) -> None:
    """Each tool on a disk that is full from the start (refused before the work) or fills up while
    it writes: one line, exit 2, nothing left but the filler."""
    d = small_disk
    runs = {
        "sfnet-synthetic": ("sfnet-synthetic", "--out", str(d / "synth"), "--frames", "20", "--size", "128x256"),
        "sfnet-import": ("sfnet-import", str(models / "released.pth"), "--out", str(d / "imported.pt")),
        "sfnet-export": ("sfnet-export", "--checkpoint", str(models / "model.pt"), "--onnx", str(d / "m.onnx"),
                         "--height", "64", "--width", "128"),
    }
    if leave == 0:  # the report is small: only a disk full from the start stops it
        runs["sfnet-eval"] = ("sfnet-eval", "--pred-dir", str(models / "pred"), "--gt-dir", str(models / "gt"),
                              "--json", str(d / "report.json"))
    with fill_small_disk(leave):
        for tool, args in runs.items():
            proc = _run(*args, cwd=models)
            assert "Traceback" not in proc.stderr and "libpng" not in proc.stderr, proc.stderr[-2000:]
            _one_line(proc, tool, "no space left on device")
            assert sorted(os.listdir(d)) == ["filler"], (tool, os.listdir(d))


@pytest.mark.parametrize("leave", [0, 64 * 1024], ids=["full", "fills-up"])
def test_a_merge_on_a_full_disk_is_one_line_and_changes_nothing(small_disk: Path, fill_small_disk: Callable,
                                                                 tmp_path: Path, leave: int,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """sfnet-labels merge into a dataset on a full disk: one line naming the dataset, exit 2, the
    dataset as it was (no frame of the source, no staging folder)."""
    import cv2

    from sfnet_core.cli import labels_command
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.data.synthetic_scenes.render import render_scene
    from sfnet_ros.tools.extract import class_template

    def dataset(root: Path, seeds: range) -> None:
        for folder in ("images", "labels"):
            (root / folder / "train").mkdir(parents=True)
        for seed in seeds:
            image, label = render_scene(seed=seed, height=128, width=256)
            cv2.imwrite(str(root / "images" / "train" / f"f{seed}.png"), image[..., ::-1])
            cv2.imwrite(str(root / "labels" / "train" / f"f{seed}.png"), label)
        (root / "classes.yaml").write_text(class_template(ClassTable.cityscapes(), "test"))

    dataset(tmp_path / "src", range(1, 9))
    dest = small_disk / f"dest_{leave}"
    dataset(dest, range(1))
    before = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    with fill_small_disk(leave):
        code = labels_command.main(["merge", str(tmp_path / "src"), "--into", str(dest)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == f"sfnet-labels: error: --into: cannot write into {dest}: no space left on device", lines
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == before
