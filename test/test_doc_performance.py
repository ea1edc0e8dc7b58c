"""docs/performance.md: every ``bash`` block runs exactly as written, in order, in a fresh folder
holding ``training/`` and a stand-in ``runs/quick/best.pt`` (random weights: the page's numbers
come from a trained one); its first ``python`` block (the Segmenter example) runs there too.
Blocks fenced as ``text`` are the benchmark and TensorRT commands the page marks as not run here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_commands import bash_blocks, doc_environment, fenced_blocks, run_block

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "performance.md"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    from node_harness import write_test_checkpoint

    work = tmp_path / "work"
    (work / "runs" / "quick").mkdir(parents=True)
    (work / "training").symlink_to(REPO / "training")
    write_test_checkpoint(work / "runs" / "quick" / "best.pt")
    return work


def test_every_command_block_runs(workspace: Path) -> None:
    blocks = bash_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 2
    env = doc_environment(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                          SFNET_ROS_CACHE=str(workspace / "cache"))
    outputs = [run_block(block, workspace, env, timeout=900) for block in blocks]
    from sfnet_core.onnx.metadata import read_onnx_info

    quick = workspace / "runs" / "quick"
    assert read_onnx_info(quick / "sfnet_128x256.onnx").fixed_size == (128, 256)
    assert read_onnx_info(quick / "sfnet_dynamic.onnx").fixed_size is None
    assert read_onnx_info(quick / "sfnet_labels.onnx").output == "labels"
    int8 = read_onnx_info(quick / "sfnet_128x256_int8.onnx")
    assert int8.precision == "int8" and int8.extra["quantization"]["frames"] == 16
    report = json.loads(outputs[1].strip().splitlines()[-1])
    assert report["images"] == 50 and report["backend"].startswith("openvino int8")  # backend auto on a CPU


def test_the_python_example_runs(workspace: Path) -> None:
    import cv2

    from sfnet_core.data.synthetic_scenes.render import render_scene

    example = next(body for language, body in fenced_blocks(DOC.read_text(encoding="utf-8")) if language == "python")
    assert cv2.imwrite(str(workspace / "frame.png"), render_scene(seed=3, height=90, width=170)[0][..., ::-1])
    script = example + (
        "\nassert result.labels.shape == (90, 170) and result.confidence.shape == (90, 170)"
        "\nassert len(result.flows) == 1 and result.geometry.output_size == (90, 170)"
        "\nassert strip.shape[0] >= 90 and flow_rgb.ndim == 3"
        # what the comments say: the strip is RGB (its camera panel is the frame's RGB), and the
        # file written through OpenCV reads back as the same picture
        "\nassert (strip[-90:, :170] == rgb).all()"
        "\nassert (cv2.imread('strip.png')[..., ::-1] == strip).all()\nprint('ok')\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=workspace, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
