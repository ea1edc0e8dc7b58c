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
from sfnet_core.cli.export_command import main
from sfnet_core.data.classes import ClassTable
from sfnet_core.models import build_model
from sfnet_core.onnx.export import export_onnx
from sfnet_core.onnx.metadata import read_onnx_info

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
    assert json.loads(meta["sfnet.digest"])["algorithm"] == "sha256-v1"  # checked at every load
    assert read_onnx_info(path).digest == json.loads(meta["sfnet.digest"])
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


def _checksums(*roots: Path) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()}


def test_cli_bad_inputs_one_line_exit_2(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #9: every bad input is one line on stderr naming the problem, exit 2, and nothing on disk
    changes (the checkpoint, an existing output, the calibration folder)."""
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep me")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    (folder / "inside.txt").write_text("keep")
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "not_an_image.txt").write_text("x")
    base = ["--checkpoint", str(ckpt_path), "--height", "64", "--width", "64"]
    new = ["--onnx", str(tmp_path / "new.onnx")]
    cases = [
        (["--batch", "0", *new], "--batch: must be >= 1, got 0"),
        (["--batch", "-3", "--verify", *new], "--batch: must be >= 1, got -3"),
        (["--onnx", str(existing)], "exists (file); pass --overwrite"),
        (["--onnx", str(folder)], "exists (folder)"),
        (["--onnx", str(folder), "--overwrite"], "is a folder; the output is a file"),
        (["--onnx", str(existing / "sub.onnx")], "is a file, not a folder"),
        (["--onnx", str(ckpt_path), "--overwrite"], "is the input"),
        (["--int8", *new], "--int8: needs --calibration"),
        (["--calibration", str(calib), *new], "only with --int8"),
        (["--int8", "--calibration", str(calib), "--dynamic", *new], "drop --dynamic"),
        (["--int8", "--calibration", str(calib), "--frames", "0", *new], "--frames: must be >= 1, got 0"),
        (["--int8", "--calibration", str(tmp_path / "nowhere"), *new], "--calibration: " + str(tmp_path / "nowhere")),
        (["--int8", "--calibration", str(calib), "--image-topic", "/cam", *new], "--image-topic: only for a bag"),
        (["--int8", "--calibration", str(calib), *new], "holds no images"),
        (["--opset", "15", *new], "opset 15 lacks GridSample"),
        (["--width", "0", *new], "must be positive multiples of 32, got 64x0"),
    ]
    before = _checksums(ckpt_path, tmp_path)
    for extra, expected in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sfnet-export: error: ") and expected in lines[0], (extra, err)
        assert "Traceback" not in err
        assert _checksums(ckpt_path, tmp_path) == before, extra  # nothing written, nothing replaced
        assert not (tmp_path / "new.onnx").exists()


def test_cli_batch_2_verify_and_overwrite(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    out = tmp_path / "b2.onnx"
    argv = ["--checkpoint", str(ckpt_path), "--onnx", str(out), "--height", "64", "--width", "64", "--batch", "2"]
    assert main([*argv, "--verify"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label_agreement"] >= 0.999
    assert read_onnx_info(out).batch == 2
    stamp = out.read_bytes()
    assert main(argv) == 2 and "exists (file)" in capsys.readouterr().err
    assert out.read_bytes() == stamp
    assert main([*argv, "--batch", "1", "--overwrite"]) == 0
    assert read_onnx_info(out).batch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2.onnx"]


def _calibration_frames(folder: Path, count: int = 4) -> Path:
    import cv2

    from sfnet_core.data.synthetic_scenes.render import render_scene

    folder.mkdir()
    for i in range(count):
        assert cv2.imwrite(str(folder / f"f{i}.png"), render_scene(seed=70 + i, height=80, width=120)[0][..., ::-1])
    return folder


def test_cli_int8_from_an_image_folder(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       one_torch_thread: None) -> None:
    from sfnet_core.inference import Segmenter

    calib = _calibration_frames(tmp_path / "calib")
    out = tmp_path / "out" / "int8.onnx"
    assert main(["--checkpoint", str(ckpt_path), "--onnx", str(out), "--height", "64", "--width", "96", "--int8",
                 "--calibration", str(calib), "--frames", "3", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 3 frames" in printed
    assert json.loads(printed.splitlines()[-1])["label_agreement"] >= 0.95
    info = read_onnx_info(out)
    assert info.precision == "int8" and info.fixed_size == (64, 96) and info.classes == CLASSES
    assert info.extra["quantization"]["frames"] == 3 and info.extra["quantization"]["format"] == "QDQ"
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(p.name for p in out.parent.iterdir()) == ["int8.onnx"]  # no staging left
    seg = Segmenter.from_checkpoint(out, device="cpu", warmup=False)
    ref = Segmenter.from_checkpoint(ckpt_path, device="cpu", warmup=False, input_size=(64, 96))
    assert seg.precision == "int8" and seg.input_size == (64, 96)
    frame = np.ascontiguousarray(__import__("cv2").imread(str(calib / "f0.png"))[..., ::-1])
    got, want = seg.segment(frame), ref.segment(frame)
    assert got.labels.shape == (80, 120) and float((got.labels == want.labels).mean()) >= 0.95


def test_cli_int8_from_a_bag(ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             one_torch_thread: None) -> None:
    pytest.importorskip("rosbags")
    from sfnet_ros.tools.export_with_bags import main as ros_main
    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    bag, _, _ = write_synthetic_bag(tmp_path / "calib.mcap", 5, 64, 96)  # /front/image_raw and /front/labels
    out = tmp_path / "int8.onnx"
    # the core command never imports the ROS layer: it points to the installed one
    argv = ["--checkpoint", str(ckpt_path), "--onnx", str(out), "--height", "64", "--width", "96", "--int8",
            "--calibration", str(bag), "--frames", "2"]
    # the core command never imports the ROS layer: it points to the installed one
    assert main(argv) == 2
    assert "reading bags needs the ROS layer" in capsys.readouterr().err
    assert ros_main(argv) == 2
    err = capsys.readouterr().err
    assert "--image-topic:" in err and "holds 2 image topics" in err and "/front/image_raw" in err
    assert ros_main([*argv, "--image-topic", "/nope"]) == 2
    assert "'/nope' not in the bag" in capsys.readouterr().err
    assert ros_main([*argv, "--image-topic", "/front/image_raw"]) == 0
    assert "calibrated on 2 frames" in capsys.readouterr().out
    assert read_onnx_info(out).extra["quantization"]["calibration"] == "calib.mcap (2 frames)"


def test_the_parsers_constants_are_the_librarys(tmp_path: Path) -> None:
    """sfnet-export's parser repeats two constants so that it answers without importing torch; the
    checks of its files and arguments run before torch is imported too."""
    import subprocess
    import sys
    import zipfile

    from sfnet_core.cli import export_command as cli
    from sfnet_core.inference.geometry import RESIZE_POLICIES
    from sfnet_core.onnx.export import DEFAULT_OPSET

    assert cli.DEFAULT_OPSET == DEFAULT_OPSET and cli.RESIZE_POLICIES == RESIZE_POLICIES
    with zipfile.ZipFile(tmp_path / "ck.pt", "w") as archive:  # the shape of a torch.save file, not loaded
        archive.writestr("ck/data.pkl", b"")
    probe = ("import sys; from sfnet_ros.tools.export_with_bags import build_parser, main; build_parser(); "
             "codes = [main(['--checkpoint', 'missing.pt', '--onnx', 'm.onnx']), "
             "main(['--checkpoint', 'ck.pt', '--onnx', 'm.onnx', '--int8', '--calibration', 'nowhere'])]; "
             "print(codes, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.stdout.strip() == "[2, 2] False", run.stderr
    assert "missing.pt: checkpoint file not found" in run.stderr and "--calibration: nowhere not found" in run.stderr


def test_calibration_progress_counts_the_frames_run() -> None:
    """The int8 calibration bar advances as ONNX Runtime runs each frame (it asks for the next batch
    only after the last one ran); off when stderr is not a terminal."""
    import io

    from tqdm import tqdm

    from sfnet_core.onnx.quantize import _Calibration, _progress

    batches = [np.zeros((1, 3, 2, 2), np.float32)] * 3
    bar = tqdm(total=3, file=io.StringIO(), disable=False)
    reader = _Calibration(batches, "input", bar)
    shown = []
    while reader.get_next() is not None:
        shown.append(bar.n)
    assert shown == [0, 1, 2] and bar.n == 3 and reader.frames == 3
    assert _progress(batches, enabled=True).disable  # pytest's captured stderr is no terminal
