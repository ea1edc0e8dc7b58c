"""ONNX export of a checkpoint, for ONNX Runtime or TensorRT, and int8 static quantisation
(command line: ``sfnet-export``, ``sfnet_core.cli.export``).

The exported graph takes the *normalised* float input (N, 3, H, W) (``(rgb / 255 - mean) / std``,
sizes multiples of 32, as the Segmenter feeds it) and outputs logits (N, C, H, W), or with
``with_argmax`` int64 labels (N, H, W). The model describes itself in its metadata (model name and
options, class table, mean/std, input size or dynamic axes, precision: see
``sfnet_core.inference.onnx_model``), so ``Segmenter.from_checkpoint("model.onnx")``, ``sfnet-eval``
and the node need only the ``.onnx`` file. Every model written here records ``sfnet.digest`` (the
SHA-256 of its weights, graph and metadata), checked whenever it is read.

    sfnet-export --checkpoint ck.pt --onnx model.onnx --height 512 --width 1024
    sfnet-export --checkpoint ck.pt --onnx model.onnx --dynamic --verify
    sfnet-export --checkpoint ck.pt --onnx int8.onnx --int8 --calibration frames/ --frames 16
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from sfnet_core.checkpoint import Checkpoint
from sfnet_core.errors import SFNetError
from sfnet_core.inference.onnx_model import build_metadata, stamp_digest, verify_digest
from sfnet_core.inference.predict import STRIDE
from sfnet_core.io_utils import atomic_write

__all__ = ["export_onnx", "export_module", "verify_onnx", "quantize_int8", "file_sha256", "INPUT_NAME",
           "DEFAULT_OPSET", "ExportError"]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
DEFAULT_OPSET = 17  # GridSample (the FAM warp) needs opset >= 16; 17 is what TensorRT 8.6+ parses


class ExportError(SFNetError, ValueError):
    """The export failed or produced a model that does not pass onnx.checker."""


class _Wrapped(torch.nn.Module):
    """Plain ``x -> logits`` (or labels) module: no keyword arguments, no tuples."""

    def __init__(self, model: torch.nn.Module, with_argmax: bool) -> None:
        super().__init__()
        self.model = model
        self.with_argmax = with_argmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.argmax(1) if self.with_argmax else logits


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_metadata(checkpoint: Checkpoint, output: str, batch: int | None, height: int | None,
                         width: int | None, precision: str, opset: int, extra: dict | None = None) -> dict[str, str]:
    return build_metadata(
        model_name=checkpoint.model_name, model_options=checkpoint.model_options, classes=checkpoint.classes,
        mean=checkpoint.mean, std=checkpoint.std, input_name=INPUT_NAME, output=output, batch=batch,
        height=height, width=width, precision=precision, checkpoint_name=Path(checkpoint.path).name,
        checkpoint_sha256=file_sha256(checkpoint.path) if Path(checkpoint.path).is_file() else None,
        extra={"exporter": {"torch": torch.__version__, "onnx_opset": opset}, **(extra or {})})


def export_onnx(
    checkpoint: Checkpoint,
    onnx_path: str | os.PathLike,
    height: int = 512,
    width: int = 1024,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    with_argmax: bool = False,
    dynamic_batch: bool = False,
) -> Path:
    """Export ``checkpoint``'s network to ``onnx_path`` (atomically) and check it with onnx.checker.

    ``dynamic`` makes batch, height and width dynamic axes; ``dynamic_batch`` only the batch (a
    fixed-size model for several cameras). The trace is taken at ``batch x 3 x height x width``.
    Returns the written path.
    """
    output = "labels" if with_argmax else "logits"
    metadata = _checkpoint_metadata(
        checkpoint, output, None if dynamic or dynamic_batch else batch, None if dynamic else height,
        None if dynamic else width, "fp32", opset)
    path = export_module(
        checkpoint.build_model(), onnx_path, height=height, width=width, batch=batch, dynamic=dynamic,
        opset=opset, with_argmax=with_argmax, metadata=metadata, dynamic_batch=dynamic_batch,
    )
    log.info("exported %s -> %s", checkpoint.path, path)
    return path


def _check_size(onnx_path: Path, height: int, width: int, batch: int, opset: int) -> None:
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise ExportError(f"{onnx_path}: height and width must be positive multiples of {STRIDE}, got {height}x{width}")
    if batch < 1:
        raise ExportError(f"{onnx_path}: batch must be >= 1, got {batch}")
    if opset < 16:
        raise ExportError(f"{onnx_path}: opset {opset} lacks GridSample (the flow warp); use 16 or newer")


def export_module(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    height: int = 512,
    width: int = 1024,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    with_argmax: bool = False,
    metadata: dict[str, str] | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """Export any ``x -> logits`` network (eval mode, fp32) to ONNX; see ``export_onnx``."""
    import onnx

    onnx_path = Path(onnx_path)
    _check_size(onnx_path, height, width, batch, opset)
    wrapped = _Wrapped(model.float().eval(), with_argmax).eval()
    example = torch.zeros(batch, 3, height, width)
    output = "labels" if with_argmax else "logits"
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        axes[output] = {0: "batch", 1: "height", 2: "width"} if with_argmax else {0: "batch", 2: "height", 3: "width"}
    elif dynamic_batch:
        axes = {INPUT_NAME: {0: "batch"}, output: {0: "batch"}}
    with atomic_write(onnx_path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript (not installed); the legacy path exports GridSample and is what we test.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            try:
                torch.onnx.export(
                    wrapped, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[output],
                    dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
                )
            except Exception as exc:  # the exporter raises many unrelated types
                raise ExportError(f"{onnx_path}: torch.onnx.export failed: {exc}") from exc
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {"sfnet.output": output, **(metadata or {})})
        stamp_digest(proto)  # last: covers the weights, the graph and the metadata above
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{onnx_path}: the exported model fails onnx.checker: {exc}") from None
        onnx.save(proto, str(tmp))
    shape = "dynamic axes" if dynamic else f"{'N' if dynamic_batch else batch}x3x{height}x{width}"
    log.info("wrote %s (%s, %s)", onnx_path, output, shape)
    return onnx_path


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)


def verify_onnx(
    checkpoint: Checkpoint, onnx_path: str | os.PathLike, height: int, width: int, seed: int = 0, batch: int = 1,
    inputs: np.ndarray | None = None,
) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime (CPU) on the same normalised input and compare.

    ``inputs`` (N, 3, H, W) float32 (e.g. preprocessed real frames, which an int8 model needs to
    be judged fairly); default: one random ``batch x 3 x height x width`` input. Returns
    ``{"max_abs_diff": ..., "label_agreement": ...}`` (logits diff is NaN for an argmax export).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if inputs is None:
        inputs = np.random.default_rng(seed).standard_normal((batch, 3, height, width), dtype=np.float32)
    fixed = session.get_inputs()[0].shape[0]
    model = checkpoint.build_model().eval()
    outs, refs = [], []
    step = fixed if isinstance(fixed, int) else len(inputs)
    for i in range(0, len(inputs) - len(inputs) % step, step):  # whole batches the model takes
        x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + step]))
        with torch.inference_mode():
            refs.append(model(x))
        outs.append(session.run(None, {INPUT_NAME: x.numpy()})[0])
    if not outs:
        raise ExportError(f"{onnx_path}: verification needs at least {step} input(s), got {len(inputs)}")
    out, ref = np.concatenate(outs), torch.cat(refs)
    if out.ndim == 3:  # labels
        return {"max_abs_diff": float("nan"), "label_agreement": float((out == ref.argmax(1).numpy()).mean())}
    return {
        "max_abs_diff": float(np.abs(out - ref.numpy()).max()),
        "label_agreement": float((out.argmax(1) == ref.argmax(1).numpy()).mean()),
    }


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over normalised batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.input_name = input_name
        self.frames = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.frames += len(batch)
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:  # not needed by MinMax, which reads each batch once
        raise NotImplementedError


def quantize_int8(
    fp32_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    calibration_source: str = "",
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax
    calibration) of a fixed-size fp32 export, written atomically to ``onnx_path``.

    ``calibration`` yields normalised batches ``(1, 3, H, W)`` float32 at the model's input size
    (``Segmenter.preprocess`` makes them from camera frames). ``reduce_range`` (7-bit weights)
    avoids the int16 saturation of AVX2 / AVX-512 CPUs without VNNI, at some accuracy cost. The
    metadata is kept, with ``sfnet.precision = int8`` and ``sfnet.quantization`` recording how.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, onnx_path = Path(fp32_path), Path(onnx_path)
    source = onnx.load(str(fp32_path))
    # A damaged fp32 model would otherwise come out as an int8 model with a fresh, valid digest.
    verify_digest(source, fp32_path)
    meta = {p.key: p.value for p in source.metadata_props}
    if meta.get("sfnet.precision", "fp32") != "fp32":
        raise ExportError(f"{fp32_path}: already quantised ({meta.get('sfnet.precision')})")
    input_name = source.graph.input[0].name
    reader = _Calibration(calibration, input_name)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sfnet-quant-", dir=onnx_path.parent) as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            except Exception as exc:
                log.warning("quantisation pre-processing skipped: %s", exc)
                prepared = fp32_path
            quantize_static(
                str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        if reader.frames == 0:
            raise ExportError(f"{onnx_path}: no calibration frames ({calibration_source or 'empty iterator'})")
        proto = onnx.load(str(quantized))
        meta.update({"sfnet.precision": "int8", "sfnet.quantization": json.dumps({
            "format": "QDQ", "per_channel": per_channel, "reduce_range": reduce_range, "weights": "int8",
            "activations": "uint8", "method": "MinMax", "calibration": calibration_source,
            "frames": reader.frames}, sort_keys=True)})
        del proto.metadata_props[:]
        _set_metadata(proto, meta)
        stamp_digest(proto)
        with atomic_write(onnx_path) as tmp:
            onnx.save(proto, str(tmp))
    log.info("wrote %s (int8, calibrated on %d frame(s))", onnx_path, reader.frames)
    return onnx_path
