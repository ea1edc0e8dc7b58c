"""Shared fixtures: DDS isolation for every test that talks ROS."""
from __future__ import annotations

import itertools
import os

import pytest

# Domain ids 1..100 are safe on Linux (higher ones collide with ephemeral ports). Starting from
# the pid keeps concurrent pytest processes apart; the counter keeps consecutive tests apart so a
# late message from one test's node can never reach the next test.
_domain_counter = itertools.count(os.getpid() % 100)


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Give this test its own ROS_DOMAIN_ID with localhost-only discovery.

    Sets the variables in ``os.environ`` (for in-process rclpy) and returns the full environment
    to hand to child processes (the node, bag players).
    """
    domain = next(_domain_counter) % 100 + 1
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")  # older distros (Humble) read this one
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)
