"""The OpenVINO backend: a self-describing ``.onnx`` (fp32 or int8 QDQ) compiled for the CPU.

The same files ONNX Runtime runs (``sfnet_core.onnx.metadata``, digest checked before anything
else reads them), compiled by OpenVINO's CPU plugin, which has the fastest CPU kernels measured
here for this network (docs/performance.md): oneDNN convolutions in fp32, bf16 where the CPU
has it natively (AVX512_BF16, AMX), and int8 for a QDQ model (its low-precision transformations
turn the QuantizeLinear / DequantizeLinear pairs into int8 convolutions).

Precision (``openvino_precision``) follows the file and the ``precision`` setting:

========  ==================  ==================================================================
file      precision           runs in
========  ==================  ==================================================================
fp32      ``auto``            bf16 where the CPU has it natively (``native_bf16``), else fp32
fp32      ``fp32``            fp32, asked for explicitly (OpenVINO's own default is bf16 on AMX)
fp32      ``bf16``            bf16; refused on a CPU without native bf16 (emulation is slower)
fp32      ``int8``            refused: quantisation needs calibration (``sfnet-export --int8``)
int8      ``auto`` / ``int8``  int8 convolutions, the rest in fp32
any       ``fp16``            refused: on the CPU use fp32, bf16 or an int8 model
========  ==================  ==================================================================

Compiled models are cached under the export cache (``openvino_cache_dir``), one verified entry
per OpenVINO version, CPU and compile options (``sfnet_core.inference.cache.cached_compilation``,
not OpenVINO's ``CACHE_DIR``, whose blobs are unchecked): a second start imports it instead of
compiling.
``openvino`` is imported on first use only, so ``import sfnet_core.inference`` stays light.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from sfnet_core.errors import ConfigError
from sfnet_core.inference.backends import OnnxFileBackend
from sfnet_core.inference.cache import cached_compilation, openvino_cache_dir
from sfnet_core.onnx.metadata import OnnxModelInfo

__all__ = ["OpenVinoBackend", "openvino_available", "native_bf16", "openvino_precision", "openvino_config",
           "openvino_error", "OPENVINO_PRECISIONS"]

log = logging.getLogger(__name__)

OPENVINO_PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")  # fp16 only to refuse it with a reason

# OpenVINO's names for the precisions the CPU plugin computes in (INFERENCE_PRECISION_HINT).
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the non-quantised rest stays exact


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino as ov  # lazy: ~0.3 s and a native library, only for this backend

    return ov.Core()


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), as OpenVINO's CPU plugin
    reports it: the one place that decides whether bf16 is offered. The CPU's flags are read
    first, so a CPU without them never loads OpenVINO just to be told so."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
        if "avx512_bf16" not in flags and "amx_bf16" not in flags:
            return False
    except OSError:  # no /proc: ask OpenVINO
        pass
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_precision(info: OnnxModelInfo, requested: str) -> str:
    """The precision ``info``'s model runs in for the ``requested`` setting (module docstring's
    table); a ConfigError naming the file and the reason for a precision it cannot run in."""
    if requested not in OPENVINO_PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(OPENVINO_PRECISIONS[:-1])} for backend openvino, "
                          f"got {requested!r}")
    if requested == "fp16":
        raise ConfigError(f"{info.path}: precision fp16 is a GPU precision; backend openvino runs on the CPU "
                          "(use fp32, bf16 where the CPU has it, an int8 model, or backend torch on a GPU)")
    if info.precision == "int8":
        if requested not in ("auto", "int8"):
            raise ConfigError(f"{info.path}: an int8 model runs in int8 in OpenVINO; precision {requested} was "
                              "asked (use auto, or the fp32 model)")
        return "int8"
    if requested == "int8":
        raise ConfigError(f"{info.path}: an fp32 model cannot run in int8 without calibration: build an int8 model "
                          "with sfnet-export --int8 --calibration ... and load that .onnx")
    if requested == "bf16" and not native_bf16():
        raise ConfigError(f"{info.path}: precision bf16: this CPU has no native bf16 (AVX512_BF16 or AMX; OpenVINO "
                          "reports it lacks BF16), and emulating it is slower than fp32: use fp32 or auto")
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    return requested


def openvino_config(precision: str, threads: int) -> dict[str, Any]:
    """The CPU plugin's compile options, in one place: one stream at the lowest latency (one
    request at a time, as the Segmenter calls it), ``threads`` inference threads, the precision
    asked for explicitly (never OpenVINO's default, which is bf16 on AMX)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
    }


def openvino_error(exc: BaseException) -> str:
    """OpenVINO's reason, without the ``Exception from <source>:<line>:`` lines it stacks before it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return ((reasons or lines)[-1] if lines else type(exc).__name__)[:300]


def _compiled(core: Any, info: OnnxModelInfo, config: dict[str, Any], folder: Path | None) -> Any:
    """``info``'s model compiled with ``config``; through the compiled-model cache in ``folder``."""
    if folder is None:
        return core.compile_model(str(info.path), "CPU", config)

    def compile_model() -> tuple[Any, bytes]:
        compiled = core.compile_model(str(info.path), "CPU", config)
        blob = compiled.export_model()  # bytes, or a BytesIO in newer releases
        return compiled, blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)

    import openvino as ov  # lazy, as in _core

    description = {"runtime": f"openvino {ov.get_version()}", "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
                   "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")), "config": config}
    return cached_compilation(folder, description, compile_model, lambda blob: core.import_model(blob, "CPU", config))


class OpenVinoBackend(OnnxFileBackend):
    """An exported model compiled by OpenVINO for the CPU (see the module docstring).

    ``precision``: the setting (``openvino_precision``). ``threads``: inference threads (default
    ``torch.get_num_threads()``). ``cache_dir``: the export cache's root (None: ``cache_root()``);
    ``cache=False`` compiles without the compiled-model cache.
    """

    name = "openvino"

    def __init__(self, info: OnnxModelInfo, device: torch.device, precision: str = "auto",
                 threads: int | None = None, cache_dir: str | Path | None = None, cache: bool = True) -> None:
        if device.type != "cpu":
            raise ConfigError(f"backend openvino runs on the CPU only, got device {device}: use device cpu, or "
                              "backend torch / onnxruntime on the GPU")
        super().__init__(info, device)
        self.precision = openvino_precision(info, precision)
        self.threads = int(threads or torch.get_num_threads())
        folder = openvino_cache_dir(info, cache_dir) if cache else None
        try:
            self.compiled_model = _compiled(_core(), info, openvino_config(self.precision, self.threads), folder)
            self.request = self.compiled_model.create_infer_request()
        except Exception as exc:
            raise ConfigError(f"{info.path}: OpenVINO cannot load the model: {openvino_error(exc)}") from None
        self._bound: torch.Tensor | None = None  # the output buffer the request writes into
        log.info("OpenVINO: %s ready on the CPU (%s, %d threads, compiled-model cache %s)", info.path,
                 self.precision, self.threads, folder or "off")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Zero copies: the request reads the canvas in place and writes into the reused buffer."""
        import openvino as ov  # lazy: loaded by __init__ already (a dict lookup)

        out = self._output((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), x.device)
        if self._bound is not out:
            self.request.set_output_tensor(0, ov.Tensor(out.numpy(), shared_memory=True))
            self._bound = out
        self.request.infer({0: x.numpy()}, share_inputs=True, share_outputs=True)
        return out

    def summary(self) -> str:
        return f"openvino {self.precision} ({self.threads} threads) on {self.device}"
