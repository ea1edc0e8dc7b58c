"""Never a silently wrong model (issue #16): every model file this package writes records a digest
of its weights, and every load checks it.

For each kind of file (a ``save_checkpoint`` .pt, a trainer's .pt with ``train_state``, a checkpoint
imported from the authors' layout, an fp32 .onnx, an int8 .onnx, an export-cache entry) three
damages: one flipped byte inside a weight (found in the file's own bytes; metadata intact), all
weights zeroed (re-saved with the old digest), the file cut short. A user's file is refused with
one line naming it; a cache entry is exported again with a warning and then equals the PyTorch
model. Small networks (ShuffleNetV2, DF1) at 64x64 keep it fast.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import CheckpointError
from sfnet_core.inference import Segmenter
from sfnet_core.inference.cache import cached_onnx, cached_onnx_model
from sfnet_core.models import build_model
from sfnet_core.models.released import export_released, import_released, project_options
from sfnet_core.onnx.digest import DIGEST_KEY
from sfnet_core.onnx.export import export_onnx
from sfnet_core.onnx.metadata import read_onnx_info
from sfnet_core.onnx.quantize import quantize_int8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ClassTable.cityscapes()
SIZE = (64, 64)
SMALL = "sfnet_shufflenetv2"


def varied(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so labels vary over the image and damage shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("integrity") / "small.pt"
    save_checkpoint(path, varied(build_model(SMALL, 19), 3), SMALL, CLASSES)
    return path


@pytest.fixture(scope="module")
def small_onnx(small_pt: Path) -> Path:
    return export_onnx(load_checkpoint(small_pt), small_pt.with_name("small.onnx"), height=SIZE[0], width=SIZE[1])


def inputs(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((batch, 3, *SIZE), dtype=np.float32)


def torch_logits(pt: Path, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return load_checkpoint(pt).build_model()(torch.from_numpy(x)).numpy()


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


# -- damaging a file ------------------------------------------------------------------------------


def flip_weight_byte(path: Path, weight: bytes) -> None:
    """Flip one byte of ``weight`` (a tensor's bytes) where it lies in ``path``: the high byte of a
    float32 in the middle, so the value changes by orders of magnitude."""
    data = bytearray(path.read_bytes())
    window = weight[len(weight) // 2 // 4 * 4:][:64]
    where = data.find(window)
    assert len(window) == 64 and where > 0 and data.count(window) == 1, "the weight's bytes are not in the file"
    data[where + 3] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def largest_pt_weight(path: Path) -> bytes:
    state = torch.load(path, weights_only=True)["state_dict"]
    tensor = max((v for v in state.values() if v.dtype == torch.float32), key=torch.numel)
    return tensor.numpy().tobytes()


def zero_pt_weights(path: Path) -> None:
    data = torch.load(path, weights_only=True)
    for value in data["state_dict"].values():
        if value.is_floating_point():
            value.zero_()
    torch.save(data, path)  # the recorded digest is kept, as an editing tool would keep it


def largest_onnx_weight(path: Path) -> bytes:
    proto = onnx.load(str(path))
    return max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
               key=lambda t: len(t.raw_data)).raw_data


def zero_onnx_weights(path: Path) -> None:
    proto = onnx.load(str(path))
    for tensor in proto.graph.initializer:
        if tensor.HasField("raw_data"):
            tensor.raw_data = bytes(len(tensor.raw_data))
    onnx.save(proto, str(path))  # metadata (sfnet.digest included) untouched


DAMAGES = ("flip", "zero", "truncate")


def damage_pt(path: Path, how: str) -> None:
    if how == "flip":
        flip_weight_byte(path, largest_pt_weight(path))
    elif how == "zero":
        zero_pt_weights(path)
    else:
        truncate(path)


def damage_onnx(path: Path, how: str) -> None:
    if how == "flip":
        flip_weight_byte(path, largest_onnx_weight(path))
    elif how == "zero":
        zero_onnx_weights(path)
    else:
        truncate(path)


def refusal(load: Callable[[], object], path: Path, how: str) -> str:
    """Run ``load``; it must raise one line naming ``path``, saying why."""
    with pytest.raises(CheckpointError) as caught:
        load()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    if how == "truncate":
        assert "truncated or corrupt" in message or "without sfnet_ros metadata" in message, message
    else:
        assert "the weights do not match the digest recorded when the file was written" in message, message
        assert "corrupted or was edited" in message, message
    return message


def copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


# -- .pt files ------------------------------------------------------------------------------------


def trainer_checkpoint(path: Path) -> Path:
    """What the trainer writes as last.pt: weights plus the optimizer (momentum buffers) and RNG."""
    torch.manual_seed(4)
    model = varied(build_model(SMALL, 19, aux=True), 4).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, *SIZE))[0].mean().backward()
    optimizer.step()
    save_checkpoint(path, model.eval(), SMALL, CLASSES, model_options={"aux": True},
                    train_state={"iteration": 1, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()})
    return path


def imported_checkpoint(path: Path) -> Path:
    """A checkpoint written from the authors' layout, as sfnet-import writes it."""
    torch.manual_seed(5)
    released = export_released(varied(build_model("sfnet_df1", 19), 5).state_dict(), "sfnet_df1")
    result = import_released({f"module.{k}": v for k, v in released.items()}, source="released.pth")
    options = project_options(result.layout)
    model = build_model(result.layout.variant, result.layout.num_classes, aux=result.layout.dsn, **options)
    model.load_state_dict(result.state_dict, strict=True)
    save_checkpoint(path, model, result.layout.variant, CLASSES, model_options={"aux": result.layout.dsn, **options})
    return path


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["save_checkpoint", "trainer", "imported"])
def test_damaged_checkpoint_is_refused(kind: str, how: str, small_pt: Path, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "save_checkpoint":
        copy(small_pt, path)
    elif kind == "trainer":
        trainer_checkpoint(path)
    else:
        imported_checkpoint(path)
    intact = load_checkpoint(path)
    assert intact.digest is not None and intact.digest["algorithm"] == "sha256-v1"
    damage_pt(path, how)
    if how != "truncate":  # torch itself loads the damaged file without a word: the check is ours
        damaged = torch.load(path, weights_only=True)["state_dict"]
        assert any(not torch.equal(damaged[k], v) for k, v in intact.state_dict.items())
    refusal(lambda: load_checkpoint(path), path, how)
    # the inference entry point refuses it the same way, for either backend
    refusal(lambda: Segmenter.from_checkpoint(path, device="cpu", warmup=False), path, how)


def test_damaged_train_state_is_refused(tmp_path: Path) -> None:
    """The optimizer state resumes training: a changed momentum buffer is caught too."""
    path = trainer_checkpoint(tmp_path / "last.pt")
    data = torch.load(path, weights_only=True)
    buffer = data["train_state"]["optimizer"]["state"][0]["momentum_buffer"]
    flip_weight_byte(path, buffer.numpy().tobytes())
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the model description (model, classes, normalization, train_state) does "
                              "not match the digest recorded") and "\n" not in message


