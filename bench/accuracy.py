#!/usr/bin/env python3
"""Accuracy of every CPU path ``backend: auto`` may choose, against PyTorch fp32, end to end.

Each path is a ``Segmenter`` (uint8 frame in, labels out) built the way the tools build it:

* torch fp32 (the reference), torch bf16 (CPUs with native bf16 only);
* onnxruntime fp32, openvino fp32 (the export cache's fp32 ``.onnx``), openvino bf16 (native only);
* onnxruntime int8 and openvino int8 on one QDQ ``.onnx`` (static, per-channel) calibrated on
  ``--calib-frames`` frames of the recipe's *training* split, never the evaluation frames.

Two models:

1. the trained demo checkpoint (``--checkpoint``; default: the one ``sfnet-demo`` trains with
   ``training/configs/synthetic_quick.yaml`` and caches under ``~/.cache/sfnet_ros/demo/``,
   trained now if absent: about half an hour on 2 cores): mIoU on the recipe's held-out
   validation frames (``--frames``, rendered at ``--size``), the delta in points vs torch fp32, and
   the share of labels equal to torch fp32's;
2. a released-format stand-in (the authors' SFNet-R18 state dict layout, 19 classes, random
   weights with calibrated BatchNorm statistics, imported by ``sfnet_core.models.released``):
   labels equal to torch fp32's on the same frames (random weights have no mIoU worth showing).

Checks (issue 18's accuracy bound): every path loses at most 0.3 mIoU points and keeps at least
99.5% of the labels of torch fp32. Prints a table and, as the last line, one JSON object; exit
status 1 when a check fails (not with ``--quick``: a random-weight model on 2 tiny frames).

    python bench/accuracy.py                          # 512x1024, 50 frames (minutes)
    python bench/accuracy.py --size 128 256           # the training size
    python bench/accuracy.py --quick                  # seconds: checks that everything runs
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from sfnet_core.inference import Segmenter

MAX_LOSS_POINTS = 0.3
MIN_EQUAL = 0.995
RECIPE = REPO / "training" / "configs" / "synthetic_quick.yaml"


def native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 runs in hardware (elsewhere it is emulated and not offered)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def frames(seed_base: int, start: int, count: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames ``start .. start + count`` of the synthetic dataset of ``seed_base``: (image, labels)."""
    from sfnet_core.data.synthetic_scenes.render import frame_seed, render_scene

    return [render_scene(frame_seed(seed_base, start + i), *size) for i in range(count)]


def demo_checkpoint(cache_dir: Path) -> Path:
    """The checkpoint ``sfnet-demo`` trains (and caches) with the quick synthetic recipe."""
    from sfnet_ros.tools.demo import checkpoint_for  # lazy: the ROS layer's tool, only for its cache

    return checkpoint_for(RECIPE, [], cache_dir.expanduser().resolve())


def released_stand_in(path: Path, size: tuple[int, int]) -> Path:
    """The authors' SFNet-R18 (19 classes) as released, random weights, imported into a checkpoint."""
    sys.path.insert(0, str(REPO / "test"))
    try:
        from released_reference import (  # type: ignore[import-not-found]  # test/ is on the path here
            random_released_weights,
            released_table,
        )
    finally:
        sys.path.pop(0)
    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model
    from sfnet_core.models.released import import_released, project_options

    weights = random_released_weights(released_table("r18"), "r18", seed=0, size=size)
    imported = import_released({f"module.{k}": v for k, v in weights.items()}, source="released stand-in")
    layout = imported.layout
    model = build_model(layout.variant, layout.num_classes, aux=layout.dsn, **project_options(layout))
    model.load_state_dict(imported.state_dict)
    classes = ClassTable(tuple(f"c{i}" for i in range(19)), tuple((i, i, i) for i in range(19)))
    save_checkpoint(path, model, layout.variant, classes, model_options=project_options(layout))
    return path


