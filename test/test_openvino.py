"""The OpenVINO backend: the same self-describing .onnx files as ONNX Runtime (fp32 and int8 QDQ)
through the same Segmenter, its compiled-model cache under the export cache, its refusals, what
``backend: auto`` chooses, and sfnet-eval with --backend openvino as a real process. Real
PyTorch, real OpenVINO (CPU plugin), real ONNX Runtime (for the int8 quantisation)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_cases import agreement, frames

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.inference import Segmenter
from sfnet_core.inference.loader import choose_backend, open_model
from sfnet_core.inference.openvino_backend import OpenVinoBackend, native_bf16, openvino_error
from sfnet_core.onnx.export import export_onnx
from sfnet_core.onnx.metadata import read_onnx_info

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ov_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def dynamic_onnx(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(load_checkpoint(checkpoint), tmp_path_factory.mktemp("onnx") / "dynamic.onnx",
                       height=64, width=96, dynamic=True)


@pytest.fixture(scope="module")
def fixed_onnx(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed 64x128, batch-1 export: what int8 quantisation takes, and sfnet-eval's whole images."""
    return export_onnx(load_checkpoint(checkpoint), tmp_path_factory.mktemp("fixed") / "model.onnx",
                       height=64, width=128)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export cache root of this module's loads (the caching test uses its own)."""
    return tmp_path_factory.mktemp("cache")


def test_parity_with_torch_fp32(checkpoint: Path, dynamic_onnx: Path, cache: Path) -> None:
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", precision="fp32", warmup=False)
    seg = Segmenter.from_checkpoint(dynamic_onnx, backend="openvino", precision="fp32", device="cpu", warmup=False,
                                    threads=1, cache_dir=cache)
    assert seg.backend.name == "openvino" and seg.precision == "fp32" and seg.device.type == "cpu"
    assert seg.backend.describe() == "openvino fp32 (1 threads) on cpu"
    # metadata: classes, normalisation and model name come from the file
    assert seg.classes == ref.classes and (seg.mean, seg.std) == (ref.mean, ref.std)
    assert seg.model_name == "sfnet_resnet18" and seg.num_classes == 19
    batch = frames()
    for a, b, frame in zip(ref.segment(batch, return_confidence=True),
                           seg.segment(batch, return_confidence=True), batch):
        assert b.labels.shape == frame.shape[:2] and b.labels.dtype == np.uint8
        assert agreement(a.labels, b.labels) >= 0.999
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 2
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = ref.backend(x)
        got = seg.backend(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)
    with pytest.raises(ConfigError, match="return_flows needs the torch backend, not openvino"):
        seg.segment(batch[0], return_flows=True)


def test_fixed_size_and_fixed_batch(checkpoint: Path, tmp_path: Path, cache: Path) -> None:
    path = export_onnx(load_checkpoint(checkpoint), tmp_path / "fixed.onnx", height=64, width=96, batch=2)
    seg = Segmenter.from_checkpoint(path, backend="openvino", device="cpu", precision="fp32", warmup=False,
                                    cache_dir=cache)
    assert seg.input_size == (64, 96) and seg.backend.fixed_size == (64, 96)
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 96))
    batch = frames()  # three frames through a batch-2 model: a chunk of 2, then one padded
    for a, b in zip(seg.segment(batch), ref.segment(batch)):
        assert agreement(a.labels, b.labels) >= 0.999
    with pytest.raises(ConfigError, match=r"takes 64x96 inputs; input_size 100x100 pads to 128x128"):
        Segmenter.from_checkpoint(path, backend="openvino", device="cpu", warmup=False, input_size=(100, 100),
                                  cache_dir=cache)


