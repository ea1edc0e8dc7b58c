"""Open a ``.pt`` checkpoint or a self-describing ``.onnx`` model as an inference backend.

One rule for the Segmenter (``Segmenter.from_checkpoint``), ``sfnet-eval`` and, through the
Segmenter, ``sfnet-bag-eval`` and the node:

============  ================  ================================================================
file          backend           runs in
============  ================  ================================================================
``.pt``       ``torch``         PyTorch (device / precision by ``sfnet_core.devices``)
``.pt``       ``onnxruntime``   ONNX Runtime, exported once into the export cache
                                (``sfnet_core.inference.cache``; fp32)
``.pt``       ``openvino``      OpenVINO on the CPU, through the same fp32 export; fp32, or bf16
                                where the CPU has it natively (``openvino_backend``)
``.onnx``     ``onnxruntime``   ONNX Runtime, in the model's precision (fp32 or int8)
``.onnx``     ``openvino``      OpenVINO on the CPU: an int8 model in int8, an fp32 model in fp32
                                or bf16 (as for a ``.pt``)
``.onnx``     ``torch``         refused (an exported graph has no PyTorch weights)
any           ``auto``          ``choose_backend``: the fastest path this machine offers
============  ================  ================================================================

``auto`` (``choose_backend``, which says why in one logged line, also shown by ``describe()``):
on the CPU, an ``.onnx`` in OpenVINO when it is installed (the fastest CPU runtime measured,
docs/performance.md), else ONNX Runtime; a ``.pt`` in OpenVINO bf16 (through the export cache)
where the CPU has native bf16, else in PyTorch (OpenVINO fp32 measured 1.02x PyTorch fp32 on
AVX2: not worth an export and a compile at every start); on a CUDA device PyTorch for a
``.pt`` and ONNX Runtime for an ``.onnx``; PyTorch whenever something only it can do is asked
(FAM flows, ``torch.compile``, the compiled or CUDA-graph pipelines) or a precision OpenVINO
cannot give on this CPU (fp16, bf16 without native bf16).

Every file is checked against the digest recorded when it was written (``sfnet_core.checkpoint``,
``sfnet_core.onnx.digest``): a corrupted or edited model is refused naming the file; an
export-cache entry that fails is exported again.

ONNX Runtime uses the CPU execution provider, or on a CUDA device the TensorRT / CUDA providers
when the installed onnxruntime has them. ``device="auto"`` with ONNX Runtime picks CUDA only
when both PyTorch and onnxruntime can use it. OpenVINO runs on the CPU only (``device="auto"``
means the CPU for it; a CUDA device is refused).
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
from sfnet_core.inference.openvino_backend import OpenVinoBackend, native_bf16, openvino_available
from sfnet_core.inference.preprocess import padded_size
from sfnet_core.onnx.metadata import OnnxModelInfo, read_onnx_info

__all__ = ["LoadedModel", "open_model", "choose_backend", "ONNX_PRECISIONS"]

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


def _openvino_device(device: str | torch.device) -> torch.device:
    """OpenVINO runs on the CPU: ``auto`` means the CPU; a CUDA device is refused (before any export)."""
    if str(device) in ("auto", "cpu"):
        return torch.device("cpu")
    if str(device).startswith("cuda"):
        raise ConfigError(f"backend openvino runs on the CPU only, got device {device}: use device cpu, or "
                          "backend torch / onnxruntime on the GPU")
    return resolve_device(device, "device")  # a malformed device: its own error


def choose_backend(path: str | os.PathLike, device: str | torch.device = "auto", precision: str = "auto",
                   needs_torch: str = "") -> tuple[str, str]:
    """What ``backend: auto`` runs ``path`` in, and why (one line): see the module docstring.

    ``needs_torch``: what only PyTorch can do that the caller asked for ("" when nothing), e.g.
    ``"return_flows"``, ``"compile"``, ``"pipeline compiled"``.
    """
    is_onnx = Path(path).suffix.lower() == ".onnx"
    if needs_torch and not is_onnx:
        return "torch", f"{needs_torch} needs PyTorch"
    if is_onnx:
        on_cuda = _onnxruntime_device(device).type == "cuda"
    else:
        on_cuda = resolve_device(device, "device").type == "cuda"
    if on_cuda:
        return ("onnxruntime", "an .onnx on a CUDA device: ONNX Runtime") if is_onnx else (
            "torch", "a .pt on a CUDA device: PyTorch")
    fallback = ("onnxruntime", "an .onnx on the CPU") if is_onnx else ("torch", "a .pt on the CPU")
    if not openvino_available():
        return fallback[0], f"{fallback[1]}, OpenVINO not installed"
    if precision == "fp16" or (precision == "bf16" and not native_bf16()):
        return fallback[0], f"{fallback[1]}: precision {precision} is not native here, OpenVINO refuses it"
    if not is_onnx and precision in ("auto", "fp32") and not (precision == "auto" and native_bf16()):
        # Measured on AVX2 (docs/performance.md): OpenVINO fp32 1.02x PyTorch fp32, not worth an ONNX
        # export and a compile (seconds) at every start; with native bf16 OpenVINO is 2x faster.
        return "torch", "a .pt on a CPU without native bf16: PyTorch (OpenVINO fp32 is no faster here)"
    return "openvino", "OpenVINO, the fastest CPU runtime here" + ("" if is_onnx else " (bf16, via the export cache)")


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
    needs_torch: str = "",
) -> LoadedModel:
    """Load ``path`` for inference (see the module docstring); errors are ``SFNetError``s naming it.

    ``needs_torch``: what the caller will ask that only PyTorch does (``choose_backend``);
    ``compile`` counts as such.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    is_onnx = path.suffix.lower() == ".onnx"
    selection = ""
    if backend == "auto":
        backend, selection = choose_backend(path, device, precision, needs_torch or ("compile" if compile else ""))
        log.info("backend auto: %s (%s) for %s", backend, selection, path.name)
    elif compile and backend != "torch":
        raise ConfigError(f"compile needs the torch backend (torch.compile); backend {backend} compiles its own graph")
    if is_onnx and backend == "torch":
        raise ConfigError(f"{path}: an .onnx model runs in ONNX Runtime or OpenVINO only: use backend onnxruntime, "
                          "openvino (or auto), or give the .pt checkpoint for backend torch")
    loaded = (_open_torch(path, device, precision, channels_last, compile, expected_num_classes)
              if backend == "torch" else
              _open_onnx(path, backend, device, precision, input_size, threads, cache_dir, expected_num_classes))
    loaded.backend.selection = selection
    return loaded


