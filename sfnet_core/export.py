"""ONNX export of a checkpoint, for ONNX Runtime or TensorRT (command line: ``sfnet-export``,
``sfnet_core.cli.export``).

The exported graph takes the *normalised* float input (N, 3, H, W) (``(rgb / 255 - mean) / std``,
sizes multiples of 32, as the Segmenter feeds it) and outputs logits (N, C, H, W), or with
``--with-argmax`` int64 labels (N, H, W). Class names, colours and the normalisation are stored
in the model's metadata (``sfnet.*`` keys) so a deployment needs only the .onnx file.

    sfnet-export --checkpoint ck.pt --onnx model.onnx --height 512 --width 1024
    sfnet-export --checkpoint ck.pt --onnx model.onnx --dynamic --verify
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from sfnet_core.checkpoint import Checkpoint, load_checkpoint
from sfnet_core.errors import SFNetError
from sfnet_core.inference import STRIDE
from sfnet_core.io_utils import atomic_write

__all__ = ["export_onnx", "export_module", "verify_onnx", "INPUT_NAME", "ExportError"]

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


def export_onnx(
    checkpoint: Checkpoint,
    onnx_path: str | os.PathLike,
    height: int = 512,
    width: int = 1024,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    with_argmax: bool = False,
) -> Path:
    """Export ``checkpoint``'s network to ``onnx_path`` (atomically) and check it with onnx.checker.

    ``dynamic`` makes batch, height and width dynamic axes (the trace is taken at
    ``batch x 3 x height x width``). Returns the written path.
    """
    metadata = {
        "sfnet.model": checkpoint.model_name,
        "sfnet.checkpoint": str(checkpoint.path),
        "sfnet.classes": json.dumps(checkpoint.classes.to_dict()),
        "sfnet.normalization": json.dumps({"mean": list(checkpoint.mean), "std": list(checkpoint.std), "scale": "0..1 RGB"}),
    }
    path = export_module(
        checkpoint.build_model(), onnx_path, height=height, width=width, batch=batch, dynamic=dynamic,
        opset=opset, with_argmax=with_argmax, metadata=metadata,
    )
    log.info("exported %s -> %s", checkpoint.path, path)
    return path


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
) -> Path:
    """Export any ``x -> logits`` network (eval mode, fp32) to ONNX; see ``export_onnx``."""
    import onnx

    onnx_path = Path(onnx_path)
    if height % STRIDE or width % STRIDE or height <= 0 or width <= 0:
        raise ExportError(f"{onnx_path}: height and width must be positive multiples of {STRIDE}, got {height}x{width}")
    if opset < 16:
        raise ExportError(f"{onnx_path}: opset {opset} lacks GridSample (the flow warp); use 16 or newer")
    wrapped = _Wrapped(model.float().eval(), with_argmax).eval()
    example = torch.zeros(batch, 3, height, width)
    output = "labels" if with_argmax else "logits"
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        axes[output] = {0: "batch", 1: "height", 2: "width"} if with_argmax else {0: "batch", 2: "height", 3: "width"}
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
        for key, value in {**(metadata or {}), "sfnet.output": output}.items():
            proto.metadata_props.add(key=key, value=value)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{onnx_path}: the exported model fails onnx.checker: {exc}") from None
        onnx.save(proto, str(tmp))
    log.info("wrote %s (%s, %s)", onnx_path, output, "dynamic axes" if dynamic else f"{batch}x3x{height}x{width}")
    return onnx_path


def verify_onnx(
    checkpoint: Checkpoint, onnx_path: str | os.PathLike, height: int, width: int, seed: int = 0
) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime (CPU) on one random normalised input and compare.

    Returns ``{"max_abs_diff": ..., "label_agreement": ...}`` (logits diff is NaN for an
    argmax export, where only labels are compared).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, height, width), dtype=np.float32))
    with torch.inference_mode():
        ref = checkpoint.build_model().eval()(x)
    out = session.run(None, {INPUT_NAME: x.numpy()})[0]
    if out.ndim == 3:  # labels
        return {"max_abs_diff": float("nan"), "label_agreement": float((out == ref.argmax(1).numpy()).mean())}
    return {
        "max_abs_diff": float(np.abs(out - ref.numpy()).max()),
        "label_agreement": float((out.argmax(1) == ref.argmax(1).numpy()).mean()),
    }