def path_builders(ck: Path, size: tuple[int, int], calib: list[np.ndarray], work: Path, threads: int,
                  skipped: dict[str, str]) -> dict[str, Callable[[], Segmenter]]:
    """``<backend> <precision>`` -> a function making that path's Segmenter for ``ck``."""
    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.inference import Segmenter
    from sfnet_core.onnx.export import export_onnx
    from sfnet_core.onnx.quantize import quantize_int8

    common: dict[str, Any] = {"input_size": size, "threads": threads, "cache_dir": work / "cache", "warmup": False}
    int8: list[Path] = []

    def int8_file() -> Path:
        if not int8:  # one QDQ file for both runtimes, calibrated on training frames only
            fp32 = export_onnx(load_checkpoint(ck), work / f"{ck.stem}_fp32.onnx", height=size[0], width=size[1])
            prep = Segmenter.from_checkpoint(ck, backend="torch", device="cpu", precision="fp32", input_size=size,
                                             channels_last=False, warmup=False)
            batches = [prep.preprocess(f).numpy() for f in calib]
            int8.append(quantize_int8(fp32, work / f"{ck.stem}_int8.onnx", batches,
                                      calibration_source="synthetic training frames"))
        return int8[0]

    builders: dict[str, Callable[[], Segmenter]] = {
        "torch fp32": lambda: Segmenter.from_checkpoint(ck, backend="torch", device="cpu", precision="fp32",
                                                        input_size=size, warmup=False),
        "onnxruntime fp32": lambda: Segmenter.from_checkpoint(ck, backend="onnxruntime", device="cpu", **common),
        "openvino fp32": lambda: Segmenter.from_checkpoint(ck, backend="openvino", device="cpu", precision="fp32",
                                                           **common),
    }
    if native_bf16():
        builders["torch bf16"] = lambda: Segmenter.from_checkpoint(ck, backend="torch", device="cpu",
                                                                   precision="bf16", input_size=size, warmup=False)
        builders["openvino bf16"] = lambda: Segmenter.from_checkpoint(ck, backend="openvino", device="cpu",
                                                                      precision="bf16", **common)
    else:
        skipped["torch bf16"] = skipped["openvino bf16"] = "no avx512_bf16 / AMX: bf16 is not offered on this CPU"
    builders["onnxruntime int8"] = lambda: Segmenter.from_checkpoint(int8_file(), backend="onnxruntime",
                                                                     device="cpu", **common)
    builders["openvino int8"] = lambda: Segmenter.from_checkpoint(int8_file(), backend="openvino", device="cpu",
                                                                  **common)
    return builders


def score_paths(builders: dict[str, Callable[[], Segmenter]], data: list[tuple[np.ndarray, np.ndarray]],
                with_miou: bool, errors: dict[str, str]) -> dict[str, dict]:
    """Per path: mIoU (with ``with_miou``) and the share of labels equal to the first path's."""
    from sfnet_core.evaluation.metrics import ConfusionMatrix

    reference: list[np.ndarray] = []
    rows: dict[str, dict] = {}
    for name, build in builders.items():
        try:
            seg = build()
        except Exception as exc:  # one path failing must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        cm = ConfusionMatrix(19, ignore_index=255)
        equal = total = 0
        first = not reference
        for i, (image, truth) in enumerate(data):
            labels = seg.segment(image).labels
            if first:  # the first path (torch fp32) is the reference
                reference.append(labels)
            equal += int((labels == reference[i]).sum())
            total += labels.size
            cm.update(torch.from_numpy(labels).long(), torch.from_numpy(truth).long())
        row: dict = {"labels_equal": equal / total}
        if with_miou:
            row["miou"] = 100.0 * cm.compute().miou
        rows[name] = row
    if with_miou and rows:
        base = next(iter(rows.values()))["miou"]
        for row in rows.values():
            row["delta_points"] = row["miou"] - base
    return rows