def test_int8_qdq_model_runs_in_int8(checkpoint: Path, fixed_onnx: Path, tmp_path: Path, cache: Path) -> None:
    from sfnet_core.onnx.quantize import quantize_int8

    fp32 = fixed_onnx
    prep = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 128))
    calib = [prep.preprocess(f).numpy() for f in frames()[:2]]
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib, calibration_source="test")
    seg = Segmenter.from_checkpoint(int8, backend="openvino", device="cpu", warmup=False, cache_dir=cache)
    assert seg.precision == "int8" and seg.backend.describe().startswith("openvino int8")
    ort = Segmenter.from_checkpoint(int8, backend="onnxruntime", device="cpu", warmup=False)
    x = prep.preprocess(frames()[0])
    with torch.inference_mode():
        got, ort_logits, fp = seg.backend(x), ort.backend(x).clone(), prep.backend(x)
    assert torch.isfinite(got).all() and got.shape == (1, 19, 64, 128)
    # int8 arithmetic differs between runtimes, but both approximate the fp32 network
    assert torch.corrcoef(torch.stack([got.flatten(), fp.flatten()]))[0, 1] > 0.9
    assert torch.corrcoef(torch.stack([got.flatten(), ort_logits.flatten()]))[0, 1] > 0.9
    for precision in ("fp32", "bf16"):
        with pytest.raises(ConfigError, match=f"an int8 model runs in int8 in OpenVINO; precision {precision}"):
            Segmenter.from_checkpoint(int8, backend="openvino", precision=precision, device="cpu", warmup=False,
                                      cache_dir=cache)


def test_compiled_model_cache(dynamic_onnx: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    info = read_onnx_info(dynamic_onnx)
    first = open_model(dynamic_onnx, backend="openvino", device="cpu", precision="fp32", cache_dir=root)
    files = ov_files(root / "openvino")
    assert files and all(f.parent.parent == root / "openvino" for f in files)  # <cache>/openvino/<model-key>/
    assert files[0].parent.name.startswith("dynamic-")
    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = open_model(dynamic_onnx, backend="openvino", device="cpu", precision="fp32", cache_dir=root)
    assert {f: f.stat().st_mtime_ns for f in ov_files(root / "openvino")} == stamps  # a hit: nothing new
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first.backend(x).clone(), second.backend(x))
    # a corrupted copy is refused by its digest before OpenVINO (or its cache) sees it
    edited = tmp_path / "dynamic.onnx"
    data = bytearray(dynamic_onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights
    edited.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(edited.name)):
        open_model(edited, backend="openvino", device="cpu", cache_dir=root)
    assert ov_files(root / "openvino") == files and info.digest is not None


def _entry(root: Path) -> Path:
    """The one compiled-model entry under ``root``'s OpenVINO cache."""
    entries = [f for f in ov_files(root / "openvino") if f.suffix == ".bin"]
    assert len(entries) == 1, ov_files(root / "openvino")
    return entries[0]


