"""docs/evaluation-and-bags.md: every ``bash`` block of the page runs, exactly as written and in
order, in one folder prepared as the page says (the venv's scripts first on PATH, ``training/``
and ``config/`` at hand, ``runs/quick/last.pt`` a 19-class checkpoint). The demo's training is
taken from its cache (``SFNET_CACHE``), pre-filled with that checkpoint, so the block runs the
documented command without minutes of training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from doc_commands import bash_blocks, doc_environment, run_block
from node_harness import REPO_ROOT, write_test_checkpoint

from sfnet_ros.tools.bag_io import BagReader

DOC = REPO_ROOT / "docs" / "evaluation-and-bags.md"
TIMEOUT = 600


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    from sfnet_ros.tools.demo import DEFAULT_CONFIG, cache_key

    work = tmp_path / "work"
    work.mkdir()
    for name in ("training", "config"):
        (work / name).symlink_to(REPO_ROOT / name)
    checkpoint = write_test_checkpoint(work / "runs" / "quick" / "last.pt", model_name="sfnet_shufflenetv2")
    # the cache entry sfnet-demo looks for (the default recipe, no overrides)
    cached = tmp_path / "cache" / cache_key(DEFAULT_CONFIG)
    cached.mkdir(parents=True)
    (cached / "last.pt").write_bytes(checkpoint.read_bytes())
    (cached / "demo_done.json").write_text(json.dumps({"iterations": 0}))
    return work


def test_every_command_block_runs(workspace: Path, ros_domain: dict[str, str]) -> None:
    blocks = bash_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    env = doc_environment(ros_domain, SFNET_CACHE=str(workspace.parent / "cache"), OMP_NUM_THREADS="1")
    for block in blocks:
        run_block(block, workspace, env, TIMEOUT)

    # what the page says the commands leave behind
    assert json.loads((workspace / "runs" / "quick" / "val.json").read_text())["images"] == 2
    assert json.loads((workspace / "runs" / "quick" / "pred.json").read_text())["matched"] == 2
    strips = sorted(p.name for p in (workspace / "drive_strips").glob("*.png"))
    assert [name.split("_")[0] for name in strips] == ["000002", "000003", "000004", "000005"], strips
    with BagReader(workspace / "drive_segmented.mcap") as reader:
        assert reader.topics["/front/segmentation/mask/car"].count == 8
    with BagReader(workspace / "recorded.mcap") as reader:
        assert set(reader.topics) == {"/front/image_raw", "/front/labels"}
    with BagReader(workspace / "recorded_db3") as reader:
        assert list(reader.topics) == ["/front/image_raw"]
    assert (workspace / "recorded_db3" / "recorded_db3.db3").exists()
    assert len(list((workspace / "my_data" / "images" / "val").iterdir())) == 2
    assert len(list((workspace / "my_data" / "labels" / "train").iterdir())) == 6
    fleet = json.loads((workspace / "fleet_report" / "summary.json").read_text())
    assert fleet["overall"]["labelled_frames"] == 4 * 2 * 6 and not fleet["failed"]
    ab = json.loads((workspace / "fleet_ab" / "summary.json").read_text())["compare"]
    assert ab["gate"]["passed"] and ab["delta_miou"]["value"] == pytest.approx(0, abs=0.01)
    merged = json.loads((workspace / "fleet_merged" / "summary.json").read_text())
    assert merged["confusion"] == fleet["confusion"]  # two shares merged = the whole fleet, exactly
    report = json.loads((workspace / "demo_out" / "report.json").read_text())
    assert report["live"]["received"] == 8 and (workspace / "demo_out" / "strip.png").exists()
    assert not [p.name for p in workspace.iterdir() if p.name.startswith(".")]  # no staging left over