def _open_torch(path: Path, device: str | torch.device, precision: str, channels_last: bool, compile: bool,
                expected_num_classes: int | None) -> LoadedModel:
    ckpt = load_checkpoint(path, expected_num_classes=expected_num_classes)
    resolved = resolve_device(device, "device")
    engine = TorchBackend(ckpt.build_model(), resolved, resolve_precision(precision, resolved, "precision"),
                          channels_last=channels_last, compile=compile)
    return LoadedModel(engine, ckpt.classes, ckpt.mean, ckpt.std, ckpt.model_name, path, None)


def _open_onnx(path: Path, backend: str, device: str | torch.device, precision: str,
               input_size: tuple[int, int] | None, threads: int | None, cache_dir: str | os.PathLike | None,
               expected_num_classes: int | None) -> LoadedModel:
    """An ``.onnx`` (or a ``.pt`` through the export cache) in ONNX Runtime or OpenVINO."""
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(ONNX_PRECISIONS)} for backend {backend}, "
                          f"got {precision!r}")
    resolved = _onnxruntime_device(device) if backend == "onnxruntime" else _openvino_device(device)
    info = _onnx_info(path, precision, input_size, cache_dir, expected_num_classes)
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
    engine: InferenceBackend
    if backend == "openvino":
        engine = OpenVinoBackend(info, resolved, precision, threads=threads, cache_dir=root)
    else:
        engine = OnnxRuntimeBackend(info, resolved, precision, threads=threads, cache_dir=root)
    return LoadedModel(engine, info.classes, info.mean, info.std, info.model_name, path, input_size)


def _onnx_info(path: Path, precision: str, input_size: tuple[int, int] | None, cache_dir: str | os.PathLike | None,
               expected_num_classes: int | None) -> OnnxModelInfo:
    """The verified description of ``path`` (an ``.onnx``), or of the export cache's entry for it (a ``.pt``)."""
    if path.suffix.lower() == ".onnx":
        return read_onnx_info(path, expected_num_classes=expected_num_classes)  # checks sfnet.digest
    # a clear error (a corrupted checkpoint included) before any export
    load_checkpoint(path, expected_num_classes=expected_num_classes)
    wanted = "int8" if precision == "int8" else "fp32"  # bf16 is the runtime's: the export stays fp32
    return cached_onnx_model(path, padded_size(input_size) if input_size else None, wanted, root=cache_dir)[1]
