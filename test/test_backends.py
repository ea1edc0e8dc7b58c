"""Inference backends: a self-describing .onnx in ONNX Runtime through the same Segmenter, the
export cache for a .pt run in ONNX Runtime (atomic, shared by concurrent processes), the refusals,
and sfnet-eval on an .onnx. Real PyTorch, real ONNX Runtime (CPU execution provider); every load
names its backend (``auto`` and OpenVINO: test_openvino.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from backend_cases import agreement, frames

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.inference import Segmenter
from sfnet_core.io_utils import file_sha256
from sfnet_core.onnx.export import export_module, export_onnx
from sfnet_core.onnx.metadata import read_onnx_info

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dynamic_onnx(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(load_checkpoint(checkpoint), tmp_path_factory.mktemp("onnx") / "dynamic.onnx",
                       height=64, width=96, dynamic=True)


def test_metadata_describes_the_model(checkpoint: Path, dynamic_onnx: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(checkpoint)
    info = read_onnx_info(dynamic_onnx)
    assert info.model_name == "sfnet_resnet18" and info.classes == ck.classes and info.num_classes == 19
    assert info.mean == ck.mean and info.std == ck.std and info.precision == "fp32" and info.output == "logits"
    assert (info.batch, info.height, info.width) == (None, None, None) and info.fixed_size is None
    assert info.checkpoint_sha256 == file_sha256(checkpoint)
    assert info.model_options == ck.model_options and info.extra["exporter"]["onnx_opset"] == 17
    fixed = read_onnx_info(export_onnx(ck, tmp_path / "fixed.onnx", height=64, width=96, batch=2))
    assert (fixed.batch, fixed.height, fixed.width) == (2, 64, 96) and fixed.fixed_size == (64, 96)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "fixed.onnx")).metadata_props}
    assert json.loads(meta["sfnet.input"]) == {"name": "input", "layout": "NCHW", "batch": 2, "height": 64,
                                               "width": 96, "multiple_of": 32}


def test_onnx_segmenter_matches_torch(checkpoint: Path, dynamic_onnx: Path) -> None:
    torch_seg = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", precision="fp32", warmup=False)
    onnx_seg = Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", device="cpu", warmup=False)
    assert onnx_seg.backend.name == "onnxruntime" and onnx_seg.precision == "fp32"
    assert onnx_seg.classes == torch_seg.classes and onnx_seg.model_name == "sfnet_resnet18"
    batch = frames()
    for a, b, frame in zip(torch_seg.segment(batch, return_confidence=True),
                           onnx_seg.segment(batch, return_confidence=True), batch):
        assert b.labels.shape == frame.shape[:2] and b.labels.dtype == np.uint8
        assert agreement(a.labels, b.labels) >= 0.999
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 2
    # the same pre/post-processing options apply to either backend
    letter = Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", device="cpu", warmup=False,
                                       input_size=(64, 96), resize="letterbox", output="network")
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 96),
                                    resize="letterbox", output="network")
    a, b = letter.segment(batch[0]), ref.segment(batch[0])
    assert a.labels.shape == (64, 96) and (a.labels == 255).any() and agreement(a.labels, b.labels) >= 0.999


def test_fixed_size_model_sets_the_input_size(checkpoint: Path, tmp_path: Path) -> None:
    path = export_onnx(load_checkpoint(checkpoint), tmp_path / "fixed.onnx", height=64, width=96)  # batch 1
    seg = Segmenter.from_checkpoint(path, backend="onnxruntime", device="cpu", warmup=False)
    assert seg.input_size == (64, 96) and seg.backend.fixed_size == (64, 96)
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 96))
    batch = frames()  # three frames through a batch-1 model: run one by one
    for a, b in zip(seg.segment(batch), ref.segment(batch)):
        assert agreement(a.labels, b.labels) >= 0.999
    assert Segmenter.from_checkpoint(path, backend="onnxruntime", device="cpu", warmup=False,
                                     input_size=(60, 90)).input_size == (60, 90)
    with pytest.raises(ConfigError, match=r"takes 64x96 inputs; input_size 100x100 pads to 128x128"):
        Segmenter.from_checkpoint(path, backend="onnxruntime", device="cpu", warmup=False, input_size=(100, 100))


def test_refusals(checkpoint: Path, dynamic_onnx: Path, tmp_path: Path) -> None:
    bare = export_module(load_checkpoint(checkpoint).build_model(), tmp_path / "bare.onnx", height=64, width=64)
    with pytest.raises(CheckpointError, match="without sfnet_ros metadata.*class table and input normalisation"):
        Segmenter.from_checkpoint(bare, backend="onnxruntime", device="cpu", warmup=False)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(dynamic_onnx.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        Segmenter.from_checkpoint(broken, backend="onnxruntime", device="cpu", warmup=False)
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        Segmenter.from_checkpoint(tmp_path / "none.onnx", backend="onnxruntime", device="cpu", warmup=False)
    with pytest.raises(ConfigError, match="runs in ONNX Runtime or OpenVINO only"):
        Segmenter.from_checkpoint(dynamic_onnx, backend="torch", device="cpu", warmup=False)
    with pytest.raises(ConfigError, match="backend: expected one of auto, torch, onnxruntime, openvino"):
        Segmenter.from_checkpoint(dynamic_onnx, backend="tensorrt", device="cpu", warmup=False)
    with pytest.raises(ConfigError, match="an fp32 model runs in fp32 in ONNX Runtime; precision bf16"):
        Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", precision="bf16", device="cpu", warmup=False)
    with pytest.raises(CheckpointError, match="predicts 19 classes but the configuration expects 5"):
        Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", expected_num_classes=5, device="cpu",
                                  warmup=False)
    labels_only = export_onnx(load_checkpoint(checkpoint), tmp_path / "labels.onnx", height=64, width=64,
                              with_argmax=True)
    with pytest.raises(ConfigError, match="--with-argmax.*needs a model that outputs logits"):
        Segmenter.from_checkpoint(labels_only, backend="onnxruntime", device="cpu", warmup=False)
    seg = Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", device="cpu", warmup=False)
    with pytest.raises(ConfigError, match="return_flows needs the torch backend"):
        seg.segment(frames()[0], return_flows=True)
    with pytest.raises(ConfigError, match="pipeline compiled needs the torch backend"):
        Segmenter.from_checkpoint(dynamic_onnx, backend="onnxruntime", device="cpu", warmup=False, input_size=(64, 96),
                                  pipeline="compiled")
    # this onnxruntime has no CUDA provider: CUDA asked for explicitly is a clear error
    import onnxruntime as ort

    from sfnet_core.inference.backends import onnxruntime_providers

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="has no CUDA execution provider.*onnxruntime-gpu"):
            onnxruntime_providers(torch.device("cuda"), "fp32")


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "onnx").iterdir())


def test_pt_in_onnxruntime_through_the_export_cache(checkpoint: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv("SFNET_ROS_CACHE", str(root))
    seg = Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cpu", warmup=False,
                                    input_size=(64, 96))
    files = _cache_files(root)
    assert [Path(f).suffix for f in files] == [".lock", ".onnx"] and Path(files[0]).stem == Path(files[1]).stem
    entry = root / "onnx" / files[1]
    assert f"-{file_sha256(checkpoint)[:16]}-64x96-fp32-" in entry.name
    assert read_onnx_info(entry).batch is None  # one model for any number of cameras
    assert read_onnx_info(entry, require_digest=True).digest is not None  # checked before every reuse
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 96))
    for a, b in zip(seg.segment(frames()), ref.segment(frames())):
        assert agreement(a.labels, b.labels) >= 0.999
    stamp = entry.stat().st_mtime_ns
    Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cpu", warmup=False, input_size=(64, 96))
    assert entry.stat().st_mtime_ns == stamp and _cache_files(root) == files  # reused, not exported again
    # a damaged entry is exported again, not trusted
    entry.write_bytes(b"garbage")
    Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cpu", warmup=False, input_size=(64, 96))
    assert read_onnx_info(entry).checkpoint_sha256 == file_sha256(checkpoint) and _cache_files(root) == files
    # native size: a dynamic-axes entry
    Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cpu", warmup=False)
    assert any("-dynamic-fp32-" in name for name in _cache_files(root))
    with pytest.raises(ConfigError, match="sfnet-export --int8 --calibration"):
        Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", precision="int8", device="cpu", warmup=False)
    # an unwritable cache folder is a clear error naming the variable
    monkeypatch.setenv("SFNET_ROS_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="export cache .*SFNET_ROS_CACHE"):
        Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cpu", warmup=False, input_size=(64, 96))


def test_concurrent_processes_export_once(checkpoint: Path, tmp_path: Path) -> None:
    """Two processes starting together on an empty cache: one exports, the other waits and reuses."""
    root = tmp_path / "cache"
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from sfnet_core.inference.cache import cached_onnx\n"
        f"path = cached_onnx({str(checkpoint)!r}, (64, 96))\n"
        "print(path)\n"
    )
    env = {**os.environ, "SFNET_ROS_CACHE": str(root), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    logs = "".join(o[1] for o in outs)
    assert logs.count("export cache miss") <= 1 + logs.count("export cache hit")  # at most one export ran
    files = _cache_files(root)
    assert len(files) == 2 and not any(name.startswith(".") for name in files)  # no staging file left
    assert read_onnx_info(paths.pop()).checkpoint_sha256 == file_sha256(checkpoint)


def test_sfnet_eval_on_an_onnx_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.cli.evaluate_command import main
    from sfnet_core.data.datasets import SyntheticDataset
    from sfnet_core.models import build_model

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {
        "kind": "synthetic", "crop_size": [64, 128], "workers": 0,
        "synthetic": {"train_frames": 2, "val_frames": 2, "height": 64, "width": 128}}}))
    torch.manual_seed(0)
    model = build_model("sfnet_resnet18", 19)
    for m in model.modules():  # non-trivial statistics so the predictions vary across pixels
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.5)
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, model, "sfnet_resnet18", SyntheticDataset(2, 64, 128).classes)
    fixed = export_onnx(load_checkpoint(ck), tmp_path / "model.onnx", height=64, width=128)
    reports = {}
    for name, path, backend in (("pt", ck, "torch"), ("onnx", fixed, "onnxruntime")):
        assert main(["--config", str(recipe), "--checkpoint", str(path), "--backend", backend]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    assert reports["onnx"]["backend"].startswith("onnxruntime fp32") and reports["pt"]["backend"].startswith("torch")
    assert reports["onnx"]["miou"] == pytest.approx(reports["pt"]["miou"], abs=0.01)
    # a fixed-size model and images of another size: one clear line, not an ONNX Runtime error
    recipe.write_text(yaml.safe_dump({"data": {
        "kind": "synthetic", "crop_size": [64, 128], "workers": 0,
        "synthetic": {"train_frames": 2, "val_frames": 2, "height": 96, "width": 128}}}))
    assert main(["--config", str(recipe), "--checkpoint", str(fixed), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "takes 64x128 inputs, the validation images are 96x128: use --mode slide --window 64 128" in err
    assert main(["--config", str(recipe), "--checkpoint", str(fixed), "--mode", "slide", "--window", "64", "128"]) == 0
