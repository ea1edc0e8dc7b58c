"""``sfnet-bag-play --wait-for-subscribers``: it says which topics it waits on, names the ones still
without a subscriber, and ``--wait-topics`` picks the topics that matter (a ground-truth topic
nobody subscribes to must not hold the playback)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from node_harness import REPO_ROOT, RosClient, reliable_qos, wait_until
from sensor_msgs.msg import Image

from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

TIMEOUT = 60.0


def _play(env: dict[str, str], *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sfnet_ros.tools.bag_play", *map(str, args)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


@pytest.mark.ros_api
def test_wait_names_its_topics_and_waits_only_on_the_chosen_ones(ros_domain, tmp_path):
    bag, _, _ = write_synthetic_bag(tmp_path / "drive.mcap", 2, 32, 64, seed=1)
    with RosClient() as ros:
        received: list[object] = []
        ros.node.create_subscription(Image, "/front/image_raw", received.append, reliable_qos())

        # Every played topic by default: /front/labels has no subscriber, so it times out, naming it
        # while it waits (every 5 s) and at the end.
        proc = _play(ros_domain, "--bag", bag, "--wait-for-subscribers", 1, "--wait-timeout", 6)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2, err
        lines = err.strip().splitlines()
        assert lines[0] == "sfnet-bag-play: waiting for 1 subscriber(s) on /front/image_raw, /front/labels", err
        assert lines[1].startswith("sfnet-bag-play: still no subscriber on ") and "/front/labels" in lines[1], err
        assert lines[-1].startswith("sfnet-bag-play: error: fewer than 1 subscriber(s) on "), err
        assert "/front/labels after 6.0 s" in lines[-1] and "--wait-topics" in lines[-1], err

        # The topic that matters only: plays at once.
        proc = _play(ros_domain, "--bag", bag, "--wait-for-subscribers", 1, "--wait-topics", "/front/image_raw",
                     "--wait-timeout", TIMEOUT)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert "waiting for 1 subscriber(s) on /front/image_raw\n" in err
        assert json.loads(out)["published"] == {"/front/image_raw": 2, "/front/labels": 2}
        wait_until(lambda: len(received) == 2, TIMEOUT, "both frames at the subscriber")

        # A topic that is not played is a one-line error.
        proc = _play(ros_domain, "--bag", bag, "--wait-for-subscribers", 1, "--wait-topics", "/nope")
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2 and err.strip().splitlines() == [
            "sfnet-bag-play: error: --wait-topics: /nope not played (played: /front/image_raw, /front/labels)"], err
