#!/usr/bin/env python3
"""Inference speed of SFNet against its baselines, measured side by side in one run.

CPU (always; ``--threads`` threads, default 2), at ``--size`` (default 512x1024), batch 1:

* sfnet_resnet18 vs torchvision ``deeplabv3_resnet50`` and ``fcn_resnet50`` (random weights,
  19 classes): SFNet must be at least 4x faster than DeepLabV3;
* the cost of the flow alignment modules: sfnet_resnet18 vs fpn_resnet18 (same network with
  bilinear upsampling instead of FAMs): at most 10% slower;
* ONNX Runtime vs PyTorch eager for sfnet_resnet18;
* sfnet_resnet18's achieved GFLOP/s (FLOPs from ``torch.utils.flop_counter``) against the
  machine's own fp32 GEMM throughput (a large ``torch.mm``), i.e. a fraction of the physical
  limit.

Every timed thing runs once per round, round after round (A, B, C, A, B, C, ...), so load from
other processes hits all of them alike; the table shows medians over ``--repeats`` rounds.

CUDA (when available): FPS of sfnet_resnet18 at ``--cuda-size`` (default 1024x2048) in fp32 /
fp16 (autocast, as the Segmenter runs it), with and without channels_last and torch.compile,
plus the Segmenter end to end (uint8 image in, uint8 labels out).

Prints a table and, as the last line, one JSON object. Exit status 1 when a check fails
(not in ``--quick`` mode, whose small inputs are only a smoke test).

    python bench/speed.py                 # full CPU run (+ CUDA when present)
    python bench/speed.py --quick         # seconds: checks that everything runs
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfnet_core.models import build_model  # noqa: E402

NUM_CLASSES = 19


def interleaved(runners: dict[str, Callable[[], object]], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
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


def onnx_runner(model: torch.nn.Module, x: torch.Tensor, threads: int, workdir: Path) -> Callable[[], object]:
    import onnxruntime as ort

    from sfnet_core.export import INPUT_NAME, export_module

    path = export_module(model, workdir / "sfnet_resnet18.onnx", height=x.shape[2], width=x.shape[3])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: x.numpy()}
    return lambda: session.run(None, feed)


def cpu_suite(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
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

    n = args.gemm_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    runners: dict[str, Callable[[], object]] = {name: forward(m) for name, m in models.items()}
    with tempfile.TemporaryDirectory() as tmp:
        errors: dict[str, str] = {}
        try:
            runners["sfnet_resnet18_onnxruntime"] = onnx_runner(models["sfnet_resnet18"], x, args.threads, Path(tmp))
        except Exception as exc:  # report and carry on: the other comparisons stay valid
            errors["sfnet_resnet18_onnxruntime"] = f"{type(exc).__name__}: {exc}"[:300]
        runners["gemm"] = lambda: torch.mm(a, b)
        times = interleaved(runners, args.repeats, args.warmup)
    med = {name: statistics.median(t) for name, t in times.items()}

    flops = count_flops(models["sfnet_resnet18"], x)
    achieved = flops / med["sfnet_resnet18"] / 1e9
    gemm = 2 * n**3 / med["gemm"] / 1e9
    ratios = {
        "deeplabv3_over_sfnet": med["deeplabv3_resnet50"] / med["sfnet_resnet18"],
        "fcn_over_sfnet": med["fcn_resnet50"] / med["sfnet_resnet18"],
        "sfnet_over_fpn": med["sfnet_resnet18"] / med["fpn_resnet18"],
    }
    if "sfnet_resnet18_onnxruntime" in med:
        ratios["torch_over_onnxruntime"] = med["sfnet_resnet18"] / med["sfnet_resnet18_onnxruntime"]
    checks = {
        "sfnet_at_least_4x_faster_than_deeplabv3": ratios["deeplabv3_over_sfnet"] >= 4.0,
        "fam_overhead_at_most_10pct": ratios["sfnet_over_fpn"] <= 1.10,
    }
    return {
        "threads": args.threads,
        "size": [h, w],
        "repeats": args.repeats,
        "median_ms": {k: v * 1e3 for k, v in med.items() if k != "gemm"},
        "all_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "ratios": ratios,
        "checks": checks,
        "sfnet_gflops_per_frame": flops / 1e9,
        "sfnet_achieved_gflop_per_s": achieved,
        "gemm_size": n,
        "gemm_gflop_per_s": gemm,
        "sfnet_fraction_of_gemm_throughput": achieved / gemm,
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
    for compiled in (False, True) if args.compile else (False,):
        for channels_last in (False, True):
            model = build_model("sfnet_resnet18", NUM_CLASSES).eval().to(device)
            model.load_state_dict(base.state_dict())
            inp = x
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                inp = x.contiguous(memory_format=torch.channels_last)
            net = torch.compile(model) if compiled else model
            for precision in ("fp32", "fp16"):
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
    segmenter = Segmenter(base, classes, device="cuda", precision="fp16", warmup=False)
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    runners["segmenter fp16 channels_last (uint8 in, labels out)"] = lambda: segmenter.segment(frame)
    if args.compile:  # what the node runs with its `compile` parameter
        compiled = Segmenter(copy.deepcopy(base), classes, device="cuda", precision="fp16", compile=True,
                             warmup=False)
        try:
            compiled.segment(frame)
            runners["segmenter fp16 channels_last compile (uint8 in, labels out)"] = lambda: compiled.segment(frame)
        except Exception as exc:  # noqa: BLE001 - reported with the other failures
            errors["segmenter compile"] = f"{type(exc).__name__}: {exc}"[:200]
    times = interleaved(runners, args.repeats, max(args.warmup, 3), sync=torch.cuda.synchronize)
    return {
        "device": torch.cuda.get_device_name(0),
        "size": [h, w],
        "repeats": args.repeats,
        "fps": {name: 1.0 / statistics.median(t) for name, t in times.items()},
        "errors": errors,
    }


def print_report(result: dict) -> None:
    if "cpu" in result:
        print_cpu_report(result["cpu"])
    if "cuda" in result:
        cuda = result["cuda"]
        ch, cw = cuda["size"]
        print(f"\nCUDA {cuda['device']}, {ch}x{cw}, batch 1, median of {cuda['repeats']} interleaved rounds")
        base = cuda["fps"].get("fp16 channels_last")
        print(f"{'configuration':56s} {'FPS':>8s}     {'time vs fp16 channels_last' if base else ''}")
        for name, fps in cuda["fps"].items():
            relative = f"{base / fps:8.2f}x" if base else ""
            print(f"{name:56s} {fps:8.1f} FPS {relative}")
        for name, err in cuda["errors"].items():
            print(f"{name:56s} failed: {err}")


def print_cpu_report(cpu: dict) -> None:
    h, w = cpu["size"]
    print(f"\nCPU, {cpu['threads']} threads, {h}x{w}, batch 1, median of {cpu['repeats']} interleaved rounds")
    print(f"{'model':32s} {'ms':>10s} {'vs sfnet':>9s}")
    base = cpu["median_ms"]["sfnet_resnet18"]
    for name, ms in cpu["median_ms"].items():
        print(f"{name:32s} {ms:10.1f} {ms / base:8.2f}x")
    r, c = cpu["ratios"], cpu["checks"]
    verdict = {True: "PASS", False: "FAIL"}
    print(f"\nDeepLabV3-R50 / SFNet-R18 time: {r['deeplabv3_over_sfnet']:.2f}x (need >= 4x)  "
          f"{verdict[c['sfnet_at_least_4x_faster_than_deeplabv3']]}")
    print(f"FCN-R50 / SFNet-R18 time:       {r['fcn_over_sfnet']:.2f}x")
    print(f"SFNet-R18 / FPN-R18 time (FAM cost): {r['sfnet_over_fpn']:.3f} (need <= 1.10)  "
          f"{verdict[c['fam_overhead_at_most_10pct']]}")
    if "torch_over_onnxruntime" in r:
        print(f"PyTorch eager / ONNX Runtime time:   {r['torch_over_onnxruntime']:.2f}x")
    for name, err in cpu["errors"].items():
        print(f"{name} failed: {err}")
    print(f"SFNet-R18: {cpu['sfnet_gflops_per_frame']:.1f} GFLOP/frame, {cpu['sfnet_achieved_gflop_per_s']:.1f} GFLOP/s "
          f"achieved; fp32 GEMM ({cpu['gemm_size']}^3) {cpu['gemm_gflop_per_s']:.1f} GFLOP/s -> "
          f"{100 * cpu['sfnet_fraction_of_gemm_throughput']:.1f}% of the GEMM peak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="CPU input size (default 512 1024)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--gemm-size", type=int, default=None, help="n of the n x n fp32 GEMM (default 2048; quick 512)")
    parser.add_argument("--cuda-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="CUDA input size (default 1024 2048)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile CUDA configurations")
    parser.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA section")
    parser.add_argument("--no-cpu", dest="cpu", action="store_false", help="skip the CPU section (GPU machines)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: checks that the benchmark runs")
    args = parser.parse_args(argv)
    args.size = args.size or ([128, 256] if args.quick else [512, 1024])
    args.repeats = args.repeats or (2 if args.quick else 7)
    args.gemm_size = args.gemm_size or (512 if args.quick else 2048)
    args.cuda_size = args.cuda_size or ([256, 512] if args.quick else [1024, 2048])
    if args.quick:
        args.compile = False
    if min(args.size) < 32 or args.repeats < 1:
        parser.error("--size must be at least 32x32 and --repeats at least 1")

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
