#!/usr/bin/env python3
"""Inference speed of SFNet against its baselines and across backends, measured side by side in one run.

CPU (always; ``--threads`` threads, pinned to that many cores; default 2), at ``--size`` (default
512x1024), batch 1, random weights, 19 classes:

* networks, PyTorch eager: sfnet_resnet18 vs torchvision ``deeplabv3_resnet50`` and
  ``fcn_resnet50`` (SFNet must be at least 4x faster than DeepLabV3), and fpn_resnet18 (the same
  network with bilinear upsampling instead of FAMs: at most 10% faster);
* networks, ONNX Runtime fp32: sfnet_resnet18 and deeplabv3_resnet50 (the 4x in the same runtime);
* the ``Segmenter`` end to end, every path this CPU offers (uint8 frame in, uint8 labels out:
  upload, normalise, pad, network, argmax, download): torch fp32 (eager, channels_last: what the
  node runs by default), torch bf16 and torch.compile bf16 (only on CPUs with avx512_bf16 or AMX;
  otherwise the row is skipped and says why), onnxruntime fp32 (the export cache's model),
  openvino fp32 / bf16 (native only), onnxruntime and openvino int8 on one QDQ file (static,
  calibrated on ``--calib-frames`` synthetic frames), PT2E int8 (X86InductorQuantizer +
  torch.compile, where torch / torchao have it; not in ``--quick``); per path the ms, the ratio to
  torch fp32, the bare network on the same canvas and the fraction of the peak of its precision;
  then the CPU's instruction-set line and the target of its kind: AMX: best <= 100 ms; AVX-512
  VNNI: best >= 4x torch fp32; no VNNI: best >= 2.5x;
* pre- and post-processing apart from the network (upload, normalise + pad, banded argmax of
  NCHW and channels_last scores, confidence), each as a share of the fastest bare network;
  target: pre + post (with confidence) <= 15% of it, in that network's score layout;
* the machine's limit: an fp32 GEMM measured robustly (after warm-up, the best over several
  sizes and repetitions, threads pinned) and the theoretical fp32 / int8 peaks of the cores in use,
  from their vector units (``/proc/cpuinfo`` flags) and clock (``lscpu``), each printed with how
  it was obtained; SFNet's achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) as a
  fraction of each.

Every timed thing runs once per round, round after round (A, B, C, A, B, C, ...), so load from
other processes hits all of them alike; the table shows the fastest and the median round of
``--repeats``, and the ratios and checks use the fastest (load only ever adds time: on a shared
machine the minimum is the least disturbed figure).

CUDA (when available): FPS at ``--cuda-size`` (default 1024x2048) of the bare network (fp32 /
fp16, channels_last, torch.compile), the baselines, and the ``Segmenter`` end to end: eager fp16,
``pipeline="compiled"`` and ``pipeline="cuda_graph"`` (the whole step as one compiled region /
one CUDA graph), one camera and ``--cameras`` cameras batched, and onnxruntime when the installed
onnxruntime has the CUDA provider.

Prints a table and, as the last line, one JSON object. Exit status 1 when a check fails
(not in ``--quick`` mode, whose small inputs are only a smoke test).

    python bench/speed.py                 # full CPU run (+ CUDA when present)
    python bench/speed.py --quick         # seconds: checks that everything runs
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfnet_core.models import build_model

NUM_CLASSES = 19


def interleaved(runners: dict[str, Callable[[], object]], repeats: int, warmup: int,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each runner; one call of each per round, rounds repeated."""
    for _ in range(warmup):
        for run in runners.values():
            run()
        sync()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs (multiply and add counted separately) of one forward, by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def torchvision_model(name: str) -> torch.nn.Module:
    from torchvision.models import segmentation

    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()


class _OutOnly(torch.nn.Module):
    """torchvision segmentation models return {"out": ...}: ONNX export wants a tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(model: torch.nn.Module, x: torch.Tensor, threads: int, path: Path) -> Callable[[], object]:
    from sfnet_core.onnx.export import INPUT_NAME, export_module

    export_module(model, path, height=x.shape[2], width=x.shape[3])
    session = ort_session(path, threads)
    feed = {INPUT_NAME: x.numpy()}
    return lambda: session.run(None, feed)


# -- the machine's limit ------------------------------------------------------------------------

def pin_threads(threads: int) -> list[int]:
    """Pin this process to ``threads`` of its allowed CPUs (so OpenMP / ORT threads do not migrate)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[: max(1, threads)]
        os.sched_setaffinity(0, chosen)
        return chosen
    except (AttributeError, OSError):
        return []


def cpu_description() -> dict:
    """Flags (/proc/cpuinfo) and clock (lscpu, else /proc/cpuinfo) of this machine, with sources."""
    info: dict = {"model": "?", "flags": [], "clock_ghz": None, "clock_source": "unknown"}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        info["model"] = m.group(1).strip() if m else "?"
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        info["flags"] = m.group(1).split() if m else []
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        cpuinfo_mhz = float(m.group(1)) if m else None
    except OSError:
        cpuinfo_mhz = None
    lscpu = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout
    m = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
    if m:
        info["clock_ghz"], info["clock_source"] = float(m.group(1)) / 1000, "lscpu 'CPU max MHz' (maximum boost)"
    elif cpuinfo_mhz:
        info["clock_ghz"] = cpuinfo_mhz / 1000
        info["clock_source"] = ("/proc/cpuinfo 'cpu MHz' (lscpu shows no max MHz, as in VMs: the "
                                "nominal clock; boost may run higher)")
    m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    if m:
        info["model"] = m.group(1).strip()
    return info


