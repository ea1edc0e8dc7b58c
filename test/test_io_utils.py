"""The output-safety rules (sfnet_core.io_utils) and the exit path every tool shares (cli.common)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sfnet_core.cli import common
from sfnet_core.errors import ConfigError
from sfnet_core.io_utils import OutputError, atomic_write, check_output, check_writable_parent

REPO = Path(__file__).resolve().parents[1]


def test_check_output_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"input")
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert check_output(tmp_path / "new.json", inputs=[data]) == (tmp_path / "new.json").resolve()
    with pytest.raises(OutputError, match="exists .file.; pass --overwrite"):
        check_output(report)
    assert check_output(report, overwrite=True) == report.resolve()
    for out, relation in ((data, "is"), (data / "x.json", "is inside"), (tmp_path, "contains")):
        with pytest.raises(OutputError, match=f"{relation} the input"):
            check_output(out, inputs=[None, data], overwrite=True)  # with or without --overwrite
    with pytest.raises(OutputError, match="is a folder; the output is a file"):
        check_output(data, overwrite=True)
    with pytest.raises(OutputError, match="is a file; the output is a folder"):
        check_output(report, overwrite=True, kind="dir")
    with pytest.raises(OutputError, match="did not write; it is never replaced"):
        check_output(data, overwrite=True, kind="dir")
    assert check_output(data, overwrite=True, kind="dir", is_previous_output=lambda p: True) == data.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputError, match="exists .folder."):
        check_output(tmp_path / "empty", kind="dir")
    assert check_output(tmp_path / "empty", kind="dir", overwrite=True) == (tmp_path / "empty").resolve()


def test_check_writable_parent_probes_for_real(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write /proc/sfnet_x: .* in /proc"):
        check_writable_parent("/proc/sfnet_x")  # writable by its mode bits for root, but not really
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_parent(tmp_path / "file" / "deeper" / "out.json", "--json")
    assert check_writable_parent(tmp_path / "a" / "b" / "c.json") == (tmp_path / "a" / "b" / "c.json").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe is gone, nothing created


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stop")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "old").write_text("old")
    with pytest.raises(OutputError, match="refusing to replace"), atomic_write(folder) as tmp:
        tmp.mkdir()
    assert (folder / "old").exists()
    with atomic_write(folder, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["folder", "out.txt"]  # no staging or .old left


def test_device_spec_is_the_devices_rule() -> None:
    from sfnet_core.device_spec import check_device_spec

    for good in ("auto", "cpu", "cuda", "cuda:1"):
        assert common.device_spec(good) == good
    for bad in ("gpu0", "cuda:x", "CPU", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected auto, cpu, cuda or cuda:N"):
            common.device_spec(bad)
        with pytest.raises(ConfigError, match="runtime.device: expected auto, cpu, cuda or cuda:N"):
            check_device_spec(bad, "runtime.device")


def test_argument_types() -> None:
    assert common.positive_int("3") == 3 and common.non_negative_int("0") == 0
    assert common.positive_float("0.5") == 0.5 and common.fraction("0.2") == 0.2
    for kind, bad in ((common.positive_int, "0"), (common.positive_int, "x"), (common.non_negative_int, "-1"),
                      (common.positive_float, "0"), (common.positive_float, "nan"), (common.fraction, "1")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            kind(bad)


def test_help_shows_defaults_and_usage_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    p = common.make_parser("sfnet-x", "Does x.\n\n  sfnet-x --n 3")
    p.add_argument("--n", type=common.positive_int, default=2, help="how many")
    p.add_argument("--names", nargs="+", default=["a", "b"], help="which")
    p.add_argument("--flag", action="store_true", help="a flag")
    text = p.format_help()
    assert "how many (default: 2)" in text and "which (default: a b)" in text and "a flag\n" in text
    assert "  sfnet-x --n 3" in text  # the description's layout is kept
    with pytest.raises(SystemExit) as exit_info:
        p.parse_args(["--n", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("sfnet-x: error: argument --n: expected an integer >= 1, got 0 "
                                       "(see sfnet-x --help)\n")


SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from sfnet_core.cli.common import run_command

staging = Path(sys.argv[1])

def body():
    staging.mkdir()
    try:
        print("ready", flush=True)
        while True:
            time.sleep(0.01)
    finally:
        os.kill(os.getpid(), signal.{second})  # a second signal while cleaning up: ignored
        time.sleep(0.05)
        staging.rmdir()
        print("cleaned", flush=True)

sys.exit(run_command("sfnet-x", body, interrupted="interrupted; no output written"))
"""


@pytest.mark.parametrize("sig,code,line", [
    ("SIGTERM", 143, "sfnet-x: terminated (SIGTERM); no output written"),
    ("SIGINT", 130, "sfnet-x: interrupted; no output written"),
])
def test_signals_run_the_finally_blocks(tmp_path: Path, sig: str, code: int, line: str) -> None:
    import signal

    staging = tmp_path / ".out.tmp"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT).replace("{second}", sig), str(staging)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert stdout.strip() == "cleaned" and stderr.strip() == line
    assert not staging.exists()


def test_folders_made_for_a_failed_output_are_removed(tmp_path: Path) -> None:
    """`--out a/new/deep/f.mcap` on a run that fails leaves no a/new/deep behind (atomic_write and
    the bag writer); folders that existed before, or that hold something else now, stay."""
    from sfnet_ros.tools.bag_io import BagWriter

    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "new" / "deep" / "f.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the work failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]
    with atomic_write(target) as tmp:  # success keeps them
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"

    bag = tmp_path / "a" / "other" / "deeper" / "f.mcap"
    with pytest.raises(RuntimeError), BagWriter(bag) as writer:
        writer.add_topic("/x", "std_msgs/msg/String")
        (tmp_path / "a" / "other" / "notes.txt").write_text("written by someone else meanwhile")
        raise RuntimeError("the work failed")
    assert not (tmp_path / "a" / "other" / "deeper").exists()
    assert (tmp_path / "a" / "other" / "notes.txt").exists()
