"""Open a ``.pt`` checkpoint or a self-describing ``.onnx`` model as an inference backend.

One rule for the Segmenter (``Segmenter.from_checkpoint``), ``sfnet-eval`` and, through the
Segmenter, ``sfnet-bag-eval`` and the node:

============  =====================  ===========================================================
file          backend                runs in
============  =====================  ===========================================================
``.pt``       ``auto`` / ``torch``   PyTorch (device / precision by ``sfnet_core.devices``)
``.pt``       ``onnxruntime``        ONNX Runtime, exported once into the export cache
                                     (``sfnet_core.inference.cache``; fp32)
``.onnx``     ``auto``/``onnxruntime``  ONNX Runtime, in the model's precision (fp32 or int8)
``.onnx``     ``torch``              refused (an exported graph has no PyTorch weights)
============  =====================  ===========================================================

Every file is checked against the digest recorded when it was written (``sfnet_core.checkpoint``,
``sfnet_core.onnx.digest``): a corrupted or edited model is refused naming the file; an
export-cache entry that fails is exported again.

ONNX Runtime uses the CPU execution provider, or on a CUDA device the TensorRT / CUDA providers
when the installed onnxruntime has them. ``device="auto"`` with ONNX Runtime picks CUDA only
when both PyTorch and onnxruntime can use it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.devices import resolve_device, resolve_precision
from sfnet_core.errors import ConfigError
from sfnet_core.inference.backends import BACKENDS, InferenceBackend, OnnxRuntimeBackend, TorchBackend
from sfnet_core.inference.cache import cache_root, cached_onnx_model
from sfnet_core.inference.preprocess import padded_size
from sfnet_core.onnx.metadata import read_onnx_info

__all__ = ["LoadedModel", "open_model", "ONNX_PRECISIONS"]

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


@dataclass
class LoadedModel:
    backend: InferenceBackend
    classes: ClassTable
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_name: str
    path: Path
    input_size: tuple[int, int] | None  # the size a fixed-size model needs (None: any)


def _onnxruntime_device(device: str | torch.device) -> torch.device:
    import onnxruntime as ort

    resolved = resolve_device(device, "device")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if resolved.type == "cuda" and str(device) == "auto" and not has_cuda:
        log.info("backend onnxruntime: the installed onnxruntime has no CUDA provider; running on the CPU")
        return torch.device("cpu")
    return resolved


def open_model(
    path: str | os.PathLike,
    backend: str = "auto",
    device: str | torch.device = "auto",
    precision: str = "auto",
    input_size: tuple[int, int] | None = None,
    channels_last: bool = True,
    compile: bool = False,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    expected_num_classes: int | None = None,
) -> LoadedModel:
    """Load ``path`` for inference (see the module docstring); errors are ``SFNetError``s naming it."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    is_onnx = path.suffix.lower() == ".onnx"
    if backend == "auto":
        backend = "onnxruntime" if is_onnx else "torch"
    if is_onnx and backend == "torch":
        raise ConfigError(f"{path}: an .onnx model runs in ONNX Runtime only: use backend onnxruntime (or auto), "
                          "or give the .pt checkpoint for backend torch")
    if backend == "torch":
        ckpt = load_checkpoint(path, expected_num_classes=expected_num_classes)
        resolved = resolve_device(device, "device")
        torch_engine = TorchBackend(ckpt.build_model(), resolved, resolve_precision(precision, resolved, "precision"),
                                    channels_last=channels_last, compile=compile)
        return LoadedModel(torch_engine, ckpt.classes, ckpt.mean, ckpt.std, ckpt.model_name, path, None)
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(ONNX_PRECISIONS)} for backend onnxruntime, "
                          f"got {precision!r}")
    resolved = _onnxruntime_device(device)
    if is_onnx:
        info = read_onnx_info(path, expected_num_classes=expected_num_classes)  # checks sfnet.digest
    else:
        # a clear error (a corrupted checkpoint included) before any export
        load_checkpoint(path, expected_num_classes=expected_num_classes)
        wanted = "int8" if precision == "int8" else "fp32"
        _, info = cached_onnx_model(path, padded_size(input_size) if input_size else None, wanted, root=cache_dir)
    if info.fixed_size is not None:
        if input_size is None:
            input_size = info.fixed_size
        elif padded_size(input_size) != info.fixed_size:
            canvas = padded_size(input_size)
            raise ConfigError(
                f"{path}: the model takes {info.fixed_size[0]}x{info.fixed_size[1]} inputs; input_size "
                f"{input_size[0]}x{input_size[1]} pads to {canvas[0]}x{canvas[1]} "
                "(use the model's size, or export with --dynamic)")
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    engine = OnnxRuntimeBackend(info, resolved, precision, threads=threads, cache_dir=root)
    return LoadedModel(engine, info.classes, info.mean, info.std, info.model_name, path, input_size)
