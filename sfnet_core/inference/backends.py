"""Inference backends: what turns a normalised canvas into class scores.

All take a normalised float tensor ``(N, 3, H, W)`` (H, W multiples of 32) on the Segmenter's
device and return logits ``(N, C, H, W)`` on the same device, so the pre- and post-processing
around them is one code path (``sfnet_core.inference.segmenter``) and ``predict_logits``
(multi-scale, sliding window) runs on any.

``TorchBackend``       the PyTorch network (eager, ``channels_last``, ``torch.compile``, autocast
                       in fp16 / bf16); the only one that can return the FAM flows.
``OnnxFileBackend``    what the two runtimes of a self-describing ``.onnx`` share: the metadata
                       refusals, the fixed-size check, fixed-batch chunking, the reused output.
``OnnxRuntimeBackend`` an exported, self-describing ``.onnx`` (``sfnet_core.onnx.metadata``)
                       in ONNX Runtime: the CPU execution provider, or on a CUDA device the
                       TensorRT and CUDA providers when the installed onnxruntime has them
                       (inputs and outputs stay on the GPU through I/O binding). fp32 or int8
                       models (``sfnet-export --int8``); on TensorRT fp16 too.
``OpenVinoBackend``    the same files in OpenVINO on the CPU (``openvino_backend``): fp32, bf16
                       where the CPU has it natively, int8 QDQ; the fastest CPU path measured.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sfnet_core.devices import autocast
from sfnet_core.errors import ConfigError
from sfnet_core.onnx.metadata import OnnxModelInfo

__all__ = ["BACKENDS", "InferenceBackend", "TorchBackend", "OnnxFileBackend", "OnnxRuntimeBackend",
           "onnxruntime_providers"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


class InferenceBackend:
    """Normalised canvas (N, 3, H, W) -> logits (N, C, H, W), on ``device``."""

    name = "base"
    device: torch.device
    precision: str
    num_classes: int
    supports_flows = False
    fixed_size: tuple[int, int] | None = None  # the only canvas size the model takes (None: any)
    memory_format = torch.contiguous_format  # what the canvas should be laid out as
    selection = ""  # why ``backend: auto`` chose this backend ("" when it was named)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_with_flows(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise ConfigError(f"return_flows needs the torch backend; the {self.name} backend only returns scores")

    def summary(self) -> str:
        """Backend, precision, where it runs (one line for logs, reports and /diagnostics)."""
        return f"{self.name} {self.precision} on {self.device}"

    def describe(self) -> str:
        """``summary()``, and when ``backend: auto`` chose it, why (so a log or report says it)."""
        return f"{self.summary()} [auto: {self.selection}]" if self.selection else self.summary()


class TorchBackend(InferenceBackend):
    """A PyTorch network; takes it over (eval mode, moved to ``device``, channels_last)."""

    name = "torch"
    supports_flows = True

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 channels_last: bool = True, compile: bool = False) -> None:
        self.device, self.precision = device, precision
        self.num_classes = int(getattr(model, "num_classes", 0)) or 0
        # Gradients need no switching off: every forward runs in inference_mode.
        model = model.eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        self.module = model
        self.model = torch.compile(model) if compile else model
        self.compiled = compile

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model(x)

    def forward_with_flows(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with autocast(self.device, self.precision):
            return self.model(x, return_flows=True)

    def summary(self) -> str:
        layout = " channels_last" if self.memory_format == torch.channels_last else ""
        return f"torch {self.precision}{layout}{' compiled' if self.compiled else ''} on {self.device}"


def onnxruntime_providers(device: torch.device, precision: str, cache_dir: Path | None = None) -> list:
    """ONNX Runtime execution providers for ``device`` (fastest first), from those installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(
            f"backend onnxruntime on {device}: the installed onnxruntime has no CUDA execution provider "
            f"(it has {', '.join(available)}); install onnxruntime-gpu, or use device cpu or backend torch")
    index = device.index or 0
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        options: dict[str, object] = {"device_id": index, "trt_fp16_enable": precision in ("fp16", "bf16"),
                   "trt_int8_enable": precision == "int8"}
        if cache_dir is not None:  # engines take minutes to build: keep them, as Autoware's nodes do
            (cache_dir / "tensorrt").mkdir(parents=True, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir / "tensorrt"))
        providers.append(("TensorrtExecutionProvider", options))
    elif precision in ("fp16", "bf16"):
        raise ConfigError(f"backend onnxruntime: precision {precision} needs the TensorRT execution provider, "
                          "which the installed onnxruntime lacks; use precision fp32 or backend torch")
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OnnxFileBackend(InferenceBackend):
    """A self-describing ``.onnx`` in some runtime: what ONNX Runtime and OpenVINO share.

    Refuses a labels-only model (``--with-argmax``), checks a fixed-size model's canvas, runs a
    fixed-batch model in chunks of its batch size, and keeps one output buffer from call to call.
    Subclasses set ``precision`` and implement ``_run`` (one batch the model takes -> logits in
    ``self._output(...)`` or a tensor of their own).
    """

    def __init__(self, info: OnnxModelInfo, device: torch.device) -> None:
        if info.output != "logits":
            raise ConfigError(f"{info.path}: exported with --with-argmax (labels only); the Segmenter needs a "
                              "model that outputs logits (export without --with-argmax)")
        self.info = info
        self.device = device
        self.num_classes = info.num_classes
        self.fixed_size = info.fixed_size
        self.fixed_batch = info.batch
        self._out: torch.Tensor | None = None

    def _output(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The output buffer for ``shape``, reused from call to call: a fresh 40 MB (19 x 512 x 1024)
        output per frame costs its page faults every time (measured: ~10% of an int8 forward).
        Callers consume the scores before the next call (the Segmenter is single-threaded)."""
        if self._out is None or tuple(self._out.shape) != shape or self._out.device != device:
            self._out = torch.empty(shape, dtype=torch.float32, device=device)
        return self._out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(k, 3, H, W) float32 contiguous, k the model's batch (or any) -> (k, C, H, W) float32."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            raise ConfigError(
                f"{self.info.path}: the model takes {self.fixed_size[0]}x{self.fixed_size[1]} inputs only, got "
                f"{x.shape[-2]}x{x.shape[-1]} (set input_size to the model's size, or export with --dynamic)")
        x = x.detach().float().contiguous()
        n = x.shape[0]
        if self.fixed_batch is None or n == self.fixed_batch:
            return self._run(x)
        # A fixed-batch model: run chunks of its batch size, the last one padded with zeros.
        k = self.fixed_batch
        pad = -n % k
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        return torch.cat([self._run(x[i : i + k]).clone() for i in range(0, n + pad, k)])[:n]


class OnnxRuntimeBackend(OnnxFileBackend):
    """An exported model in an ONNX Runtime session (see the module docstring).

    ``precision``: ``auto`` = the model's own (fp32 or int8); asking for another one is an error,
    except fp16 on CUDA with TensorRT. ``threads``: intra-op threads on the CPU (default: what
    ``torch.get_num_threads()`` says, so the node's ``threads`` parameter holds for both).
    """

    name = "onnxruntime"

    def __init__(self, info: OnnxModelInfo, device: torch.device, precision: str = "auto",
                 threads: int | None = None, cache_dir: Path | None = None) -> None:
        import onnxruntime as ort

        super().__init__(info, device)
        if precision not in ("auto", info.precision):
            allowed = device.type == "cuda" and info.precision == "fp32" and precision == "fp16"
            if not allowed:
                raise ConfigError(f"{info.path}: an {info.precision} model runs in {info.precision} in ONNX Runtime; "
                                  f"precision {precision} was asked (use auto)")
        self.precision = info.precision if precision == "auto" else precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise to a user
        providers = onnxruntime_providers(device, self.precision, cache_dir)
        try:
            self.session = ort.InferenceSession(str(info.path), options, providers=providers)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ConfigError(f"{info.path}: ONNX Runtime cannot load the model: {reason}") from None
        self.providers = self.session.get_providers()
        self.output_name = self.session.get_outputs()[0].name
        log.info("ONNX Runtime session on %s: %s", info.path, ", ".join(self.providers))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self._output((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), x.device)
        binding = self.session.io_binding()
        if self.device.type != "cuda":
            binding.bind_cpu_input(self.info.input_name, x.numpy())
            binding.bind_output(self.output_name, "cpu", 0, np.float32, tuple(out.shape), out.data_ptr())
            self.session.run_with_iobinding(binding)
            return out
        # GPU: bind torch's buffers, so nothing is copied through the host.
        index = x.device.index or 0
        binding.bind_input(self.info.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # the canvas is written on torch's stream
        self.session.run_with_iobinding(binding)
        return out

    def summary(self) -> str:
        return f"onnxruntime {self.precision} ({self.providers[0]}) on {self.device}"
