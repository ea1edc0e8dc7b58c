"""int8 static quantisation of an fp32 export with ONNX Runtime, calibrated on real frames.

``quantize_int8`` turns a fixed-size fp32 model into QDQ int8 (per-channel int8 weights, uint8
activations, MinMax calibration); ``export_int8`` is the whole path from a checkpoint (an fp32
export in a hidden staging folder, then the quantisation). Calibration batches are normalised
``(1, 3, H, W)`` float32 at the model's input size, made from camera frames exactly as the
Segmenter feeds the network (``Segmenter.preprocess``); the frames themselves come from
``sfnet_core.onnx.calibration``. Calibration runs the model once per frame (seconds each at
512x1024 on a CPU): ``progress`` shows a bar on a terminal, and the log says when it starts and
ends.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sfnet_core.checkpoint import Checkpoint
from sfnet_core.io_utils import atomic_write, remove_staging, staging_path
from sfnet_core.onnx.digest import stamp_digest, verify_digest
from sfnet_core.onnx.export import DEFAULT_OPSET, ExportError, export_onnx
from sfnet_core.onnx.metadata import write_metadata

__all__ = ["quantize_int8", "export_int8"]

log = logging.getLogger(__name__)


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over normalised batches, counting the
    frames it hands out on ``bar``."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str, bar: tqdm) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.input_name = input_name
        self.frames = 0
        self.bar = bar
        self._running = 0  # frames of the batch handed out last

    def get_next(self) -> dict[str, np.ndarray] | None:
        # ONNX Runtime runs the model on a batch before it asks for the next one
        self.bar.update(self._running)
        self._running = 0
        batch = next(self._it, None)
        if batch is None:
            self.bar.close()  # calibration done; quantising the weights that follows is short
            return None
        self._running = len(batch)
        self.frames += len(batch)
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:  # not needed by MinMax, which reads each batch once
        raise NotImplementedError


def _progress(calibration: Iterable[np.ndarray], enabled: bool) -> tqdm:
    """The calibration bar: on stderr, and only on a terminal (``disable=None``)."""
    total = sum(len(batch) for batch in calibration) if isinstance(calibration, Sequence) else None
    return tqdm(total=total, desc="int8 calibration", unit="frame", file=sys.stderr, leave=False,
                disable=None if enabled else True, dynamic_ncols=True)


def quantize_int8(
    fp32_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    calibration_source: str = "",
    per_channel: bool = True,
    reduce_range: bool = False,
    progress: bool = False,
) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax
    calibration) of a fixed-size fp32 export, written atomically to ``onnx_path``.

    ``calibration`` yields normalised batches ``(1, 3, H, W)`` float32 at the model's input size
    (``Segmenter.preprocess`` makes them from camera frames). ``reduce_range`` (7-bit weights)
    avoids the int16 saturation of AVX2 / AVX-512 CPUs without VNNI, at some accuracy cost. The
    metadata is kept, with ``sfnet.precision = int8`` and ``sfnet.quantization`` recording how.
    ``progress``: a bar over the calibration frames on stderr when it is a terminal.
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
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = _progress(calibration, progress)
    reader = _Calibration(calibration, source.graph.input[0].name, bar)
    log.info("int8 calibration on %s", calibration_source or "the given batches")
    # named before it exists: removed in the finally whenever an error or a signal lands
    work = staging_path(onnx_path, "work")
    try:
        work.mkdir()
        prepared, quantized = work / "prepared.onnx", work / "int8.onnx"
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
        write_metadata(proto, meta)
        stamp_digest(proto)
        with atomic_write(onnx_path) as tmp:
            onnx.save(proto, str(tmp))
    finally:
        remove_staging(work)
        bar.close()  # also on errors: tqdm's monitor thread must not outlive the call
    log.info("wrote %s (int8, calibrated on %d frame(s) in %.1f s)", onnx_path, reader.frames,
             time.perf_counter() - started)
    return onnx_path


def export_int8(
    checkpoint: Checkpoint,
    onnx_path: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    *,
    height: int,
    width: int,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    with_argmax: bool = False,
    calibration_source: str = "",
    reduce_range: bool = False,
    progress: bool = False,
) -> Path:
    """``checkpoint`` -> an int8 model at ``onnx_path`` (``batch x 3 x height x width``): the fp32
    export is an intermediate in a hidden staging folder next to ``onnx_path``, removed on
    success, errors, Ctrl-C and SIGTERM alike. Any failure of the quantiser is an ``ExportError``
    naming ``onnx_path``. See ``quantize_int8`` for the rest."""
    onnx_path = Path(onnx_path)
    work = staging_path(onnx_path, "work")
    try:
        work.mkdir()
        fp32 = export_onnx(checkpoint, work / "fp32.onnx", height=height, width=width, batch=batch, opset=opset,
                           with_argmax=with_argmax)
        try:
            return quantize_int8(fp32, onnx_path, calibration, calibration_source=calibration_source,
                                 reduce_range=reduce_range, progress=progress)
        except (ExportError, OSError):
            raise
        except Exception as exc:  # the quantiser raises many unrelated types
            raise ExportError(f"{onnx_path}: int8 quantisation failed: {type(exc).__name__}: {exc}") from None
    finally:
        remove_staging(work)
