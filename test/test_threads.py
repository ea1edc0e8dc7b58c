"""One ``threads`` setting (issue 18): the default is the cores the process may run on, every
entry point bounds OpenMP's spinning (set before torch loads, checked in the runtime itself through
``OMP_DISPLAY_ENV``), the tools take ``--threads`` and refuse bad values in one line, the node
validates and reports its ``threads`` parameter, and bench/threads.py runs."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from node_harness import REPO_ROOT, NodeProcess, RosClient, write_test_checkpoint

from sfnet_core.threads import available_cores, prepare_process, resolve_threads

PYTHON = sys.executable
NS = "/threads"


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO_ROOT)


def _without_wait_policy(**extra: str) -> dict[str, str]:
    drop = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


# -- the library -------------------------------------------------------------------------------

def test_resolve_threads_defaults_to_the_affinity_mask_and_warns_above_it() -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cores() == cores
    assert resolve_threads(0) == (cores, None) and resolve_threads(None) == (cores, None)
    assert resolve_threads(1) == (1, None)
    count, warning = resolve_threads(cores + 1)
    assert count == cores + 1 and warning is not None and f"the {cores} core(s)" in warning
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads: expected an integer >= 0"):
            resolve_threads(bad)  # type: ignore[arg-type]


def test_prepare_process_keeps_a_users_wait_policy() -> None:
    env: dict[str, str] = {}
    assert prepare_process(env) and env == {"GOMP_SPINCOUNT": "100000"}
    for name, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000")):
        env = {name: value}
        assert not prepare_process(env) and env == {name: value}


def test_default_follows_the_affinity_mask() -> None:
    """Restricted to one CPU (as taskset or a cpuset would), a process runs torch on one thread,
    and ONNX Runtime / OpenVINO get the same count; unrestricted, the parent's core count."""
    code = f"""
        import os
        from sfnet_core.threads import apply_threads
        import torch
        full = apply_threads(0)
        print(full, torch.get_num_threads(), torch.get_num_interop_threads())
        os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}})
        one = apply_threads(0)
        print(one, torch.get_num_threads())
    """
    run = _run(code)
    assert run.returncode == 0, run.stderr
    cores = str(len(os.sched_getaffinity(0)))
    assert [line.split() for line in run.stdout.splitlines()] == [[cores, cores, "1"], ["1", "1"]]


# -- the entry points: passive waiting before torch loads --------------------------------------

def _launch_probe(tmp_path: Path, env: dict[str, str]) -> str:
    """Start a tool module through the console scripts' ``launch`` that loads torch and runs a
    parallel op; returns its stderr, where libgomp (OMP_DISPLAY_ENV=VERBOSE) says how it waits."""
    (tmp_path / "threads_probe.py").write_text(
        "import torch\n\ndef main():\n    (torch.ones(64, 64) @ torch.ones(64, 64)).sum()\n    return 0\n")
    code = "from sfnet_core.cli.entry import launch\nlaunch('threads_probe', 'probe')\n"
    run = _run(code, env={**env, "OMP_DISPLAY_ENV": "VERBOSE", "PYTHONPATH": f"{tmp_path}:{REPO_ROOT}"})
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_console_scripts_bound_openmp_spinning(tmp_path: Path) -> None:
    # what libgomp itself took: a bounded spin (unbounded spinning caused the collapse,
    # docs/performance.md#threads)
    assert "GOMP_SPINCOUNT = '100000'" in _launch_probe(tmp_path, _without_wait_policy())
    # a user's explicit choice is theirs
    passive = _launch_probe(tmp_path, _without_wait_policy(OMP_WAIT_POLICY="PASSIVE"))
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in passive and "GOMP_SPINCOUNT = '0'" in passive


# -- the tools' --threads ----------------------------------------------------------------------