def run(args: argparse.Namespace) -> dict:
    size = (args.size[0], args.size[1])
    torch.set_num_threads(args.threads)
    evaluation = frames(0, 2000, args.frames, size)  # the recipe's validation split (seed 0, after 2000)
    calib = [image for image, _ in frames(0, 0, args.calib_frames, size)]  # its training split
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    result: dict = {"size": list(size), "frames": args.frames, "calib_frames": args.calib_frames,
                    "threads": args.threads, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        released = released_stand_in(work / "released.pt", size)
        if args.checkpoint:
            ck, source = Path(args.checkpoint), str(args.checkpoint)
        elif args.quick:  # the stand-in is the model too: one pass over the paths, seconds
            ck, source = released, "the released-format stand-in, random weights (--quick)"
        else:
            ck = demo_checkpoint(Path(args.cache_dir))
            source = f"the demo's training of {RECIPE.name}: {ck}"
        result["checkpoint"] = source
        result["trained"] = score_paths(path_builders(ck, size, calib, work, args.threads, skipped), evaluation,
                                        True, errors)
        released_errors: dict[str, str] = {}
        result["released"] = ({k: {"labels_equal": v["labels_equal"]} for k, v in result["trained"].items()}
                              if ck == released else
                              score_paths(path_builders(released, size, calib, work, args.threads, {}),
                                          evaluation, False, released_errors))
        errors.update({f"released stand-in, {k}": v for k, v in released_errors.items()})
    checks = {}
    for name, row in result["trained"].items():
        checks[f"{name}: at most {MAX_LOSS_POINTS} points lost"] = row["delta_points"] >= -MAX_LOSS_POINTS
        checks[f"{name}: at least {100 * MIN_EQUAL}% labels equal"] = row["labels_equal"] >= MIN_EQUAL
    for name, row in result["released"].items():
        checks[f"released stand-in, {name}: at least {100 * MIN_EQUAL}% labels equal"] = \
            row["labels_equal"] >= MIN_EQUAL
    result.update({"checks": checks, "skipped": skipped, "errors": errors})
    return result


def print_report(result: dict) -> None:
    h, w = result["size"]
    print(f"Accuracy at {h}x{w}, {result['frames']} held-out synthetic frames, {result['threads']} threads; "
          f"int8 calibrated on {result['calib_frames']} training frames; model: {result['checkpoint']}")
    print(f"{'path':20s} {'mIoU':>8s} {'vs fp32':>10s} {'labels = fp32':>14s} {'released stand-in':>18s}")
    for name, row in result["trained"].items():
        rel = result["released"].get(name)
        rel_text = f"{100 * rel['labels_equal']:17.3f}%" if rel else f"{'-':>18s}"
        print(f"{name:20s} {row['miou']:7.2f}% {row['delta_points']:+9.2f}pt {100 * row['labels_equal']:13.3f}% "
              f"{rel_text}")
    for name, why in result["skipped"].items():
        print(f"{name:20s} skipped: {why}")
    for name, err in result["errors"].items():
        print(f"{name:20s} failed: {err}")
    for name, ok in result["checks"].items():
        print(f"check {name}: {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained .pt (default: the demo's cached training; trained if absent)")
    parser.add_argument("--cache-dir", default="~/.cache/sfnet_ros/demo", help="the demo's training cache")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="frame and network size (default 512 1024; quick 64 128)")
    parser.add_argument("--frames", type=int, default=None, help="evaluation frames (default 50; quick 2)")
    parser.add_argument("--calib-frames", type=int, default=None, help="int8 calibration frames (default 16; quick 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="the released-format stand-in as the model, tiny frames: checks that it runs")
    args = parser.parse_args(argv)
    args.size = args.size or ([64, 128] if args.quick else [512, 1024])
    args.frames = args.frames or (2 if args.quick else 50)
    args.calib_frames = args.calib_frames or (2 if args.quick else 16)
    if min(args.size) < 32 or any(s % 32 for s in args.size) or args.frames < 1 or args.calib_frames < 1:
        parser.error("--size must be multiples of 32 (at least 32x32); --frames and --calib-frames at least 1")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    result = run(args)
    print_report(result)
    print(json.dumps(result))
    return 0 if args.quick or all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