def theoretical_peaks(info: dict, cores: int) -> dict:
    """Theoretical fp32 FLOP/s and int8 op/s of ``cores`` cores from their vector units and clock.

    Per core and cycle, assuming two vector pipes able to multiply (true of Intel since Haswell
    and AMD Zen 2-4 for 256-bit; Xeon Gold 5xxx / Silver have one 512-bit FMA port):
    fp32: 2 FMA x lanes x 2; int8: AMX 1024 MACs; AVX-512 VNNI vpdpbusd 2 x 64 MACs; AVX-VNNI
    2 x 32 MACs; AVX2 without VNNI vpmaddubsw + vpmaddwd: 32 MACs per cycle (each MAC = 2 ops).
    """
    flags = set(info["flags"])
    if "avx512f" in flags:
        fp32, fp32_how = 2 * 16 * 2, "AVX-512: 2 FMA pipes x 16 fp32 lanes x 2 flops"
    elif "avx2" in flags and "fma" in flags:
        fp32, fp32_how = 2 * 8 * 2, "AVX2 + FMA: 2 FMA pipes x 8 fp32 lanes x 2 flops"
    elif "avx" in flags:
        fp32, fp32_how = 8 + 8, "AVX without FMA: 8-lane multiply + 8-lane add"
    else:
        fp32, fp32_how = 4 + 4, "SSE: 4-lane multiply + 4-lane add"
    if "amx_int8" in flags:
        int8, int8_how = 2 * 1024, "AMX: 1024 int8 MACs per cycle (tile multiply)"
    elif "avx512_vnni" in flags:
        int8, int8_how = 2 * 2 * 64, "AVX-512 VNNI: 2 x vpdpbusd x 64 MACs"
    elif "avx_vnni" in flags:
        int8, int8_how = 2 * 2 * 32, "AVX-VNNI: 2 x vpdpbusd (256-bit) x 32 MACs"
    elif "avx2" in flags:
        int8, int8_how = 2 * 32, "AVX2 without VNNI: vpmaddubsw + vpmaddwd, 32 u8 x s8 MACs per cycle"
    else:
        int8, int8_how = fp32, "no int8 dot-product instructions: as fp32"
    if "amx_bf16" in flags:
        bf16, bf16_how = 2 * 512, "AMX: 512 bf16 MACs per cycle (tile multiply)"
    elif "avx512_bf16" in flags:
        bf16, bf16_how = 2 * 2 * 32, "AVX-512 BF16: 2 x vdpbf16ps x 32 MACs"
    else:
        bf16, bf16_how = fp32, "no native bf16: emulated in fp32 arithmetic, fp32's peak"
    ghz = info["clock_ghz"] or 0.0
    return {
        "cores": cores, "clock_ghz": ghz, "clock_source": info["clock_source"],
        "fp32_gflops": cores * ghz * fp32, "fp32_per_cycle": fp32, "fp32_how": fp32_how,
        "int8_gops": cores * ghz * int8, "int8_per_cycle": int8, "int8_how": int8_how,
        "bf16_gflops": cores * ghz * bf16, "bf16_per_cycle": bf16, "bf16_how": bf16_how,
        "bf16_native": bool({"avx512_bf16", "amx_bf16"} & flags),
        "kind": cpu_kind(flags),
        "isa": " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ISA_FLAGS),
    }


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

# The target of each kind of CPU (issue 18): the Segmenter end to end at 512x1024, 2 threads.
TARGETS = {
    "amx": ("best_at_most_100ms_amx", "best <= 100 ms (10 FPS; AMX CPU)"),
    "avx512_vnni": ("best_at_least_4x_torch_fp32_avx512", "best >= 4x torch fp32 (AVX-512 without AMX)"),
    "no_vnni": ("best_at_least_2.5x_torch_fp32_no_vnni", "best >= 2.5x torch fp32 (CPU without VNNI)"),
    "avx_vnni": ("best_at_least_2.5x_torch_fp32_avx_vnni",
                 "best >= 2.5x torch fp32 (AVX-VNNI without AVX-512: no target of its own, the no-VNNI floor)"),
}


def cpu_kind(flags: set[str]) -> str:
    """Which target applies: ``amx``, ``avx512_vnni``, ``avx_vnni`` or ``no_vnni``."""
    if {"amx_int8", "amx_bf16"} & flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx_vnni" if "avx_vnni" in flags else "no_vnni"


def target_check(kind: str, best_ms: float, torch_fp32_ms: float) -> tuple[str, str, bool]:
    """(check name, what it asks, passed) for the CPU kind's target."""
    name, text = TARGETS[kind]
    passed = best_ms <= 100.0 if kind == "amx" else torch_fp32_ms / best_ms >= (4.0 if kind == "avx512_vnni" else 2.5)
    return name, text, passed


def measure_gemm(sizes: list[int], repeats: int) -> dict:
    """Best fp32 GEMM GFLOP/s over ``sizes`` (n x n x n), each warmed up then timed ``repeats`` times."""
    best: dict[int, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        for _ in range(2):
            torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - start)
        best[n] = 2 * n**3 / min(times) / 1e9
    top = max(best, key=best.get)
    return {"per_size_gflops": best, "best_gflops": best[top], "best_size": top, "repeats": repeats}


# -- the Segmenter end to end -------------------------------------------------------------------

def calibration_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    from sfnet_core.data.synthetic_scenes.render import render_scene

    return [render_scene(seed=9000 + i, height=height, width=width)[0] for i in range(count)]


