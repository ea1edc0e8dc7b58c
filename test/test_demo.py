"""sfnet-demo end to end with a tiny recipe: bag, training (then the cache), offline and live eval,
the strip PNG, and no process left behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml
from node_harness import REPO_ROOT, processes_on_domain

TINY_RECIPE = {
    "model": {"name": "sfnet_shufflenetv2", "aux": False},
    "data": {"kind": "synthetic", "crop_size": [64, 128], "scale_range": [1.0, 1.0], "workers": 0,
             "val_split": None, "synthetic": {"train_frames": 4, "val_frames": 1, "height": 64, "width": 128}},
    "loss": {"ohem": False},
    "schedule": {"iterations": 2, "batch_size": 2},
    "runtime": {"device": "cpu", "progress": False, "eval_interval": 0},
}


def test_demo_runs_and_caches(tmp_path: Path, ros_domain: dict[str, str]) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    cmd = [sys.executable, "-m", "sfnet_ros.tools.demo", "--out", str(tmp_path / "out"), "--frames", "3",
           "--size", "64x128", "--config", str(recipe), "--cache-dir", str(tmp_path / "cache"), "--lockstep",
           "--domain-id", ros_domain["ROS_DOMAIN_ID"]]
    first = subprocess.run(cmd, env=ros_domain, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training sfnet_shufflenetv2" in first.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["live"]["sent"] == 3 and report["live"]["received"] == 3 and report["live"]["dropped"] == 0
    assert report["live"]["drop_reasons"] == {}
    assert report["offline"]["frames"] == 3 and 0 <= report["offline"]["miou"] <= 1
    strip = cv2.imread(report["files"]["strip"])
    assert strip is not None and strip.shape[1] == 5 * 512  # five 256-px-high panels of 64x128 frames, side by side
    for key in ("bag", "segmented_bag", "node_outputs_bag", "strip"):
        assert Path(report["files"][key]).exists()
        assert report["files"][key] in first.stdout  # the paths are printed for the person
    assert "mIoU" in first.stdout and "fps" in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "tiny.yaml"]  # no staging left

    # an existing --out is refused ...
    again = subprocess.run(cmd, env=ros_domain, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"sfnet-demo: error: --out: {tmp_path / 'out'} exists (folder); pass --overwrite to replace it, "
        "or choose another path"]
    # ... --overwrite never deletes what a user added there (the folder's manifest says what the demo wrote) ...
    (tmp_path / "out" / "notes.txt").write_text("my notes on this run")
    kept = subprocess.run([*cmd, "--overwrite"], env=ros_domain, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert kept.returncode == 2 and len(kept.stderr.strip().splitlines()) == 1, kept.stderr
    assert "notes.txt" in kept.stderr and (tmp_path / "out" / "notes.txt").exists()
    (tmp_path / "out" / "notes.txt").unlink()
    # ... and replaced with --overwrite. Run from another folder with relative paths: the demo hands
    # its children absolute ones. Same recipe -> the cached checkpoint, no training.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = ["--out", "../out", "--config", "../tiny.yaml", "--cache-dir", "../cache", "--overwrite"]
    # Without --domain-id the demo takes $ROS_DOMAIN_ID (the test's own domain).
    second = subprocess.run([*cmd[:3], *relative, "--frames", "3", "--size", "64x128", "--lockstep"],
                            env=ros_domain, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"starting sfnet_node (ROS_DOMAIN_ID={ros_domain['ROS_DOMAIN_ID']})" in second.stderr
    assert "reusing the checkpoint" in second.stderr and "training sfnet" not in second.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["live"]["received"] == 3
    assert processes_on_domain(ros_domain["ROS_DOMAIN_ID"], ("sfnet_ros.node", "sfnet_ros.tools.bag_record")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "elsewhere", "out", "tiny.yaml"]


def test_a_node_that_fails_to_configure_is_noticed_at_once(tmp_path: Path, ros_domain: dict[str, str]) -> None:
    """The demo reads the node's ``configure failed:`` line instead of waiting START_TIMEOUT_S for
    "active:" (the message would then say "not active after 180 s")."""
    from node_harness import NodeProcess

    from sfnet_core.errors import SFNetError
    from sfnet_ros.tools.demo import START_TIMEOUT_S, wait_for_node

    with NodeProcess(ros_domain, tmp_path, parameters={"checkpoint": str(tmp_path / "missing.pt"),
                                                       "device": "cpu"}) as node, pytest.raises(SFNetError) as info:
        wait_for_node(node.log_path, node.process, START_TIMEOUT_S)
    assert str(info.value).startswith("sfnet_node configure failed:") and "missing.pt" in str(info.value)