def _reload(onnx: Path, root: Path, caplog: pytest.LogCaptureFixture) -> tuple[torch.Tensor, list[str]]:
    """Open ``onnx`` in OpenVINO through ``root``: its scores on a fixed input, and the cache's warnings."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sfnet_core.inference.cache"):
        model = open_model(onnx, backend="openvino", device="cpu", precision="fp32", cache_dir=root)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    return model.backend(x).clone(), [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_damaged_compiled_entry_is_compiled_again(dynamic_onnx: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """OpenVINO imports a damaged blob and runs it with wrong weights (zeroed bytes changed the
    scores): every entry carries its SHA-256, and one that fails it (or that OpenVINO refuses) is
    named in one warning and compiled again, never run."""
    root = tmp_path / "cache"
    expected, warnings = _reload(dynamic_onnx, root, caplog)
    assert warnings == []
    entry = _entry(root)
    header, _, payload = entry.read_bytes().partition(b"\n")
    assert json.loads(header)["sha256"] == hashlib.sha256(payload).hexdigest()
    damaged = bytearray(entry.read_bytes())
    start = len(header) + 1 + len(payload) // 3
    damaged[start:start + 4096] = bytes(4096)  # the size is kept: only the digest can tell
    entry.write_bytes(bytes(damaged))
    scores, warnings = _reload(dynamic_onnx, root, caplog)
    assert len(warnings) == 1 and entry.name in warnings[0] and "damaged" in warnings[0], warnings
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    written, _, again = _entry(root).read_bytes().partition(b"\n")  # written again, whole
    assert json.loads(written)["sha256"] == hashlib.sha256(again).hexdigest()
    # an entry whose digest holds but whose blob OpenVINO cannot import: refused, compiled again
    garbage = b"not a compiled model"
    record = {**json.loads(header), "bytes": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}
    entry.write_bytes(json.dumps(record).encode() + b"\n" + garbage)
    scores, warnings = _reload(dynamic_onnx, root, caplog)
    assert len(warnings) == 1 and "refused by the runtime" in warnings[0], warnings
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    for text in (b"", b"{not json\n" + payload, json.dumps([1]).encode() + b"\n" + payload):
        entry.write_bytes(text)  # emptied, a header that is not JSON, one that is not an object
        scores, warnings = _reload(dynamic_onnx, root, caplog)
        assert len(warnings) == 1 and "fails its check" in warnings[0], (text[:20], warnings)
        torch.testing.assert_close(scores, expected, rtol=0, atol=0)


_OPEN_AND_PRINT = """
import hashlib, logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
from sfnet_core.inference.loader import open_model
torch.set_num_threads(1)
model = open_model(sys.argv[1], backend="openvino", device="cpu", precision="fp32", cache_dir=sys.argv[2])
x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
print(hashlib.sha256(model.backend(x).numpy().tobytes()).hexdigest())
"""


def test_processes_starting_together_compile_once(dynamic_onnx: Path, tmp_path: Path) -> None:
    """Three processes opening one model on an empty cache at once (nodes started together, the
    tools of a test run): one compiles, the others wait and import its whole entry; the same
    scores everywhere. OpenVINO's own cache let one read a blob another was writing."""
    root = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_PRINT, str(dynamic_onnx), str(root)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:  # none left behind, also when one hangs
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    logs = "".join(err for _, err in outputs)
    assert logs.count("compiled-model cache miss") == 1 and logs.count("compiled-model cache hit") == 2, logs[-3000:]
    assert "fails its check" not in logs and "refused" not in logs
    assert [f.suffix for f in ov_files(root / "openvino")] == [".bin", ".lock"]  # no staging file left


