"""The output-safety rules (sfnet_core.io_utils) and the exit path every tool shares (cli.common)."""
from __future__ import annotations

import argparse
import json
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


# -- a signal during publishing and cleaning up (found by test_signals_cli: sfnet-synthetic-bag left
# its staging folder when Ctrl-C came while the folder was being removed after success) ----------

def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: the main thread and Python's default signal handlers."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, check=False)


def test_signals_held_defers_a_signal_that_another_thread_receives() -> None:
    """A signal sent to the process may land on any thread that does not block it (OpenMP's, DDS's);
    Python still runs the handler in the main thread: the hold must not depend on the signal mask."""
    run = _run_python("""
        import os, select, signal, threading
        from sfnet_core.io_utils import signals_held
        parked = threading.Event()
        other = threading.Thread(target=parked.wait, daemon=True)
        other.start()
        # the C-level handler writes the signal's number here, in whichever thread it runs
        arrived, wakeup = os.pipe()
        os.set_blocking(wakeup, False)
        signal.set_wakeup_fd(wakeup)
        steps = []
        try:
            with signals_held():
                signal.pthread_kill(other.ident, signal.SIGINT)
                assert select.select([arrived], [], [], 60)[0], "the signal never arrived"
                # Python runs the handler in the main thread at the next bytecode: here
                steps.append("after the signal")
                steps.append("end of the block")
        except KeyboardInterrupt:
            steps.append("KeyboardInterrupt after the block")
        print(steps)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['after the signal', 'end of the block', 'KeyboardInterrupt after the block']"


# Each scenario publishes one output into the empty folder ``d`` (an earlier output there first
# where it replaces one) and prints the target's state; a SIGINT is sent to the process just before
# the k-th file-system call (rename, replace, unlink, rmdir, mkdir, renameat2), for every k.
_PUBLISH_SCENARIOS = """
import json, os, signal, sys
from pathlib import Path
import sfnet_core.io_utils as io_utils
from sfnet_ros.tools import bag_io

countdown = [0]  # > 0: armed, the signal comes before the call that takes it to 0

def armed(function):
    def call(*args, **kwargs):
        if countdown[0] > 0:
            countdown[0] -= 1
            if countdown[0] == 0:
                os.kill(os.getpid(), signal.SIGINT)  # raised at the next bytecode, unless held
        return function(*args, **kwargs)
    return call

for name in ("rename", "replace", "unlink", "rmdir", "mkdir"):
    setattr(os, name, armed(getattr(os, name)))
io_utils.rename_noreplace = bag_io.rename_noreplace = armed(io_utils.rename_noreplace)

def file_new(d):
    with io_utils.atomic_write(d / "out.txt", overwrite=False) as tmp:
        tmp.write_text("new")
    return (d / "out.txt").read_text() if (d / "out.txt").exists() else None

def file_replaced(d):
    with io_utils.atomic_write(d / "out.txt") as tmp:
        tmp.write_text("new")

def folder_replaced(d):
    with io_utils.atomic_write(d / "out", replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("new")

def bag(d, overwrite=False):
    with bag_io.BagWriter(d / "drive.mcap", overwrite=overwrite) as writer:
        writer.write_raw("/t", "std_msgs/msg/String", 1, bytes([0, 1, 0, 0, 4, 0, 0, 0]) + b"new" + bytes(1))

def probe(d):
    io_utils.check_output(d / "sub" / "out.json")

def state(d, scenario):
    if scenario.startswith("bag"):
        path = d / "drive.mcap"
        if not path.exists():
            return "absent"
        with bag_io.BagReader(path) as reader:
            return f"bag of {sum(1 for _ in reader.messages(['/t']))} message(s)"
    for path in (d / "out.txt", d / "out" / "a.txt"):
        if path.exists():
            return path.read_text()
    return "absent"

SCENARIOS = {"file_new": (file_new, None), "file_replaced": (file_replaced, "out.txt"),
             "folder_replaced": (folder_replaced, "out/a.txt"), "bag_new": (bag, None),
             "bag_replaced": (lambda d: bag(d, overwrite=True), "drive.mcap"), "probe": (probe, None)}
root = Path(sys.argv[1])
for scenario, (publish, previous) in SCENARIOS.items():
    k = 1
    while True:
        d = root / f"{scenario}-{k}"
        d.mkdir()
        if previous == "drive.mcap":
            bag(d)
        elif previous:
            (d / previous).parent.mkdir(exist_ok=True)
            (d / previous).write_text("old")
        countdown[0] = k
        outcome = "done"
        try:
            publish(d)
        except KeyboardInterrupt:
            outcome = "interrupted"
        left = sorted(p.name for p in d.rglob("*") if p.name.startswith("."))
        print(json.dumps([scenario, k, outcome, state(d, scenario), left]), flush=True)
        if countdown[0] > 0:  # fewer calls than k: every step has had its signal
            countdown[0] = 0
            break
        k += 1
"""


def test_a_signal_at_any_step_of_publishing_leaves_no_staging_and_a_whole_output(tmp_path: Path) -> None:
    script = tmp_path / "scenarios.py"
    script.write_text(_PUBLISH_SCENARIOS)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                         cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    whole = {"file_new": {"absent", "new"}, "file_replaced": {"old", "new"}, "folder_replaced": {"old", "new"},
             "bag_new": {"absent", "bag of 1 message(s)"}, "bag_replaced": {"bag of 1 message(s)"},
             "probe": {"absent"}}
    outcomes: dict[str, set[str]] = {name: set() for name in whole}
    for line in run.stdout.splitlines():
        scenario, k, outcome, state, left = json.loads(line)
        assert not left, f"{scenario}, a signal before file-system call {k}: staging left: {left}"
        assert state in whole[scenario], f"{scenario}, a signal before file-system call {k}: output {state!r}"
        outcomes[scenario].add(outcome)
    # each was interrupted at some steps, and completed once the signal came after its last call
    assert all(seen == {"interrupted", "done"} for seen in outcomes.values()), outcomes
