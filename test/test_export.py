"""ONNX export: parity with PyTorch in ONNX Runtime at a fixed size and with dynamic axes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.cli.export import main
from sfnet_core.export import export_onnx
from sfnet_core.models import build_model

CLASSES = ClassTable(names=tuple(f"class{i}" for i in range(19)), colors=tuple((i, i, i) for i in range(19)))


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "sfnet.pt"
    save_checkpoint(path, build_model("sfnet_resnet18", 19, aux=True), "sfnet_resnet18", CLASSES)
    return path


def run_both(ckpt_path: Path, onnx_path: Path, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime output, PyTorch logits) on the same random normalised input."""
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(shape, dtype=np.float32))
    with torch.inference_mode():
        ref = load_checkpoint(ckpt_path).build_model()(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    return session.run(None, {"input": x.numpy()})[0], ref


def test_fixed_size_parity(ckpt_path: Path, tmp_path: Path) -> None:
    path = export_onnx(load_checkpoint(ckpt_path), tmp_path / "fixed.onnx", height=64, width=96)
    onnx.checker.check_model(str(path))
    out, ref = run_both(ckpt_path, path, (1, 3, 64, 96))
    assert out.shape == ref.shape == (1, 19, 64, 96)
    assert np.abs(out - ref).max() < 1e-3
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert ClassTable.from_dict(json.loads(meta["sfnet.classes"])) == CLASSES
    assert json.loads(meta["sfnet.normalization"])["mean"] == [0.485, 0.456, 0.406]
    assert meta["sfnet.output"] == "logits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]  # no temp files left


def test_dynamic_axes_at_another_size(ckpt_path: Path, tmp_path: Path) -> None:
    path = export_onnx(load_checkpoint(ckpt_path), tmp_path / "dyn.onnx", height=64, width=96, dynamic=True)
    out, ref = run_both(ckpt_path, path, (2, 3, 96, 128))  # traced at 1x3x64x96
    assert out.shape == ref.shape == (2, 19, 96, 128)
    assert np.abs(out - ref).max() < 1e-3
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_cli_with_argmax(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "labels.onnx"
    argv = ["--checkpoint", str(ckpt_path), "--onnx", str(path), "--height", "64", "--width", "64", "--with-argmax"]
    assert main(argv + ["--verify"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label_agreement"] >= 0.999
    out, ref = run_both(ckpt_path, path, (1, 3, 64, 64))
    assert out.shape == (1, 64, 64) and out.dtype == np.int64
    assert (out == ref.argmax(1)).mean() >= 0.999


def test_cli_errors(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "none.pt: checkpoint file not found" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt_path), "--onnx", str(tmp_path / "m.onnx"), "--height", "70"]) == 2
    assert "multiples of 32, got 70x1024" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