def test_a_full_disk_costs_the_cache_not_the_model(dynamic_onnx: Path, small_disk: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The compiled model does not fit the cache's disk: one warning naming the entry, the model
    runs, and no staging file is left on the disk."""
    root = small_disk / "cache"
    scores, warnings = _reload(dynamic_onnx, root, caplog)
    assert len(warnings) == 1 and "compiled-model cache" in warnings[0] and "no space left" in warnings[0], warnings
    assert "the next start compiles again" in warnings[0]
    assert [f.suffix for f in ov_files(root / "openvino")] == [".lock"]
    uncached = OpenVinoBackend(read_onnx_info(dynamic_onnx), torch.device("cpu"), precision="fp32", cache=False)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(scores, uncached(x), rtol=0, atol=0)


def test_openvino_errors_give_the_reason_not_the_source_lines(tmp_path: Path) -> None:
    """OpenVINO stacks ``Exception from src/...cpp:132:`` lines before its reason; the one line a
    tool prints (``OpenVINO cannot load the model: ...``) is the reason."""
    import openvino as ov

    with pytest.raises(Exception) as caught:
        ov.Core().compile_model(str(tmp_path / "missing.onnx"), "CPU")
    assert str(caught.value).startswith("Exception from ")
    reason = openvino_error(caught.value)
    assert "missing.onnx" in reason and "Could not open the file" in reason and "Exception from" not in reason
    assert openvino_error(RuntimeError("")) == "RuntimeError"


def test_pt_through_the_export_cache(checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    seg = Segmenter.from_checkpoint(checkpoint, backend="openvino", device="cpu", precision="fp32", warmup=False,
                                    input_size=(64, 96), cache_dir=root)
    assert [p.suffix for p in sorted((root / "onnx").iterdir())] == [".lock", ".onnx"]
    assert ov_files(root / "openvino")
    ref = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", warmup=False, input_size=(64, 96))
    for a, b in zip(seg.segment(frames()), ref.segment(frames())):
        assert agreement(a.labels, b.labels) >= 0.999
    with pytest.raises(ConfigError, match="sfnet-export --int8 --calibration"):
        Segmenter.from_checkpoint(checkpoint, backend="openvino", precision="int8", device="cpu", warmup=False,
                                  cache_dir=root)


def test_refusals(checkpoint: Path, dynamic_onnx: Path, tmp_path: Path, cache: Path) -> None:
    def load(path: Path, **kw: object) -> Segmenter:
        return Segmenter.from_checkpoint(path, **{"backend": "openvino", "device": "cpu", "warmup": False,
                                                  "cache_dir": cache, **kw})  # type: ignore[arg-type]

    labels_only = export_onnx(load_checkpoint(checkpoint), tmp_path / "labels.onnx", height=64, width=64,
                              with_argmax=True)
    with pytest.raises(ConfigError, match="--with-argmax.*needs a model that outputs logits"):
        load(labels_only)
    with pytest.raises(CheckpointError, match="predicts 19 classes but the configuration expects 5"):
        load(dynamic_onnx, expected_num_classes=5)
    with pytest.raises(ConfigError, match="an fp32 model cannot run in int8 without calibration.*sfnet-export --int8"):
        load(dynamic_onnx, precision="int8")
    with pytest.raises(ConfigError, match="fp16 is a GPU precision; backend openvino runs on the CPU"):
        load(dynamic_onnx, precision="fp16")
    with pytest.raises(ConfigError, match="backend openvino runs on the CPU only, got device cuda"):
        load(dynamic_onnx, device="cuda")
    with pytest.raises(ConfigError, match="compile needs the torch backend"):
        load(dynamic_onnx, compile=True)
    with pytest.raises(ConfigError, match="pipeline compiled needs the torch backend, not openvino"):
        load(dynamic_onnx, input_size=(64, 96), pipeline="compiled")
    if native_bf16():  # an AMX / AVX512_BF16 CPU: bf16 runs, and auto picks it for an fp32 file
        assert load(dynamic_onnx, precision="bf16").precision == "bf16"
        assert load(dynamic_onnx).precision == "bf16"
    else:
        with pytest.raises(ConfigError, match="bf16: this CPU has no native bf16.*use fp32 or auto"):
            load(dynamic_onnx, precision="bf16")
        assert load(dynamic_onnx).precision == "fp32"


def test_auto_chooses(checkpoint: Path, dynamic_onnx: Path, cache: Path) -> None:
    cpu = torch.device("cpu")
    assert choose_backend(dynamic_onnx, cpu)[0] == "openvino"
    # a .pt: OpenVINO where the CPU has native bf16 (2x); without, its fp32 is no faster than PyTorch's
    assert choose_backend(checkpoint, cpu) == (
        ("openvino", "OpenVINO, the fastest CPU runtime here (bf16, via the export cache)") if native_bf16() else
        ("torch", "a .pt on a CPU without native bf16: PyTorch (OpenVINO fp32 is no faster here)"))
    assert choose_backend(checkpoint, cpu, precision="fp32")[0] == "torch"
    assert choose_backend(checkpoint, cpu, needs_torch="return_flows") == ("torch", "return_flows needs PyTorch")
    assert choose_backend(checkpoint, cpu, precision="fp16")[0] == "torch"
    assert choose_backend(dynamic_onnx, cpu, needs_torch="compile")[0] == "openvino"  # torch cannot run it
    assert choose_backend(checkpoint, cpu, precision="bf16")[0] == ("openvino" if native_bf16() else "torch")
    if torch.cuda.is_available():
        assert choose_backend(checkpoint, "cuda")[0] == "torch"
    # through the Segmenter: the reason travels with the backend's description
    seg = Segmenter.from_checkpoint(dynamic_onnx, device="cpu", warmup=False, cache_dir=cache)
    assert seg.backend.name == "openvino"
    assert seg.backend.describe().endswith("[auto: OpenVINO, the fastest CPU runtime here]")
    flows = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False, flows=True)
    assert flows.backend.name == "torch" and "[auto: return_flows needs PyTorch]" in flows.backend.describe()
    assert flows.segment(frames()[0], return_flows="finest").flows is not None
    compiled = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False, input_size=(64, 96),
                                         pipeline="compiled")
    assert compiled.backend.name == "torch"


def test_sfnet_eval_backend_openvino(checkpoint: Path, fixed_onnx: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """sfnet-eval --backend openvino as its own process: one report, equal to torch's mIoU."""
    import yaml

    from sfnet_core.cli.evaluate_command import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {
        "kind": "synthetic", "crop_size": [64, 128], "workers": 0,
        "synthetic": {"train_frames": 1, "val_frames": 2, "height": 64, "width": 128}}}))
    ck, fixed = checkpoint, fixed_onnx
    tool = Path(sys.executable).parent / "sfnet-eval"
    command = [str(tool)] if tool.exists() else [sys.executable, "-m", "sfnet_core.cli.evaluate_command"]
    env = {**os.environ, "SFNET_ROS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, "--config", str(recipe), "--checkpoint", str(fixed), "--backend", "openvino"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["backend"].startswith("openvino fp32") and report["images"] == 2
    assert ov_files(tmp_path / "cache" / "openvino")  # compiled once, under the export cache
    assert main(["--config", str(recipe), "--checkpoint", str(ck), "--backend", "torch"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert report["miou"] == pytest.approx(reference["miou"], abs=0.01)


def test_node_with_backend_auto_runs_an_onnx_in_openvino(dynamic_onnx: Path, ros_domain: dict[str, str],
                                                         tmp_path: Path) -> None:
    """The node as the launch file starts it, ``backend: auto`` (the shipped default) on an .onnx:
    OpenVINO, the choice and its reason in the log, the compiled model in the node's cache, and
    its labels equal to a Segmenter of the same backend."""
    from node_harness import NodeProcess, RosClient, image_array, make_image
    from sensor_msgs.msg import Image

    frame = frames()[0]
    env = {**ros_domain, "SFNET_ROS_CACHE": str(tmp_path / "cache")}
    parameters = {"checkpoint": str(dynamic_onnx), "backend": "auto", "device": "cpu", "threads": 1,
                  "qos_reliability": "reliable"}
    with NodeProcess(env, tmp_path, parameters=parameters, remaps={"image": "/cam/image_raw"},
                     namespace="/ov") as node, RosClient() as ros:
        log = node.wait_for_log("active:")
        configured = next(line for line in log.splitlines() if "configured in" in line)
        precision = "bf16" if native_bf16() else "fp32"  # auto: bf16 where the CPU has it natively
        assert f"openvino {precision}" in configured and "[auto: " in configured, configured
        labels = ros.collect(Image, "/ov/segmentation/labels")
        pub = ros.publisher(Image, "/cam/image_raw")
        ros.wait_for_subscribers(pub)
        pub.publish(make_image(frame, "rgb8", stamp_ns=7))
        try:
            got = image_array(labels.wait_for_stamp(7))
        except TimeoutError:
            raise AssertionError(node.log()[-3000:]) from None
    assert list((tmp_path / "cache" / "openvino").rglob("*")), "the compiled model went into the node's cache"
    reference = Segmenter.from_checkpoint(dynamic_onnx, backend="openvino", device="cpu", threads=1,
                                          cache_dir=tmp_path / "cache", warmup=False).segment(frame).labels
    assert agreement(got, reference) == 1.0
