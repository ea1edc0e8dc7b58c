#!/usr/bin/env python3
"""Peak memory of one ``Segmenter.segment`` call on a large frame, each case in a fresh process.

The peak is the kernel's high-water mark of the process's resident set (``VmHWM`` in
``/proc/self/status``): tracemalloc does not see PyTorch's allocations. Each case runs in its own
child process: build the Segmenter (random sfnet_resnet18, 19 classes, CPU, fp32), warm it up at
the network input size, read VmHWM (the baseline: interpreter, torch, weights, one forward),
segment one ``--frame`` frame (uint8 RGB, random), read VmHWM again. The growth is what the frame
cost (the 36 MB frame and the 12 MB label image included).

``--reference FILE`` adds the same cases for another ``segmenter.py`` (e.g. the previous version,
``git show HEAD:sfnet_core/inference/segmenter.py > /tmp/old_segmenter.py``), imported in place of
the current one, so before / after are measured side by side in one run.

    python bench/segmenter_memory.py --frame 3000 4000 --input-size 240 320
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, sys
import numpy as np, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads({threads})
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
if {module!r}:
    spec = importlib.util.spec_from_file_location("reference_segmenter", {module!r})
    mod = importlib.util.module_from_spec(spec); sys.modules["reference_segmenter"] = mod
    spec.loader.exec_module(mod)
    Segmenter = mod.Segmenter
else:
    from sfnet_core.inference import Segmenter
from sfnet_core.data.classes import ClassTable
from sfnet_core.models import build_model
torch.manual_seed(0)
classes = ClassTable(tuple(f"c{{i}}" for i in range(19)), tuple((i, i, i) for i in range(19)))
seg = Segmenter(build_model("sfnet_resnet18", 19), classes, device="cpu", precision="fp32",
                input_size={input_size}, warmup=True, **{extra})
frame = np.random.default_rng(0).integers(0, 256, ({h}, {w}, 3), dtype=np.uint8)
before = hwm()
result = seg.segment(frame, return_confidence={confidence})
after = hwm()
print(json.dumps({{"baseline_mb": before, "peak_mb": after, "growth_mb": after - before,
                  "labels": list(result.labels.shape)}}))
"""


def run_case(args: argparse.Namespace, module: str, confidence: bool, extra: dict) -> dict:
    code = CHILD.format(repo=str(REPO), threads=args.threads, module=module, input_size=tuple(args.input_size),
                        h=args.frame[0], w=args.frame[1], confidence=confidence, extra=repr(extra))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.timeout)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame", type=int, nargs=2, default=[3000, 4000], metavar=("H", "W"))
    parser.add_argument("--input-size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", default="", help="another segmenter.py to measure side by side")
    parser.add_argument("--band-mb", type=float, nargs="*", default=[16.0],
                        help="band_bytes of the current Segmenter, in MiB (several: one case each)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    cases: list[tuple[str, str, dict]] = []
    if args.reference:
        cases.append((f"reference ({args.reference})", str(Path(args.reference).resolve()), {}))
    for mb in args.band_mb:
        cases.append((f"current, band_bytes {mb:g} MiB", "", {"band_bytes": int(mb * (1 << 20))}))
    rows = []
    for name, module, extra in cases:
        for confidence in (False, True):
            result = run_case(args, module, confidence, extra)
            rows.append({"case": name, "confidence": confidence, **result})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    fh, fw = args.frame
    print(f"\nPeak RSS (VmHWM) of one segment() call, {fh}x{fw} frame, input_size {args.input_size[0]}x"
          f"{args.input_size[1]}, sfnet_resnet18 19 classes, CPU fp32, {args.threads} thread(s), fresh process each")
    print(f"{'case':60s} {'confidence':>10s} {'baseline MB':>12s} {'peak MB':>9s} {'growth MB':>10s}")
    for row in rows:
        if "error" in row:
            print(f"{row['case']:60s} {str(row['confidence']):>10s} failed: {row['error']}")
        else:
            print(f"{row['case']:60s} {str(row['confidence']):>10s} {row['baseline_mb']:12.0f} "
                  f"{row['peak_mb']:9.0f} {row['growth_mb']:10.0f}")
    print(json.dumps(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
