"""ONNX export of a checkpoint's network, for ONNX Runtime or TensorRT, and its check against PyTorch.

The exported graph takes the *normalised* float input (N, 3, H, W) (``(rgb / 255 - mean) / std``,
sizes multiples of 32, as the Segmenter feeds it) and outputs logits (N, C, H, W), or with
``with_argmax`` int64 labels (N, H, W). The model describes itself in its metadata (model name and
options, class table, mean/std, input size or dynamic axes, precision: ``sfnet_core.onnx.metadata``),
so ``Segmenter.from_checkpoint("model.onnx")``, ``sfnet-eval`` and the node need only the ``.onnx``
file. Every model written here records ``sfnet.digest`` (``sfnet_core.onnx.digest``), checked
whenever it is read. int8: ``sfnet_core.onnx.quantize``; the command line: ``sfnet-export``
(``sfnet_core.cli.export_command``).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfnet_core.checkpoint import STRIDE, Checkpoint
from sfnet_core.errors import SFNetError
from sfnet_core.io_utils import atomic_write, file_sha256
from sfnet_core.onnx.digest import stamp_digest
from sfnet_core.onnx.metadata import build_metadata, write_metadata

__all__ = ["export_onnx", "export_module", "verify_onnx", "INPUT_NAME", "DEFAULT_OPSET",
           "ExportError"]

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
        write_metadata(proto, {"sfnet.output": output, **(metadata or {})})
        stamp_digest(proto)  # last: covers the weights, the graph and the metadata above
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{onnx_path}: the exported model fails onnx.checker: {exc}") from None
        onnx.save(proto, str(tmp))
    shape = "dynamic axes" if dynamic else f"{'N' if dynamic_batch else batch}x3x{height}x{width}"
    log.info("wrote %s (%s, %s)", onnx_path, output, shape)
    return onnx_path


def verify_onnx(
    checkpoint: Checkpoint, onnx_path: str | os.PathLike, height: int, width: int, seed: int = 0, batch: int = 1,
    inputs: np.ndarray | None = None, progress: bool = False,
) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime (CPU) on the same normalised input and compare.

    ``inputs`` (N, 3, H, W) float32 (e.g. preprocessed real frames, which an int8 model needs to
    be judged fairly); default: one random ``batch x 3 x height x width`` input. Returns
    ``{"max_abs_diff": ..., "label_agreement": ...}`` (logits diff is NaN for an argmax export).
    ``progress``: a bar over the inputs on stderr when it is a terminal.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if inputs is None:
        inputs = np.random.default_rng(seed).standard_normal((batch, 3, height, width), dtype=np.float32)
    fixed = session.get_inputs()[0].shape[0]
    model = checkpoint.build_model().eval()
    outs, refs = [], []
    step = fixed if isinstance(fixed, int) else len(inputs)
    starts = range(0, len(inputs) - len(inputs) % step, step)  # whole batches the model takes
    for i in tqdm(starts, desc="verifying", unit="batch", file=sys.stderr, leave=False,
                  disable=None if progress else True, dynamic_ncols=True):
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