def test_edited_description_is_refused(small_pt: Path, tmp_path: Path) -> None:
    """Not only weights: an input normalisation changed behind the digest's back is refused."""
    data = torch.load(small_pt, weights_only=True)
    data["normalization"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: the model description .* corrupted or was edited"):
        load_checkpoint(tmp_path / "edited.pt")


def test_checkpoint_from_before_digests_loads_with_one_warning(small_pt: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    data = torch.load(small_pt, weights_only=True)
    del data["digest"]
    torch.save(data, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="sfnet_core.checkpoint"):
        first = load_checkpoint(tmp_path / "old.pt")
        load_checkpoint(tmp_path / "old.pt")
    warnings = [r.getMessage() for r in caplog.records if "before sfnet_ros recorded weight digests" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(str(tmp_path / "old.pt")), warnings
    assert first.digest is None
    for key, value in load_checkpoint(small_pt).state_dict.items():
        assert torch.equal(first.state_dict[key], value)
    # saving it again records a digest
    save_checkpoint(tmp_path / "new.pt", first.build_model(), first.model_name, first.classes)
    assert load_checkpoint(tmp_path / "new.pt").digest is not None


def test_digest_does_not_depend_on_memory_format_or_threads(small_pt: Path, tmp_path: Path) -> None:
    """The digest covers values, not layout: a channels_last model saves the same digest; and it is
    the same whether the tensors are hashed in one thread or several."""
    from sfnet_core import checkpoint as ck_module

    ck = load_checkpoint(small_pt)
    model = ck.build_model().to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "cl.pt", model, ck.model_name, ck.classes)
    assert load_checkpoint(tmp_path / "cl.pt").digest["weights"] == ck.digest["weights"]
    serial = ck_module.weights_sha256(ck.state_dict)
    previous = ck_module._PARALLEL_MIN_BYTES
    ck_module._PARALLEL_MIN_BYTES = 0
    try:
        assert ck_module.weights_sha256(ck.state_dict) == serial == ck.digest["weights"]
    finally:
        ck_module._PARALLEL_MIN_BYTES = previous


# -- unsafe pickles -------------------------------------------------------------------------------


class Payload:
    """Not a tensor: a file pickling it must be refused, not run."""


def test_unsafe_pickle_refusal_gives_no_unsafe_advice(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": Payload()}, tmp_path / "evil.pt")
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump({"hook": Payload()}, handle, protocol=4)
    for name in ("evil.pt", "plain.pkl"):
        path = tmp_path / name
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert "cannot be loaded safely" in message and "refused, not unpickled" in message, message
        assert "save_checkpoint" in message and "sfnet-import" in message, message
        for advice in ("weights_only", "likely succeed", "safe_globals", "allowlist", "\x1b["):
            assert advice not in message, (advice, message)
    assert "Payload" in str(caught.value) or "plain python pickle" in str(caught.value)
    captured = capfd.readouterr()
    assert captured.err == "", captured.err  # torch's warnings (pickle protocol 4...) are not printed


# -- .onnx files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_int8(small_onnx: Path) -> Path:
    batches = [inputs() for _ in range(2)]
    return quantize_int8(small_onnx, small_onnx.with_name("small_int8.onnx"), batches, calibration_source="random")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_damaged_onnx_is_refused(kind: str, how: str, small_pt: Path, small_onnx: Path, small_int8: Path,
                                 tmp_path: Path) -> None:
    source = small_onnx if kind == "fp32" else small_int8
    path = copy(source, tmp_path / f"{kind}.onnx")
    info = read_onnx_info(path)
    assert info.digest is not None and info.precision == kind
    if how != "truncate" and kind == "fp32":  # the damage matters: ONNX Runtime would run it, wrongly
        damage_onnx(path, how)
        x = inputs()
        assert not np.allclose(ort_logits(path, x), torch_logits(small_pt, x), atol=1e-2)
    else:
        damage_onnx(path, how)
    refusal(lambda: read_onnx_info(path), path, how)
    refusal(lambda: Segmenter.from_checkpoint(path, device="cpu", warmup=False), path, how)


def test_quantisation_refuses_a_damaged_fp32_model(small_onnx: Path, tmp_path: Path) -> None:
    """Otherwise a damaged fp32 model would come out as an int8 one with a fresh, valid digest."""
    path = copy(small_onnx, tmp_path / "fp32.onnx")
    flip_weight_byte(path, largest_onnx_weight(path))
    refusal(lambda: quantize_int8(path, tmp_path / "int8.onnx", [inputs()]), path, "flip")
    assert not (tmp_path / "int8.onnx").exists()


def test_edited_onnx_metadata_is_refused(small_onnx: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(small_onnx))
    for prop in proto.metadata_props:
        if prop.key == "sfnet.normalization":
            prop.value = prop.value.replace("0.485", "0.785")
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    with pytest.raises(CheckpointError, match=r"edited\.onnx: the sfnet metadata .* corrupted or was edited"):
        read_onnx_info(tmp_path / "edited.onnx")


def test_any_flipped_byte_near_the_metadata_is_refused(small_onnx: Path, tmp_path: Path) -> None:
    """The metadata sits at the end of the file: a flipped byte there may make a string field
    invalid UTF-8, which protobuf hands out as bytes (it was a raw UnicodeDecodeError or TypeError
    from the digest); every one of these damages is one CheckpointError naming the file."""
    source = small_onnx.read_bytes()
    path = tmp_path / "flipped.onnx"
    for offset in range(1, 600, 3):
        data = bytearray(source)
        data[-offset] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=r"flipped\.onnx"):
            read_onnx_info(path)


def test_onnx_from_before_digests_loads_with_one_warning(small_onnx: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    proto = onnx.load(str(small_onnx))
    kept = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with caplog.at_level(logging.WARNING, logger="sfnet_core.onnx.digest"):
        assert read_onnx_info(tmp_path / "old.onnx").digest is None
        read_onnx_info(tmp_path / "old.onnx")
    warnings = [r.getMessage() for r in caplog.records if "before sfnet_ros recorded weight digests" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "old.onnx") in warnings[0], warnings
    with pytest.raises(CheckpointError, match=r"old\.onnx: records no weight digest"):
        read_onnx_info(tmp_path / "old.onnx", require_digest=True)


def test_external_data_is_covered(small_onnx: Path, tmp_path: Path) -> None:
    """Weights kept in an external data file (models over 2 GB) are digested from that file."""
    proto = onnx.load(str(small_onnx))
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data",
              size_threshold=1024)
    info = read_onnx_info(tmp_path / "ext.onnx")
    assert info.digest == read_onnx_info(small_onnx).digest
    flip_weight_byte(tmp_path / "ext.data", largest_onnx_weight(small_onnx))
    refusal(lambda: read_onnx_info(tmp_path / "ext.onnx"), tmp_path / "ext.onnx", "flip")


# -- the export cache -----------------------------------------------------------------------------


def test_damaged_cache_entry_is_exported_again(small_pt: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    entry, info = cached_onnx_model(small_pt, SIZE, root=root)
    assert info.digest is not None and info.path == entry
    x = inputs(2)
    reference = torch_logits(small_pt, x)

    def matches_torch(path: Path) -> bool:
        out = ort_logits(path, x)
        return bool(np.abs(out - reference).max() < 1e-3 and (out.argmax(1) == reference.argmax(1)).mean() > 0.999)

    assert matches_torch(entry)
    for how in (*DAMAGES, "no digest"):
        if how == "no digest":  # an entry written before digests: rebuilt, never trusted
            proto = onnx.load(str(entry))
            kept = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
            del proto.metadata_props[:]
            proto.metadata_props.extend(kept)
            onnx.save(proto, str(entry))
        else:
            damage_onnx(entry, how)
        if how in ("flip", "zero"):  # what the node ran before this issue: metadata intact, labels wrong
            assert read_onnx_info(entry, verify=False).checkpoint_sha256 is not None
            assert not matches_torch(entry)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sfnet_core.inference.cache"):
            again = cached_onnx(small_pt, SIZE, root=root)
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert again == entry
        assert any(level == logging.WARNING and entry.name in text and "exporting it again" in text
                   for level, text in messages), (how, messages)
        assert not any("export cache hit" in text for _, text in messages), (how, messages)
        assert read_onnx_info(entry, require_digest=True).digest is not None
        assert matches_torch(entry), how
    # an intact entry is reused, without a warning
    caplog.clear()
    stamp = entry.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="sfnet_core.inference.cache"):
        assert cached_onnx(small_pt, SIZE, root=root) == entry
    assert entry.stat().st_mtime_ns == stamp
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("export cache hit" in r.getMessage() for r in caplog.records)