TOOLS = {
    "sfnet-eval": ("sfnet_core.cli.evaluate_command", ["--config", "x.yaml", "--checkpoint", "x.pt"]),
    "sfnet-bag-eval": ("sfnet_ros.tools.bag_eval", ["--bag", "b.mcap", "--image-topic", "/i", "--checkpoint", "x.pt"]),
    "sfnet-export": ("sfnet_core.cli.export_command", ["--checkpoint", "x.pt", "--onnx", "x.onnx"]),
    "sfnet-demo": ("sfnet_ros.tools.demo", []),
    "sfnet-fleet-eval": ("sfnet_ros.tools.fleet_eval", ["--bag", "b.mcap", "--checkpoint", "x.pt", "--out", "o"]),
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_tools_refuse_a_bad_threads_value_in_one_line(tool: str, bad: str, capsys: pytest.CaptureFixture) -> None:
    import importlib

    module, required = TOOLS[tool]
    parser = importlib.import_module(module).build_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([*required, "--threads", bad])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{tool}: error: argument --threads: expected an integer >= 0")
    assert parser.parse_args([*required, "--threads", "1"]).threads == 1
    assert parser.parse_args(required).threads == 0  # the default: the available cores


def test_bag_eval_runs_with_threads_and_warns_above_the_cores(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """sfnet-bag-eval's main: --threads above the cores runs on that many, with one warning line."""
    import torch

    from sfnet_ros.tools import bag_eval
    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    bag = tmp_path / "drive.mcap"
    write_synthetic_bag(bag, 2, 64, 128, image_topic="/front/image_raw", label_topic="/front/labels")
    ckpt = write_test_checkpoint(tmp_path / "model.pt")
    too_many, previous = available_cores() + 1, torch.get_num_threads()
    try:
        status = bag_eval.main(["--bag", str(bag), "--image-topic", "/front/image_raw", "--checkpoint", str(ckpt),
                                "--device", "cpu", "--backend", "torch", "--no-progress", "--threads", str(too_many)])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert used == too_many
    assert captured.err.count(f"sfnet-bag-eval: warning: --threads: threads {too_many} is more than the "
                              f"{available_cores()} core(s)") == 1
    assert '"frames": 2' in captured.out


# -- the node ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(ros_domain_module: dict[str, str]) -> dict[str, str]:
    return ros_domain_module


@pytest.fixture(scope="module")
def ros(env: dict[str, str]):
    with RosClient() as client:
        yield client


@pytest.mark.parametrize("value", [-1, 1.5, "two"])
def test_node_refuses_a_bad_threads_at_configure(env, ros, tmp_path: Path, value: object) -> None:
    # Without config/sfnet.yaml: rcl drops a ``-p`` override whose type differs from the value
    # a params file gave the same parameter (it would silently run with the file's 0).
    ckpt = write_test_checkpoint(tmp_path / "model.pt")
    with NodeProcess(env, tmp_path, namespace=NS + "_bad", params_file=None,
                     parameters={"checkpoint": str(ckpt), "threads": value}) as node:
        log = node.wait_for_log("configure failed: parameter 'threads': invalid value")
        assert ros.get_state(node.fqn) == "unconfigured", log
        assert "Traceback" not in node.log()


def test_node_reports_its_threads_and_bounds_spinning(env, ros, tmp_path: Path) -> None:
    ckpt = write_test_checkpoint(tmp_path / "model.pt")
    node_env = _without_wait_policy(**{k: v for k, v in env.items() if k.startswith("ROS")}, OMP_DISPLAY_ENV="VERBOSE")
    parameters = {"checkpoint": str(ckpt), "threads": 1, "device": "cpu", "backend": "torch", "input_size": [64, 128]}
    with NodeProcess(node_env, tmp_path, namespace=NS, parameters=parameters) as node:
        log = node.wait_for_log("configured in")
        configured = next(line for line in log.splitlines() if "configured in" in line)
        assert "1 CPU thread(s)" in configured, configured
        # libgomp was loaded (at configure) after the node bounded its spinning
        assert "GOMP_SPINCOUNT = '100000'" in log, log


# -- bench/threads.py --------------------------------------------------------------------------

def test_threads_bench_quick_prints_every_row_and_ratio(tmp_path: Path) -> None:
    """The documented bench, smallest run (a counted run, no timing asserted): every row quiet and
    beside the hogs, the ratios, the CPU line; the rows ran with the wait policy they name."""
    import json

    assert ".venv/bin/python bench/threads.py --quick" in (REPO_ROOT / "docs" / "performance.md").read_text()
    out = tmp_path / "threads.json"
    command = [PYTHON, str(REPO_ROOT / "bench" / "threads.py"), "--quick", "--frames", "1", "--hogs", "1",
               "--rows", "before: default", "after: default", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("CPU ") and "flags" in run.stdout.splitlines()[0]
    assert "with hog: default before / after the fix = " in run.stdout
    result = json.loads(out.read_text())
    (size,) = result["results"]
    rows = size["rows"]
    assert size["size"] == [64, 128] and set(rows) == {"before: default", "after: default"}
    assert rows["before: default"]["wait_policy"] == "libgomp default (spin)"
    assert rows["after: default"]["wait_policy"] == "GOMP_SPINCOUNT=100000"
    assert rows["after: default"]["torch_threads"] == available_cores()
    assert all(r["quiet_ms"] > 0 and r["hog_ms"] > 0 for r in rows.values())
