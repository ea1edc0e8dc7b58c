"""docs/training.md: every ``bash`` block of the page runs, exactly as written and in order, in a
fresh folder holding ``training/`` and ``bench/`` (the venv's scripts first on PATH). Blocks
fenced as ``text`` are the GPU-node commands the page marks as not run here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from doc_commands import bash_blocks, doc_environment, run_block

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "training.md"
TIMEOUT = 900


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("training", "bench"):
        (work / name).symlink_to(REPO / name)
    return work


def test_every_command_block_runs(workspace: Path) -> None:
    blocks = bash_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 3
    env = doc_environment(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for block in blocks:
        run_block(block, workspace, env, timeout=TIMEOUT)

    from sfnet_core.checkpoint import load_checkpoint

    runs = workspace / "runs"
    assert load_checkpoint(runs / "quick" / "last.pt").train_state["iteration"] == 4  # resumed to 4
    assert load_checkpoint(runs / "finetuned" / "last.pt").train_state["config"]["schedule"]["iterations"] == 1000
    log = (runs / "finetuned" / "train.log").read_text()
    assert f"model.init_from {runs / 'quick' / 'last.pt'}: loaded" in log  # relative to the cwd
    assert not torch.equal(  # the fine-tuned run started from the checkpoint, then trained on
        load_checkpoint(runs / "finetuned" / "last.pt").state_dict["decoder.classifier.weight"],
        load_checkpoint(runs / "quick" / "last.pt").state_dict["decoder.classifier.weight"])
    assert (runs / "fam_tiny" / "fam_ablation.json").is_file()
    assert len(list((workspace / "data" / "synth" / "images" / "val").iterdir())) == 4
