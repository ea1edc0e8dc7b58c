"""The node's model: loaded at configure from a ``NodeConfig``, released at cleanup.

``load_model`` builds the ``Segmenter`` the parameters describe (checkpoint, backend, device with
CPU fallback, precision, input size, resize, output resolution, CPU threads), checks what only the loaded
model can tell (the mask class names, flow support of the backend) and returns everything the
inference thread needs as one frozen value, so a batch never sees half of a new configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sfnet_core.errors import ConfigError
from sfnet_core.threads import apply_threads, prepare_process
from sfnet_ros.node.params import NodeConfig

if TYPE_CHECKING:  # importing sfnet_core.inference loads torch: load_model does, at configure
    from sfnet_core.inference import Segmenter

__all__ = ["LoadedModel", "free_cuda_cache", "input_size_text", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """What configure made, as one value (the worker reads it once per batch)."""

    segmenter: Segmenter
    config: NodeConfig
    mask_ids: dict[str, int]   # mask class name -> train id
    palette: np.ndarray        # (256, 3) uint8 colours of the class table
    device_text: str           # e.g. "cuda:0 fp16", on /diagnostics and each timing message
    backend_text: str          # the backend's own description and the thread count, on /diagnostics
    threads: int = 0           # CPU threads of the network (the ``threads`` parameter, resolved; 0: leave as is)


def load_model(config: NodeConfig, log: Any) -> LoadedModel:
    """Load and warm up the model ``config`` names; ConfigError (naming the parameter) when the
    loaded model cannot do what the parameters ask. ``log``: the node's logger (a warning when
    a torch model ends up on the CPU)."""
    # Before torch's first import (the node's is here, at configure): OpenMP reads its wait policy
    # once, when torch loads it; bounded spinning keeps a CPU-hungry neighbour from collapsing the
    # frame rate (sfnet_core/threads.py).
    prepare_process()
    from sfnet_core.devices import resolve_device  # lazy: torch, loaded at configure, not at start-up
    from sfnet_core.inference import Segmenter  # lazy: torch (as above)

    threads = apply_threads(config.threads, lambda text: log.warning(f"parameter 'threads': {text}"))
    # A vehicle whose GPU went missing keeps segmenting, slowly, rather than not at all.
    device = resolve_device(config.device, "parameter 'device'", fallback=True)
    if config.backend == "openvino" and config.device == "auto":
        device = resolve_device("cpu")  # OpenVINO runs on the CPU: "auto" must not pick a GPU it would refuse
    segmenter = Segmenter.from_checkpoint(
        config.checkpoint, device=device, precision=config.precision, input_size=config.input_size,
        compile=config.compile, warmup=True, backend=config.backend, resize=config.resize,
        output=config.output_resolution, threads=threads, flows=config.publish_flow)
    on_cpu = segmenter.device.type == "cpu"
    if segmenter.backend.name == "torch" and on_cpu and config.precision in ("auto", "fp16"):
        log.warning("running on the CPU in fp32: expect a low frame rate")
    try:
        mask_ids = {name: segmenter.classes.index(name) for name in config.mask_classes}
    except ConfigError as exc:
        raise ConfigError(f"parameter 'mask_classes': {exc}") from None
    if config.publish_flow and not segmenter.backend.supports_flows:
        raise ConfigError(f"parameter 'publish_flow': needs the torch backend; the {segmenter.backend.name} "
                          "backend returns class scores only")
    return LoadedModel(segmenter, config, mask_ids, segmenter.classes.palette(),
                       f"{segmenter.device} {segmenter.precision}",
                       f"{segmenter.backend.describe()}, {threads} CPU thread(s)", threads)


def free_cuda_cache() -> None:
    """Give the GPU memory of released models back to the device (call once the last reference to
    a CUDA model is gone; memory a batch in flight still uses is freed when that batch ends)."""
    import torch  # lazy: only called after a CUDA model ran, when torch is loaded anyway

    torch.cuda.empty_cache()


def input_size_text(model: LoadedModel) -> str:
    """The network input size the node runs at, as its log says it: the parameter's, the fixed
    size of an exported model when the parameter is empty, or each frame's own ("native")."""
    if model.config.input_size:
        return str(list(model.config.input_size))
    if model.segmenter.input_size:
        return f"{list(model.segmenter.input_size)} (the model's fixed size; input_size is empty)"
    return "native"
