"""Shared fixtures: DDS isolation for every test that talks ROS, and the small test checkpoint."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Domain ids 1..100 are safe on Linux (higher ones collide with ephemeral ports). Starting from
# the pid keeps concurrent pytest processes apart; the counter keeps consecutive tests apart so a
# late message from one test's node can never reach the next test.
_domain_counter = itertools.count(os.getpid() % 100)


def _enter_ros_domain(patch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set a fresh ROS_DOMAIN_ID with localhost-only discovery; return the environment."""
    domain = next(_domain_counter) % 100 + 1
    patch.setenv("ROS_DOMAIN_ID", str(domain))
    patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    patch.setenv("ROS_LOCALHOST_ONLY", "1")  # older distros (Humble) read this one
    patch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    patch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)


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