ROW_PRECISION = {"fp32": "fp32", "bf16": "bf16", "int8": "int8"}


Runners = dict[str, Callable[[], object]]


def segmenter_runners(args: argparse.Namespace, model: torch.nn.Module, workdir: Path, cpu: dict,
                      errors: dict, skipped: dict) -> tuple[Runners, Runners]:
    """``segmenter <path> <precision>`` -> a call labelling one uint8 frame, for each path this CPU
    offers; and ``network <path> <precision>`` -> the same path's bare forward on a ready canvas."""
    from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.inference import Segmenter
    from sfnet_core.onnx.export import export_onnx
    from sfnet_core.onnx.quantize import quantize_int8

    h, w = args.size
    classes = ClassTable(tuple(f"c{i}" for i in range(NUM_CLASSES)), tuple((i, i, i) for i in range(NUM_CLASSES)))
    ck = workdir / "sfnet_resnet18.pt"
    save_checkpoint(ck, model, "sfnet_resnet18", classes)
    frame = calibration_frames(1, h, w)[0]
    runners: dict[str, Callable[[], object]] = {}
    networks: dict[str, Callable[[], object]] = {}
    cache = workdir / "cache"
    common: dict[str, Any] = {"threads": args.threads, "cache_dir": cache, "warmup": False}

    def add(name: str, make: Callable[[], Segmenter]) -> None:
        try:
            seg = make()
            seg.segment(frame)
            canvas = seg.preprocess(frame).contiguous(memory_format=seg.backend.memory_format)
            runners[f"segmenter {name}"] = lambda: seg.segment(frame)
            networks[f"network {name}"] = lambda: seg.backend(canvas)
        except Exception as exc:
            errors[f"segmenter {name}"] = f"{type(exc).__name__}: {exc}"[:300]

    add("torch fp32", lambda: Segmenter.from_checkpoint(ck, device="cpu", precision="fp32", warmup=False))
    no_bf16 = "no avx512_bf16 / AMX on this CPU (bf16 would be emulated: not offered)"
    if cpu["bf16_native"]:
        add("torch bf16", lambda: Segmenter.from_checkpoint(ck, device="cpu", precision="bf16", warmup=False))
        if args.compile:
            add("torch.compile bf16", lambda: Segmenter.from_checkpoint(
                ck, device="cpu", precision="bf16", input_size=(h, w), compile=True, warmup=False))
        else:
            skipped["segmenter torch.compile bf16"] = "--no-compile / --quick"
    else:
        skipped["segmenter torch bf16"] = skipped["segmenter torch.compile bf16"] = no_bf16
    add("onnxruntime fp32", lambda: Segmenter.from_checkpoint(
        ck, backend="onnxruntime", device="cpu", input_size=(h, w), **common))
    add("openvino fp32", lambda: Segmenter.from_checkpoint(
        ck, backend="openvino", device="cpu", precision="fp32", input_size=(h, w), **common))
    if cpu["bf16_native"]:
        add("openvino bf16", lambda: Segmenter.from_checkpoint(
            ck, backend="openvino", device="cpu", precision="bf16", input_size=(h, w), **common))
    else:
        skipped["segmenter openvino bf16"] = no_bf16
    int8_path: list[Path] = []

    def int8_file() -> Path:
        if not int8_path:  # one QDQ file for both runtimes: the comparison is of runtimes, not files
            fp32 = export_onnx(load_checkpoint(ck), workdir / "fp32.onnx", height=h, width=w)
            prep = Segmenter(build_model("sfnet_resnet18", NUM_CLASSES), classes, device="cpu", input_size=(h, w),
                             channels_last=False)
            batches = [prep.preprocess(f).numpy() for f in calibration_frames(args.calib_frames, h, w)]
            int8_path.append(quantize_int8(fp32, workdir / "int8.onnx", batches, calibration_source="synthetic frames"))
        return int8_path[0]

    add("onnxruntime int8", lambda: Segmenter.from_checkpoint(int8_file(), backend="onnxruntime", device="cpu",
                                                              **common))
    add("openvino int8", lambda: Segmenter.from_checkpoint(int8_file(), backend="openvino", device="cpu", **common))
    if args.compile:
        pt2e = pt2e_backend(ck, h, w, args.calib_frames)
        if isinstance(pt2e, str):
            skipped["segmenter pt2e int8"] = pt2e
        else:
            add("pt2e int8", lambda: Segmenter(pt2e, classes, input_size=(h, w)))
    else:
        skipped["segmenter pt2e int8"] = "--no-compile / --quick (torch.compile of a PT2E graph takes minutes)"
    return runners, networks


