"""Shared fixtures: DDS isolation for every test that talks ROS, and the small test checkpoint."""
from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from sfnet_ros.ros_distro import localhost_discovery, ros_distribution

# Domain ids 1..100 are safe on Linux (higher ones collide with ephemeral ports). The suite runs
# in pytest-xdist workers (gw0, gw1, ...: see the Makefile): each worker owns its own slice of the
# ids, so two tests running at the same time never share a domain; the counter keeps consecutive
# tests of one worker apart so a late message from one test's node never reaches the next test.
# Outside xdist the slice is all 100 ids, starting from the pid (two pytest runs side by side).
# ``SFNET_TEST_DOMAINS=FIRST-LAST`` narrows the ids to a range: make test runs the Jazzy pytest beside
# the Kilted one, each on its own range.
_LOW, _, _HIGH = os.environ.get("SFNET_TEST_DOMAINS", "1-100").partition("-")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_SLICE = (int(_HIGH) - int(_LOW) + 1) // max(_WORKERS, 1)
_FIRST = int(_LOW) + (int(_WORKER.removeprefix("gw")) * _SLICE if _WORKER.startswith("gw") else 0)
_domain_counter = itertools.count(0 if _WORKER else os.getpid() % _SLICE)


def next_domain_id() -> int:
    """A ROS_DOMAIN_ID no other test running now uses (see above)."""
    return _FIRST + next(_domain_counter) % _SLICE


def _enter_ros_domain(patch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set a fresh ROS_DOMAIN_ID with localhost-only discovery; return the environment."""
    domain = next_domain_id()
    patch.setenv("ROS_DOMAIN_ID", str(domain))
    # the distribution's own variable: Jazzy and later warn on every start about ROS_LOCALHOST_ONLY
    wanted = localhost_discovery(ros_distribution())
    if "ROS_LOCALHOST_ONLY" not in wanted:
        patch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    for name, value in wanted.items():
        patch.setenv(name, value)
    patch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    patch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)


# The files that take longest, first (measured with --durations on the 2-core CI machine: 30-160 s
# each): `make test` runs `--dist loadfile --no-loadscope-reorder`, so xdist hands files to its
# workers in this order; the long ones start at once and the many short ones fill the end. (By
# default xdist would order files by their number of tests, which puts these last.)
SLOW_FIRST = ("test_bench.py", "test_custom_data.py", "test_cli_bad_input.py", "test_node_faults.py",
              "test_engine.py", "test_doc_performance.py", "test_openvino.py", "test_demo.py",
              "test_doc_evaluation_and_bags.py", "test_fleet_eval.py", "test_threads.py", "test_doc_training.py",
              "test_signals_cli.py",
              "test_node_lifecycle.py", "test_status.py", "test_released.py", "test_backends.py", "test_bag_live.py",
              "test_outputs.py", "test_accuracy_bench.py", "test_models.py", "test_node_geometry.py",
              "test_export.py", "test_transport.py", "test_node.py", "test_bag_eval.py", "test_inference.py",
              "test_model_integrity.py", "test_node_loss.py", "test_node_multi.py", "test_training_failures.py",
              "test_ddp.py", "test_readme.py", "test_fleet_report.py")


def pytest_configure(config: pytest.Config) -> None:
    """One export cache (``SFNET_ROS_CACHE``) per test process, never the user's ~/.cache: the
    ONNX exports and OpenVINO's compiled models that ``backend: auto`` makes for a ``.pt`` file are
    reused by every test of this process (and by the nodes and tools it starts) and removed at
    the end. Tests that check the cache itself give their own ``cache_dir``.

    The test process bounds OpenMP's spin-waiting as the project's tools do at start
    (``sfnet_core.threads.prepare_process``, before torch loads): the suite keeps both cores busy,
    and PyTorch's idle threads would otherwise spin on the cores the other worker needs."""
    from sfnet_core.threads import prepare_process

    prepare_process()
    if "SFNET_ROS_CACHE" not in os.environ:
        import tempfile

        folder = tempfile.mkdtemp(prefix="sfnet-test-cache-")
        os.environ["SFNET_ROS_CACHE"] = folder
        config.stash[_CACHE_KEY] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_CACHE_KEY, None)
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("SFNET_ROS_CACHE", None)


_CACHE_KEY = pytest.StashKey[str]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's own ROS_DOMAIN_ID, set in ``os.environ`` (for in-process rclpy); the returned
    environment is what child processes (the node, bag players) must be given."""
    return _enter_ros_domain(monkeypatch)


@pytest.fixture(scope="module")
def ros_domain_module() -> Iterator[dict[str, str]]:
    """Like ``ros_domain`` for a whole module: one node process serves all of a module's tests
    (each start costs a model load), so its domain must outlive a single test."""
    with pytest.MonkeyPatch.context() as patch:
        yield _enter_ros_domain(patch)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test: on a loaded small machine OpenMP workers spin-wait for
    each other and multiply the CPU time several-fold; a single thread is the fastest there."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 19-class sfnet_resnet18 checkpoint (deterministic), one per module."""
    from node_harness import write_test_checkpoint

    return write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def segmenter(checkpoint: Path):
    """A CPU fp32 Segmenter on ``checkpoint``: the reference the node's outputs must equal."""
    from sfnet_core.inference import Segmenter

    return Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", warmup=False)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount permission; skipped with the reason otherwise)."""
    where = tmp_path_factory.mktemp("small_disk")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def fill_small_disk(small_disk: Path) -> Callable[[int], AbstractContextManager[None]]:
    """``with fill_small_disk(leave):`` fills ``small_disk`` up to ``leave`` bytes of free space
    for the block (a disk full from the start, or one that fills up while a tool writes)."""

    @contextlib.contextmanager
    def filled(leave: int) -> Iterator[None]:
        filler = small_disk / "filler"
        with open(filler, "wb") as f:
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            if free > leave:
                f.write(b"\0" * (free - leave))
        try:
            yield
        finally:
            filler.unlink()

    return filled
