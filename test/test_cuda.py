"""The GPU paths: training with AMP and the Segmenter in fp32 / fp16 / bf16, channels_last, the
whole step as one CUDA graph or one compiled region, the banded post-processing and ONNX Runtime's
CUDA provider, checked against the CPU fp32 reference. ``bench/gpu_check.sh`` runs this file and
the GPU rows of ``bench/speed.py`` in one go on a lent GPU machine.

Skipped without CUDA (CI and the development machine have none); run them on a GPU machine with
``python -m pytest test/test_cuda.py``. They need only sfnet_core (no ROS), so they also run in a
plain PyTorch environment with ``PYTHONPATH=.``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

H, W = 128, 256


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """sfnet_resnet18 trained on CUDA with mixed precision for a few hundred iterations."""
    from sfnet_core.training.config import load_train_config
    from sfnet_core.training.engine import train

    root = tmp_path_factory.mktemp("cuda_train")
    recipe = {
        "model": {"name": "sfnet_resnet18", "aux": True},
        "data": {"kind": "synthetic", "crop_size": [H, W], "scale_range": [0.75, 1.5], "workers": 2,
                 "synthetic": {"train_frames": 400, "val_frames": 16, "height": H, "width": W}},
        "loss": {"ohem": True, "ohem_min_kept": 10000},
        "optim": {"lr": 0.02},
        "schedule": {"iterations": 300, "batch_size": 8, "warmup_iters": 20},
        "runtime": {"device": "cuda", "precision": "auto", "channels_last": True, "log_interval": 50,
                    "image_interval": 100, "checkpoint_interval": 100, "eval_interval": 150,
                    "progress": False},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = train(load_train_config(path), root / "run")
    return root / "run", result


def test_amp_training_on_cuda_learns(trained) -> None:
    run, result = trained
    assert result.iteration == 300
    # chance on these frames is about 0.04; the CPU run of the same size reaches ~0.5
    assert result.miou is not None and result.miou > 0.30, result.miou
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["runtime"]["device"] == "cuda"
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()


def test_amp_resume_continues_on_cuda(trained, tmp_path: Path) -> None:
    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.training.config import load_train_config
    from sfnet_core.training.engine import train

    run, _ = trained
    cfg = load_train_config(run / "config.yaml", ["schedule.iterations=310", "runtime.eval_interval=0"])
    result = train(cfg, run, resume=True)
    assert result.iteration == 310
    assert load_checkpoint(run / "last.pt").train_state["iteration"] == 310


def _frames(count: int = 4) -> list[np.ndarray]:
    from sfnet_core.data.synthetic_scenes.render import render_scene

    # held-out seeds, two sizes that are not multiples of 32
    return [render_scene(seed=10_000 + i, height=H + 7 * (i % 2), width=W - 13 * (i % 2))[0]
            for i in range(count)]


@pytest.fixture(scope="module")
def reference(trained):
    from sfnet_core.inference import Segmenter

    run, _ = trained
    cpu = Segmenter.from_checkpoint(run / "best.pt", device="cpu", precision="fp32", warmup=False)
    frames = _frames()
    return run / "best.pt", frames, [r.labels for r in cpu.segment(frames)]


@pytest.mark.parametrize(("precision", "channels_last", "compile_model", "min_agreement"), [
    ("fp32", False, False, 0.999),
    ("fp32", True, False, 0.999),
    ("fp16", True, False, 0.995),
    ("bf16", True, False, 0.99),
])
def test_segmenter_on_cuda_matches_cpu(reference, precision, channels_last, compile_model, min_agreement) -> None:
    from sfnet_core.inference import Segmenter

    checkpoint, frames, expected = reference
    seg = Segmenter.from_checkpoint(checkpoint, device="cuda", precision=precision,
                                    channels_last=channels_last, compile=compile_model)
    assert seg.device.type == "cuda" and seg.precision == precision
    results = seg.segment(frames, return_confidence=True, return_flows=True)
    for frame, result, labels in zip(frames, results, expected):
        assert result.labels.dtype == np.uint8 and result.labels.shape == frame.shape[:2]
        assert result.confidence.shape == frame.shape[:2]
        agreement = float((result.labels == labels).mean())
        assert agreement >= min_agreement, (precision, agreement)
        assert all(np.isfinite(f).all() for f in result.flows)


@pytest.mark.parametrize("pipeline", ["cuda_graph", "compiled"])
def test_static_pipeline_on_cuda_matches_cpu(reference, pipeline) -> None:
    """The whole step (upload, normalise, resize, network, resample, argmax, download) as one CUDA
    graph / one compiled region at a fixed input size, several cameras batched."""
    from sfnet_core.inference import Segmenter

    checkpoint, frames, _ = reference
    cpu = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", input_size=(H, W), warmup=False)
    expected = [r.labels for r in cpu.segment(frames)]
    seg = Segmenter.from_checkpoint(checkpoint, device="cuda", precision="fp16", input_size=(H, W),
                                    pipeline=pipeline, warmup=False)
    for _ in range(3):  # built on the first call, replayed after: the buffers must not leak between calls
        results = seg.segment(frames, return_confidence=True)
        for frame, result, labels in zip(frames, results, expected):
            assert result.labels.shape == frame.shape[:2] and result.confidence.shape == frame.shape[:2]
            assert float((result.labels == labels).mean()) >= 0.995, pipeline
    assert len(seg._static) == 1
    one = seg.segment(frames[1])  # another set of frame sizes: a second static step
    assert float((one.labels == expected[1]).mean()) >= 0.995 and len(seg._static) == 2
    eager = Segmenter.from_checkpoint(checkpoint, device="cuda", precision="fp16", input_size=(H, W), warmup=False)
    for a, b in zip(seg.segment(frames), eager.segment(frames)):
        assert float((a.labels == b.labels).mean()) >= 0.999


def test_banded_postprocess_on_cuda_is_band_invariant() -> None:
    from sfnet_core.inference.postprocess import resample_argmax

    torch.manual_seed(0)
    scores = torch.randn(2, 19, 24, 32, device="cuda") * 3
    whole, conf = resample_argmax(scores, (301, 401), confidence=True, band_bytes=1 << 40)
    for band in (1, 1 << 16):
        labels, c = resample_argmax(scores, (301, 401), confidence=True, band_bytes=band)
        assert torch.equal(labels, whole) and torch.equal(c, conf)
    cpu, _ = resample_argmax(scores.cpu(), (301, 401))
    assert float((cpu == whole.cpu()).float().mean()) >= 0.999


def test_letterbox_on_cuda_matches_cpu(reference) -> None:
    from sfnet_core.inference import Segmenter

    checkpoint, frames, _ = reference
    kwargs = dict(precision="fp32", input_size=(H, W), resize="letterbox", output="network", warmup=False)
    cpu = Segmenter.from_checkpoint(checkpoint, device="cpu", **kwargs)
    gpu = Segmenter.from_checkpoint(checkpoint, device="cuda", **kwargs)
    for a, b in zip(cpu.segment(frames), gpu.segment(frames)):
        assert a.geometry == b.geometry and float((a.labels == b.labels).mean()) >= 0.999


def test_onnxruntime_cuda_backend(reference, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("the installed onnxruntime has no CUDA execution provider")
    from sfnet_core.inference import Segmenter

    checkpoint, frames, expected = reference
    seg = Segmenter.from_checkpoint(checkpoint, backend="onnxruntime", device="cuda", cache_dir=tmp_path,
                                    warmup=False)
    assert seg.device.type == "cuda" and seg.backend.providers[0] in ("TensorrtExecutionProvider",
                                                                        "CUDAExecutionProvider")
    for result, labels in zip(seg.segment(frames), expected):
        assert float((result.labels == labels).mean()) >= 0.999


def test_segmenter_auto_is_fp16_on_cuda_and_bgr_matches(reference) -> None:
    from sfnet_core.inference import Segmenter

    checkpoint, frames, _ = reference
    seg = Segmenter.from_checkpoint(checkpoint)
    assert seg.device.type == "cuda" and seg.precision == "fp16"
    rgb = seg.segment(frames[0]).labels
    bgr = seg.segment(np.ascontiguousarray(frames[0][..., ::-1]), bgr=True).labels
    np.testing.assert_array_equal(rgb, bgr)
    alone = [seg.segment(f).labels for f in frames]
    batched = [r.labels for r in seg.segment(frames)]
    for a, b in zip(alone, batched):
        assert float((a == b).mean()) >= 0.999


def test_onnx_export_of_cuda_trained_checkpoint_runs_on_cpu(reference, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sfnet_core.cli.export_command import main as export_main

    checkpoint, _, _ = reference
    assert export_main(["--checkpoint", str(checkpoint), "--onnx", str(tmp_path / "m.onnx"),
                        "--height", str(H), "--width", str(W), "--verify"]) == 0