def pt2e_backend(ck: Path, h: int, w: int, calib_frames: int) -> object:
    """PT2E int8 (X86InductorQuantizer) + torch.compile as an ``InferenceBackend``, or why not.

    torch 2.14 dropped ``torch.ao.quantization.quantize_pt2e``: it lives in ``torchao`` now (not a
    dependency of this project); with torchao 0.18 on torch 2.14.1 the quantizer's conv fusion
    annotation fails on SFNet's exported graph ("Input partition has more than one output node").
    """
    try:  # lazy: an optional package, only this row needs it
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        try:
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e  # type: ignore[no-redef,import-not-found,unused-ignore]
            from torch.ao.quantization.quantizer import x86_inductor_quantizer as xiq  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ImportError:
            return (f"PT2E quantisation is not in torch {torch.__version__} (moved to torchao, which is not "
                    "installed)")
    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.inference.backends import InferenceBackend

    try:
        net = load_checkpoint(ck).build_model().eval()
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            graph = torch.export.export(net, (x,)).module()
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(graph, quantizer)
            for frame in calibration_frames(calib_frames, h, w):
                prepared(torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255))
            compiled = torch.compile(convert_pt2e(prepared))
    except Exception as exc:  # an optional comparison: say why and carry on
        return f"PT2E failed here: {type(exc).__name__}: {exc}"[:300]

    class Pt2eBackend(InferenceBackend):
        name, precision, num_classes, fixed_size = "pt2e", "int8", NUM_CLASSES, (h, w)
        device = torch.device("cpu")

        def __call__(self, canvas: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return compiled(canvas)

    return Pt2eBackend()


def prepost_runners(args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    """The Segmenter's steps apart from the network, at the bench size (frame = network size):
    upload, normalise + pad (the canvas fill), the banded argmax of channels_last scores (torch)
    and of NCHW scores (ONNX Runtime, OpenVINO), and the confidence on top of the argmax."""
    from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
    from sfnet_core.inference.geometry import plan_geometry
    from sfnet_core.inference.postprocess import DEFAULT_BAND_BYTES, frame_labels
    from sfnet_core.inference.preprocess import DevicePreprocessor, canvas_size

    h, w = args.size
    frame = calibration_frames(1, h, w)[0]
    geom = plan_geometry((h, w), (h, w), "stretch", "input")
    prep = {layout: DevicePreprocessor(torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD, layout)
            for layout in (torch.contiguous_format, torch.channels_last)}
    uploaded = prep[torch.contiguous_format].upload([frame])
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn((1, NUM_CLASSES, h, w), generator=gen)
    layouts = {"NCHW": scores, "channels_last": scores.contiguous(memory_format=torch.channels_last)}
    band = DEFAULT_BAND_BYTES["cpu"]

    def inference(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return fn()
        return run

    runners: dict[str, Callable[[], object]] = {
        "pre upload": inference(lambda: prep[torch.contiguous_format].upload([frame])),
        "pre normalise + pad (NCHW canvas)": inference(
            lambda: prep[torch.contiguous_format].fill(uploaded, [geom], canvas_size(geom), False)),
        "pre normalise + pad (channels_last canvas)": inference(
            lambda: prep[torch.channels_last].fill(uploaded, [geom], canvas_size(geom), False)),
    }
    for layout, sc in layouts.items():
        runners[f"post banded resample + argmax ({layout} scores)"] = inference(
            lambda sc=sc: frame_labels(sc, geom, False, False, band))
        runners[f"post argmax + confidence ({layout} scores)"] = inference(
            lambda sc=sc: frame_labels(sc, geom, True, False, band))
    return runners


def prepost_summary(ms: dict[str, float], network_ms: float | None) -> dict:
    """Pre- and post-processing totals per score layout, and their shares of the fastest network."""
    out: dict = {"network_ms": network_ms, "layouts": {}}
    for layout, canvas in (("NCHW", "NCHW canvas"), ("channels_last", "channels_last canvas")):
        pre = ms["pre upload"] + ms[f"pre normalise + pad ({canvas})"]
        labels = ms[f"post banded resample + argmax ({layout} scores)"]
        with_conf = ms[f"post argmax + confidence ({layout} scores)"]
        row = {"pre_ms": pre, "post_ms": labels, "post_with_confidence_ms": with_conf,
               "confidence_ms": with_conf - labels, "total_ms": pre + with_conf}
        if network_ms:
            row.update({k.replace("_ms", "_share"): v / network_ms for k, v in list(row.items())})
        out["layouts"][layout] = row
    return out


def cpu_suite(args: argparse.Namespace) -> dict:
    pinned = pin_threads(args.threads)
    torch.set_num_threads(args.threads)
    info = cpu_description()
    peaks = theoretical_peaks(info, len(pinned) or args.threads)
    h, w = args.size
    torch.manual_seed(0)
    x = torch.randn(1, 3, h, w)
    models = {
        "sfnet_resnet18": build_model("sfnet_resnet18", NUM_CLASSES).eval(),
        "fpn_resnet18": build_model("fpn_resnet18", NUM_CLASSES).eval(),
        "deeplabv3_resnet50": torchvision_model("deeplabv3_resnet50"),
        "fcn_resnet50": torchvision_model("fcn_resnet50"),
    }

    def forward(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(x)
        return run

    runners: dict[str, Callable[[], object]] = {name: forward(m) for name, m in models.items()}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, model in (("sfnet_resnet18", models["sfnet_resnet18"]),
                            ("deeplabv3_resnet50", _OutOnly(models["deeplabv3_resnet50"]))):
            try:
                runners[f"{name}_onnxruntime"] = onnx_runner(model, x, args.threads, work / f"{name}.onnx")
            except Exception as exc:  # report and carry on: the other comparisons stay valid
                errors[f"{name}_onnxruntime"] = f"{type(exc).__name__}: {exc}"[:300]
        seg_runners, net_runners = segmenter_runners(args, copy.deepcopy(models["sfnet_resnet18"]), work, peaks,
                                                     errors, skipped)
        runners.update(seg_runners)
        runners.update(net_runners)
        runners.update(prepost_runners(args))
        times = interleaved(runners, args.repeats, args.warmup)
    # Ratios come from the fastest round of each: load from other processes only ever adds time,
    # so on a shared machine the minimum is the least disturbed measurement (medians are printed too).
    med = {name: min(t) for name, t in times.items()}
    medians = {name: statistics.median(t) for name, t in times.items()}
    gemm = measure_gemm(args.gemm_sizes, args.gemm_repeats)

    flops = count_flops(models["sfnet_resnet18"], x)
    achieved = flops / med["sfnet_resnet18"] / 1e9
    ratios = {
        "deeplabv3_over_sfnet": med["deeplabv3_resnet50"] / med["sfnet_resnet18"],
        "fcn_over_sfnet": med["fcn_resnet50"] / med["sfnet_resnet18"],
        "sfnet_over_fpn": med["sfnet_resnet18"] / med["fpn_resnet18"],
    }
    if "sfnet_resnet18_onnxruntime" in med:
        ratios["torch_over_onnxruntime"] = med["sfnet_resnet18"] / med["sfnet_resnet18_onnxruntime"]
        if "deeplabv3_resnet50_onnxruntime" in med:
            ratios["deeplabv3_over_sfnet_onnxruntime"] = (med["deeplabv3_resnet50_onnxruntime"]
                                                          / med["sfnet_resnet18_onnxruntime"])
    seg = {k: v for k, v in med.items() if k.startswith("segmenter ")}
    checks = {
        "sfnet_at_least_4x_faster_than_deeplabv3": ratios["deeplabv3_over_sfnet"] >= 4.0,
        "fam_overhead_at_most_10pct": ratios["sfnet_over_fpn"] <= 1.10,
    }
    if "deeplabv3_over_sfnet_onnxruntime" in ratios:
        checks["sfnet_at_least_4x_faster_than_deeplabv3_onnxruntime"] = (
            ratios["deeplabv3_over_sfnet_onnxruntime"] >= 4.0)
    base = seg.get("segmenter torch fp32")
    # The clock of the peaks: VMs show only a nominal clock and the cores boost above it, so the
    # clock is at least what the measured GEMM, or the fastest fp32 path, implies at 100% of fp32's
    # peak (an fp32 fraction never exceeds 100%; int8 / bf16 fractions use the same clock).
    per_core_cycle = peaks["cores"] * peaks["fp32_per_cycle"]
    fp32_paths = [t for name, t in seg.items() if name.endswith("fp32")]
    clocks = {"nominal": peaks["clock_ghz"], "measured GEMM": gemm["best_gflops"] / per_core_cycle,
              "fastest fp32 path": flops / min(fp32_paths) / 1e9 / per_core_cycle if fp32_paths else 0.0}
    clock_source = max(clocks, key=lambda k: clocks[k])
    clock = clocks[clock_source]
    paths = {}
    for name, t in seg.items():
        precision = name.split()[-1]
        peak = peaks[{"fp32": "fp32_gflops", "bf16": "bf16_gflops", "int8": "int8_gops"}[precision]]
        peak_at_clock = peak * clock / peaks["clock_ghz"] if peaks["clock_ghz"] else None
        paths[name] = {"ms": t * 1e3, "precision": precision,
                       "over_torch_fp32": base / t if base else None,
                       "fraction_of_peak": flops / t / 1e9 / peak_at_clock if peak_at_clock else None,
                       "network_ms": med[name.replace("segmenter", "network", 1)] * 1e3
                       if name.replace("segmenter", "network", 1) in med else None,
                       # the torch backend runs channels_last, so its scores come out that way
                       "scores_layout": "channels_last" if name.startswith("segmenter torch") else "NCHW"}
    target = None
    if base:
        best_name = min(seg, key=seg.get)
        ratios["segmenter_best_over_torch_fp32"] = base / seg[best_name]
        check, asks, passed = target_check(peaks["kind"], seg[best_name] * 1e3, base * 1e3)
        checks[check] = passed
        target = {"check": check, "asks": asks, "best": best_name, "best_ms": seg[best_name] * 1e3}
    nets = {k: v["network_ms"] for k, v in paths.items() if v["network_ms"]}
    fastest = min(nets, key=lambda k: nets[k]) if nets else None
    prepost = prepost_summary({k: v * 1e3 for k, v in med.items() if k.startswith(("pre ", "post "))},
                              nets[fastest] if fastest else None)
    if fastest:
        # the share that counts: the fastest network's own score layout, confidence included
        layout = paths[fastest]["scores_layout"]
        prepost.update({"fastest_network": fastest, "fastest_layout": layout})
        checks["pre_post_under_15pct_of_fastest_network"] = prepost["layouts"][layout]["total_share"] <= 0.15
    if target and peaks["int8_gops"] and peaks["clock_ghz"]:
        # What no int8 path can beat on this CPU: the network at 100% of the int8 peak (at the clock
        # above) plus the measured pre- and post-processing; says whether a missed target is the
        # software's or the silicon's (AVX2 without VNNI: int8 peak = 2x fp32's).
        at_peak_ms = flops / (peaks["int8_gops"] * clock / peaks["clock_ghz"]) / 1e6
        around_ms = prepost["layouts"]["NCHW"]["total_ms"] if prepost.get("layouts") else 0.0
        target.update(ceiling_ms=at_peak_ms + around_ms, ceiling_over_torch_fp32=base * 1e3 / (at_peak_ms + around_ms))
    int8_ms = seg.get("segmenter onnxruntime int8")
    return {
        "segmenter_best": min(seg, key=seg.get) if seg else None,
        "threads": args.threads,
        "pinned_cpus": pinned,
        "size": [h, w],
        "repeats": args.repeats,
        "min_ms": {k: v * 1e3 for k, v in med.items()},
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "all_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "ratios": ratios,
        "checks": checks,
        "skipped": skipped,
        "cpu": {"model": info["model"], **peaks},
        "sfnet_gflops_per_frame": flops / 1e9,
        "sfnet_achieved_gflop_per_s": achieved,
        "gemm": gemm,
        "gemm_gflop_per_s": gemm["best_gflops"],
        "sfnet_fraction_of_gemm_throughput": achieved / gemm["best_gflops"],
        # The limit: the theoretical peak at the stated clock, or the measured GEMM when it beats that
        # (cores boosting above a nominal clock): a fraction of it can never exceed 100%.
        "fp32_limit_gflops": max(gemm["best_gflops"], peaks["fp32_gflops"]),
        "effective_clock_ghz_from_gemm": gemm["best_gflops"] / peaks["cores"] / peaks["fp32_per_cycle"],
        "sfnet_fraction_of_fp32_limit": achieved / max(gemm["best_gflops"], peaks["fp32_gflops"]),
        "sfnet_int8_fraction_of_int8_peak": (flops / int8_ms / 1e9 / peaks["int8_gops"] * peaks["clock_ghz"]
                                             / max(peaks["clock_ghz"], gemm["best_gflops"] / peaks["cores"]
                                                   / peaks["fp32_per_cycle"])
                                             if int8_ms and peaks["int8_gops"] else None),
        "paths": paths,
        "peak_clock": {"ghz": clock, "from": clock_source},
        "target": target,
        "prepost": prepost,
        "errors": errors,
    }


def cuda_suite(args: argparse.Namespace) -> dict:
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.inference import Segmenter

    h, w = args.cuda_size
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    base = build_model("sfnet_resnet18", NUM_CLASSES).eval().to(device)
    x = torch.randn(1, 3, h, w, device=device)
    runners: dict[str, Callable[[], object]] = {}
    errors: dict[str, str] = {}
    # Network rows: eager fp32 / fp16, channels_last, and one torch.compile (fp16 channels_last,
    # the fastest eager layout): each compile costs about a minute, gpu_check.sh has five in all.
    configs = [("fp32", False, False), ("fp16", False, False), ("fp32", True, False), ("fp16", True, False)]
    if args.compile:
        configs.append(("fp16", True, True))
    for precision, channels_last, compiled in configs:
        model = build_model("sfnet_resnet18", NUM_CLASSES).eval().to(device)
        model.load_state_dict(base.state_dict())
        inp = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inp = x.contiguous(memory_format=torch.channels_last)
        net = torch.compile(model) if compiled else model
        name = f"{precision}{' channels_last' if channels_last else ''}{' compile' if compiled else ''}"

        def run(net=net, inp=inp, half=precision == "fp16") -> object:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                return net(inp)

        try:
            run()  # compile (if any) happens here, outside the timed rounds
            torch.cuda.synchronize()
            runners[name] = run
        except Exception as exc:  # e.g. torch.compile without a working triton
            errors[name] = f"{type(exc).__name__}: {exc}"[:200]
    # The paper's comparison on the GPU too: same precision and memory format for every network.
    baselines = {"fpn_resnet18": build_model("fpn_resnet18", NUM_CLASSES),
                 "deeplabv3_resnet50": torchvision_model("deeplabv3_resnet50"),
                 "fcn_resnet50": torchvision_model("fcn_resnet50")}
    x_last = x.contiguous(memory_format=torch.channels_last)
    for name, model in baselines.items():
        net = model.eval().to(device).to(memory_format=torch.channels_last)

        def run_baseline(net=net) -> object:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                return net(x_last)

        runners[f"{name} fp16 channels_last"] = run_baseline
    classes = ClassTable(tuple(f"c{i}" for i in range(NUM_CLASSES)), tuple((i, i, i) for i in range(NUM_CLASSES)))
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cams = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.cameras)]
    pipelines = ["eager"] + (["compiled", "cuda_graph"] if args.compile else ["cuda_graph"])
    for pipeline in pipelines:
        try:
            seg = Segmenter(copy.deepcopy(base), classes, device="cuda", precision="fp16", input_size=(h, w),
                            pipeline=pipeline, warmup=False)
            seg.segment(frame)
            runners[f"segmenter fp16 {pipeline} (uint8 in, labels out)"] = lambda seg=seg: seg.segment(frame)
            if pipeline != "compiled":  # a second compile (another batch shape) would cost another minute
                seg.segment(cams)
                runners[f"segmenter fp16 {pipeline}, {args.cameras} cameras batched"] = \
                    lambda seg=seg: seg.segment(cams)
        except Exception as exc:
            errors[f"segmenter {pipeline}"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            from sfnet_core.checkpoint import save_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                ck = Path(tmp) / "ck.pt"
                save_checkpoint(ck, base.cpu(), "sfnet_resnet18", classes)
                base.to(device)
                ort_seg = Segmenter.from_checkpoint(ck, backend="onnxruntime", device="cuda", input_size=(h, w),
                                                    cache_dir=Path(tmp) / "cache", warmup=False)
                ort_seg.segment(frame)
            runners[f"segmenter onnxruntime ({ort_seg.backend.providers[0]})"] = lambda: ort_seg.segment(frame)
    except Exception as exc:
        errors["segmenter onnxruntime cuda"] = f"{type(exc).__name__}: {exc}"[:300]
    times = interleaved(runners, args.repeats, max(args.warmup, 3), sync=torch.cuda.synchronize)
    fps = {name: 1.0 / statistics.median(t) for name, t in times.items()}
    for name in list(fps):
        if "cameras batched" in name:
            fps[name] *= args.cameras
    return {
        "device": torch.cuda.get_device_name(0),
        "size": [h, w],
        "repeats": args.repeats,
        "cameras": args.cameras,
        "fps": fps,
        "errors": errors,
    }


def print_report(result: dict) -> None:
    if "cpu" in result:
        print_cpu_report(result["cpu"])
    if "cuda" in result:
        cuda = result["cuda"]
        ch, cw = cuda["size"]
        print(f"\nCUDA {cuda['device']}, {ch}x{cw}, median of {cuda['repeats']} interleaved rounds (FPS; "
              f"batched rows: frames per second over {cuda['cameras']} cameras)")
        base = cuda["fps"].get("fp16 channels_last compile") or cuda["fps"].get("fp16 channels_last")
        print(f"{'configuration':66s} {'FPS':>8s}     {'vs bare fp16 network' if base else ''}")
        for name, fps in cuda["fps"].items():
            relative = f"{fps / base:8.2f}" if base else ""
            print(f"{name:66s} {fps:8.1f} FPS {relative}")
        for name, err in cuda["errors"].items():
            print(f"{name:66s} failed: {err}")


def print_cpu_report(cpu: dict) -> None:
    h, w = cpu["size"]
    print(f"\nCPU {cpu['cpu']['model']}, {cpu['threads']} threads pinned to CPUs {cpu['pinned_cpus']}, {h}x{w}, "
          f"batch 1, {cpu['repeats']} interleaved rounds (ratios from the fastest round of each)")
    print(f"{'network (bare forward)':40s} {'min ms':>10s} {'median ms':>10s} {'vs sfnet':>9s}")
    base = cpu["min_ms"]["sfnet_resnet18"]
    for name, ms in cpu["min_ms"].items():
        if not name.startswith(("segmenter ", "pre ", "post ")):
            print(f"{name:40s} {ms:10.1f} {cpu['median_ms'][name]:10.1f} {ms / base:8.2f}x")
    print_paths(cpu)
    print_prepost(cpu)
    r, c = cpu["ratios"], cpu["checks"]
    verdict = {True: "PASS", False: "FAIL"}
    print(f"\nDeepLabV3-R50 / SFNet-R18 time: {r['deeplabv3_over_sfnet']:.2f}x (need >= 4x)  "
          f"{verdict[c['sfnet_at_least_4x_faster_than_deeplabv3']]}")
    if "deeplabv3_over_sfnet_onnxruntime" in r:
        print(f"DeepLabV3-R50 / SFNet-R18 time in ONNX Runtime: {r['deeplabv3_over_sfnet_onnxruntime']:.2f}x "
              f"(need >= 4x)  {verdict[c['sfnet_at_least_4x_faster_than_deeplabv3_onnxruntime']]}")
    print(f"FCN-R50 / SFNet-R18 time:       {r['fcn_over_sfnet']:.2f}x")
    print(f"SFNet-R18 / FPN-R18 time (FAM cost): {r['sfnet_over_fpn']:.3f} (need <= 1.10)  "
          f"{verdict[c['fam_overhead_at_most_10pct']]}")
    if "torch_over_onnxruntime" in r:
        print(f"PyTorch eager / ONNX Runtime time (network): {r['torch_over_onnxruntime']:.2f}x")
    if cpu["target"]:
        t = cpu["target"]
        print(f"Segmenter end to end, best CPU path ({t['best']}): {t['best_ms']:.1f} ms, "
              f"{r['segmenter_best_over_torch_fp32']:.2f}x torch fp32; target for this CPU: {t['asks']}  "
              f"{verdict[c[t['check']]]}")
        if "ceiling_ms" in t:
            print(f"  ceiling on this CPU: an int8 network at 100% of the int8 peak + the measured pre/post = "
                  f"{t['ceiling_ms']:.1f} ms = {t['ceiling_over_torch_fp32']:.2f}x torch fp32")
    for name, err in cpu["errors"].items():
        print(f"{name} failed: {err}")
    p, g = cpu["cpu"], cpu["gemm"]
    sizes = ", ".join(f"{n}: {v:.1f}" for n, v in g["per_size_gflops"].items())
    print(f"\nMachine limit, {p['cores']} cores:")
    print(f"  measured fp32 GEMM: best {g['best_gflops']:.1f} GFLOP/s (n={g['best_size']}; best of {g['repeats']} "
          f"after warm-up, per size {sizes})")
    print(f"  theoretical fp32:   {p['fp32_gflops']:.1f} GFLOP/s = {p['cores']} cores x {p['clock_ghz']:.3f} GHz x "
          f"{p['fp32_per_cycle']} flop/cycle ({p['fp32_how']}; clock: {p['clock_source']})")
    print(f"  theoretical int8:   {p['int8_gops']:.1f} Gop/s = {p['cores']} cores x {p['clock_ghz']:.3f} GHz x "
          f"{p['int8_per_cycle']} op/cycle ({p['int8_how']})")
    print(f"  theoretical bf16:   {p['bf16_gflops']:.1f} GFLOP/s = {p['cores']} cores x {p['clock_ghz']:.3f} GHz x "
          f"{p['bf16_per_cycle']} flop/cycle ({p['bf16_how']})")
    if g["best_gflops"] > p["fp32_gflops"]:
        print(f"  the measured GEMM beats the theoretical peak at {p['clock_ghz']:.3f} GHz: the cores run at "
              f">= {cpu['effective_clock_ghz_from_gemm']:.2f} GHz (boost); the limit below is the measured GEMM")
    print(f"SFNet-R18: {cpu['sfnet_gflops_per_frame']:.1f} GFLOP/frame, "
          f"{cpu['sfnet_achieved_gflop_per_s']:.1f} GFLOP/s "
          f"achieved in PyTorch fp32 -> {100 * cpu['sfnet_fraction_of_gemm_throughput']:.1f}% of the measured GEMM, "
          f"{100 * cpu['sfnet_fraction_of_fp32_limit']:.1f}% of the fp32 limit "
          f"({cpu['fp32_limit_gflops']:.1f} GFLOP/s)")
    if cpu["sfnet_int8_fraction_of_int8_peak"]:
        print(f"SFNet-R18 int8, Segmenter end to end: {100 * cpu['sfnet_int8_fraction_of_int8_peak']:.1f}% of the "
              "theoretical int8 peak (at the clock the GEMM implies, if higher)")


def print_paths(cpu: dict) -> None:
    """The Segmenter end to end per path: ms, vs torch fp32, fraction of its precision's peak."""
    print(f"\nCPU: {cpu['cpu']['model']}; {cpu['cpu']['isa']}; kind: {cpu['cpu']['kind']}")
    pc = cpu["peak_clock"]
    print(f"(fractions of the peak at {pc['ghz']:.2f} GHz, the {pc['from']} clock: the largest of the nominal clock "
          "and those the measured GEMM and the fastest fp32 path imply)")
    print(f"{'Segmenter end to end (uint8 in, labels out)':44s} {'min ms':>8s} {'median':>8s} {'network':>8s} "
          f"{'vs torch fp32':>13s} {'of peak':>8s}")
    for name, row in cpu["paths"].items():
        ratio = f"{row['over_torch_fp32']:12.2f}x" if row["over_torch_fp32"] else f"{'':13s}"
        peak = f"{100 * row['fraction_of_peak']:6.1f}% {row['precision']}" if row["fraction_of_peak"] else ""
        net = f"{row['network_ms']:8.1f}" if row["network_ms"] else f"{'':8s}"
        print(f"{name:44s} {row['ms']:8.1f} {cpu['median_ms'][name]:8.1f} {net} {ratio} {peak}")
    for name, why in cpu["skipped"].items():
        print(f"{name:44s} skipped: {why}")


def print_prepost(cpu: dict) -> None:
    """The steps apart from the network and their share of the fastest network time."""
    pp = cpu["prepost"]
    net = pp["network_ms"]
    print(f"\nPre- and post-processing apart from the network ({cpu['size'][0]}x{cpu['size'][1]} frame = network "
          f"size), shares of the fastest network ({net:.1f} ms)" if net else "\nPre- and post-processing")
    for name, ms in cpu["min_ms"].items():
        if name.startswith(("pre ", "post ")):
            share = f"{100 * ms / net:6.1f}%" if net else ""
            print(f"  {name:52s} {ms:8.2f} ms {share}")
    for layout, row in pp["layouts"].items():
        share = f" = {100 * row['total_share']:.1f}% of the network (need <= 15%)" if net else ""
        print(f"  total, {layout} scores: pre {row['pre_ms']:.1f} + post {row['post_ms']:.1f} + confidence "
              f"{row['confidence_ms']:.1f} = {row['total_ms']:.1f} ms{share}")
    if "pre_post_under_15pct_of_fastest_network" in cpu["checks"]:
        ok = cpu["checks"]["pre_post_under_15pct_of_fastest_network"]
        print(f"Pre + post (with confidence) under 15% of the fastest network ({pp['fastest_network']}, "
              f"{pp['fastest_layout']} scores): {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="CPU input size (default 512 1024)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--gemm-sizes", type=int, nargs="+", default=None,
                        help="n of the n x n fp32 GEMMs (default 512 1024 2048; quick 256 512)")
    parser.add_argument("--gemm-repeats", type=int, default=None, help="timed GEMMs per size (default 5; quick 2)")
    parser.add_argument("--calib-frames", type=int, default=None, help="int8 calibration frames (default 8; quick 2)")
    parser.add_argument("--cuda-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="CUDA input size (default 1024 2048)")
    parser.add_argument("--cameras", type=int, default=4, help="cameras batched in the CUDA Segmenter rows (default 4)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile configurations (CUDA; CPU: torch.compile bf16, PT2E int8)")
    parser.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA section")
    parser.add_argument("--no-cpu", dest="cpu", action="store_false", help="skip the CPU section (GPU machines)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: checks that the benchmark runs")
    args = parser.parse_args(argv)
    args.size = args.size or ([128, 256] if args.quick else [512, 1024])
    args.repeats = args.repeats or (2 if args.quick else 7)
    args.gemm_sizes = args.gemm_sizes or ([256, 512] if args.quick else [512, 1024, 2048])
    args.gemm_repeats = args.gemm_repeats or (2 if args.quick else 5)
    args.calib_frames = args.calib_frames or (2 if args.quick else 8)
    args.cuda_size = args.cuda_size or ([256, 512] if args.quick else [1024, 2048])
    if args.quick:
        args.compile = False
    if min(args.size) < 32 or args.repeats < 1 or any(s % 32 for s in args.size):
        parser.error("--size must be multiples of 32 (at least 32x32) and --repeats at least 1")

    result: dict = {"torch": torch.__version__, "quick": args.quick}
    if args.cpu:
        result["cpu"] = cpu_suite(args)
    if args.cuda and torch.cuda.is_available():
        result["cuda"] = cuda_suite(args)
    print_report(result)
    print(json.dumps(result))
    return 0 if args.quick or not args.cpu or all(result["cpu"]["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
