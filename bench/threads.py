"""Threads under contention: the Segmenter's per-frame time, default vs 1 vs 2 threads, before
and after the wait-policy fix, on a quiet machine and beside CPU-hungry processes (issue 18).

Each row is one worker process (its OpenMP wait policy is fixed when torch loads, so a row cannot
change it afterwards) holding a CPU fp32 Segmenter on a random-weight ``sfnet_resnet18`` (19
classes). The rows take turns: in every round, quiet and then with ``--hogs`` busy processes
beside them (``while True: pass``, or ``--hog torch``: a PyTorch matmul loop with torch's default
threads and spin policy, like a second job), each row segments ``--frames`` frames, the row order
rotating between rounds. Printed: the median ms per frame, the hog/quiet ratio, the ratio to the
fastest row of the same condition, the CPU model and its instruction flags.

Rows ("before" = torch's own defaults: libgomp spin-waiting, torch's thread count):

* ``before: default``  - spin-waiting, ``torch.get_num_threads()`` threads (what sfnet-bag-eval did)
* ``before: 1``        - spin-waiting, 1 thread (the issue's ``--threads 1``)
* ``after, but spinning: default`` - ``apply_threads`` (the available cores, one inter-op
  thread) with libgomp's default spinning left on: isolates the wait policy
* ``after: default``   - ``sfnet_core.threads``: bounded spinning (``GOMP_SPINCOUNT``), the
  available cores
* ``after: 1``, ``after: 2`` - bounded spinning, 1 or 2 threads
* ``passive: default`` - ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once: the most robust
  beside a CPU hog, but every parallel region pays a wake-up on a quiet machine)

Usage (full: 64x128 and 512x1024, both hog kinds take about 10-20 minutes on 2 cores)::

    .venv/bin/python bench/threads.py                      # 64x128 and 512x1024, 3 rounds
    .venv/bin/python bench/threads.py --quick              # 64x128 only, 1 round, few frames
    .venv/bin/python bench/threads.py --sizes 64x128 --hog torch

Run it on an otherwise quiet machine: other load is a hog the bench does not control.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from sfnet_core.threads import WAIT_POLICY_VARIABLES, available_cores  # noqa: E402 - after the path

#: Instruction-set flags worth naming for a CPU network (as /proc/cpuinfo spells them).
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class Row:
    name: str
    fixed: bool       # sfnet_core.threads.apply_threads (count, one inter-op thread); else torch's defaults
    threads: int      # 0 = the default (fixed: the available cores; else torch's own choice)
    prepared: bool    # sfnet_core.threads.prepare_process (bounded spinning); else libgomp's default spinning
    passive: bool = False  # OMP_WAIT_POLICY=PASSIVE instead (what a user may set on a shared machine)


ROWS = (Row("before: default", False, 0, False), Row("before: 1", False, 1, False),
        Row("after, but spinning: default", True, 0, False),
        Row("after: default", True, 0, True), Row("after: 1", True, 1, True), Row("after: 2", True, 2, True),
        Row("passive: default", True, 0, False, True))

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, {repo!r})
fixed, threads, backend, prepared, passive = {fixed!r}, {threads!r}, {backend!r}, {prepared!r}, {passive!r}
if passive:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
elif prepared:
    from sfnet_core.threads import prepare_process
    prepare_process()
import numpy as np
import torch
from sfnet_core.inference import Segmenter
count = threads
if fixed:
    from sfnet_core.threads import apply_threads
    count = apply_threads(threads)
elif threads:
    torch.set_num_threads(threads)
h, w = {size!r}
seg = Segmenter.from_checkpoint({checkpoint!r}, device="cpu", precision="fp32", input_size=(h, w),
                                backend=backend, threads=count or None, warmup=False)
rng = np.random.default_rng(0)
frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
seg.segment(frame)  # warm-up: allocations, oneDNN primitives
wait = os.environ.get("OMP_WAIT_POLICY", "")
if "GOMP_SPINCOUNT" in os.environ:
    wait = "GOMP_SPINCOUNT=" + os.environ["GOMP_SPINCOUNT"]
print(json.dumps({{"ready": True, "torch_threads": torch.get_num_threads(), "wait_policy": wait}}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    times = []
    for _ in range(int(line)):
        start = time.perf_counter()
        seg.segment(frame)
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps(times), flush=True)
"""

QUICK_ROWS = ("before: default", "after: default", "after: 1")
HOG_PYTHON = "while True: pass"
HOG_TORCH = ("import torch\nx = torch.randn(256, 256)\n"
             "while True:\n    for _ in range(50): x = torch.tanh(x @ x)\n")


@dataclass
class Worker:
    row: Row
    process: subprocess.Popen
    info: dict = field(default_factory=dict)

    def run(self, frames: int) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{frames}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"row {self.row.name!r}: the worker ended")
        return json.loads(line)


def clean_environment() -> dict[str, str]:
    """This environment without any wait-policy or thread-count variable (the rows set their own)."""
    drop = {*WAIT_POLICY_VARIABLES, "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def start_worker(row: Row, size: tuple[int, int], checkpoint: Path, backend: str) -> Worker:
    code = WORKER.format(repo=str(REPO), fixed=row.fixed, threads=row.threads, backend=backend, prepared=row.prepared,
                         passive=row.passive, size=size, checkpoint=str(checkpoint))
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=clean_environment())
    worker = Worker(row, process)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"row {row.name!r}: the worker failed to start (exit {process.wait()})")
    worker.info = json.loads(line)
    return worker


def start_hogs(count: int, kind: str) -> list[subprocess.Popen]:
    code = HOG_PYTHON if kind == "python" else HOG_TORCH
    hogs = [subprocess.Popen([sys.executable, "-c", code], env=clean_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    time.sleep(2.0 if kind == "torch" else 0.3)  # torch's import: the hog must be busy before timing
    return hogs


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def write_checkpoint(path: Path) -> Path:
    import torch

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model

    torch.manual_seed(0)
    save_checkpoint(path, build_model("sfnet_resnet18", 19), "sfnet_resnet18",
                    ClassTable.from_yaml(REPO / "config" / "classes" / "cityscapes.yaml"))
    return path


def cpu_description() -> dict:
    """The CPU model and the instruction flags of FLAGS it has (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cpus": os.cpu_count(),
            "available_cores": available_cores()}


def measure_size(size: tuple[int, int], args: argparse.Namespace, checkpoint: Path) -> dict:
    """Every row's per-frame times at ``size``, quiet and with hogs, in interleaved rounds."""
    rows = [row for row in ROWS if row.name in args.rows]
    workers = [start_worker(row, size, checkpoint, args.backend) for row in rows]
    times: dict[str, dict[str, list[float]]] = {r.name: {"quiet": [], "hog": []} for r in rows}
    try:
        for round_index in range(args.rounds):
            order = workers[round_index % len(workers):] + workers[:round_index % len(workers)]
            for condition in ("quiet", "hog"):
                hogs = start_hogs(args.hogs, args.hog) if condition == "hog" else []
                try:
                    for worker in order:
                        times[worker.row.name][condition].extend(worker.run(args.frames))
                finally:
                    stop(hogs)
    finally:
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.write("quit\n")
                worker.process.stdin.close()
        stop([w.process for w in workers])
    report: dict[str, dict] = {}
    for worker in workers:
        quiet, hog = (statistics.median(times[worker.row.name][c]) for c in ("quiet", "hog"))
        report[worker.row.name] = {"quiet_ms": quiet, "hog_ms": hog, "torch_threads": worker.info["torch_threads"],
                                 "wait_policy": worker.info["wait_policy"] or "libgomp default (spin)"}
    for condition in ("quiet", "hog"):
        best = min(r[f"{condition}_ms"] for r in report.values())
        for r in report.values():
            r[f"{condition}_vs_best"] = r[f"{condition}_ms"] / best
    return {"size": list(size), "rows": report}


def print_table(result: dict, args: argparse.Namespace, cpu: dict) -> None:
    h, w = result["size"]
    print(f"\n{h}x{w}, CPU fp32 Segmenter end to end ({args.backend}), median of {args.rounds} round(s) x "
          f"{args.frames} frame(s); hog: {args.hogs} x {args.hog}")
    print("| row | torch threads | wait policy | quiet ms | with hog ms | hog / quiet | quiet / best | hog / best |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in result["rows"].items():
        print(f"| {name} | {r['torch_threads']} | {r['wait_policy']} | {r['quiet_ms']:.1f} | {r['hog_ms']:.1f} | "
              f"{r['hog_ms'] / r['quiet_ms']:.2f} | {r['quiet_vs_best']:.2f} | {r['hog_vs_best']:.2f} |")
    rows = result["rows"]
    if "before: default" in rows and "after: default" in rows:
        print(f"with hog: default before / after the fix = "
              f"{rows['before: default']['hog_ms'] / rows['after: default']['hog_ms']:.2f}x")
    if "after: default" in rows and "after: 1" in rows:
        default, one = rows["after: default"], rows["after: 1"]
        print(f"after the fix, default / 1 thread: with hog {default['hog_ms'] / one['hog_ms']:.2f}, "
              f"quiet {default['quiet_ms'] / one['quiet_ms']:.2f}")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 64x128, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"expected H, W >= 32, got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="64x128 only, 1 round, 3 frames per turn, rows: " + ", ".join(QUICK_ROWS))
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], metavar="ROW", default=None,
                        help="the rows to run (default: all: " + ", ".join(repr(r.name) for r in ROWS) + ")")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None,
                        help="HxW sizes (default: 64x128 512x1024; --quick: 64x128)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=None, help="frames per turn (default 20 at 64x128, 3 above)")
    parser.add_argument("--hogs", type=int, default=available_cores(),
                        help="busy processes beside the rows (default: the available cores)")
    parser.add_argument("--hog", choices=("python", "torch"), default="python",
                        help="python: a bare busy loop; torch: a matmul loop with torch's default threads")
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"), default="torch",
                        help="the Segmenter's backend (a .pt runs in ONNX Runtime / OpenVINO through the export cache)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([(64, 128)] if args.quick else [(64, 128), (512, 1024)])
    if args.quick:
        args.rounds, args.frames = 1, args.frames or 3
    args.rows = args.rows or (QUICK_ROWS if args.quick else [r.name for r in ROWS])
    cpu = cpu_description()
    print(f"CPU {cpu['model']}; flags {' '.join(cpu['flags']) or 'none of ' + ','.join(FLAGS)}; "
          f"{cpu['cpus']} CPU(s), {cpu['available_cores']} available to this process; "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    results = []
    with tempfile.TemporaryDirectory(prefix="sfnet-threads-bench-") as work:
        checkpoint = write_checkpoint(Path(work) / "model.pt")
        os.environ["SFNET_ROS_CACHE"] = os.environ.get("SFNET_ROS_CACHE") or str(Path(work) / "cache")
        for size in sizes:
            frames = args.frames or (20 if size[0] * size[1] <= 128 * 256 else 3)
            result = measure_size(size, argparse.Namespace(**{**vars(args), "frames": frames}), checkpoint)
            print_table(result, argparse.Namespace(**{**vars(args), "frames": frames}), cpu)
            results.append(result)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "hog": args.hog, "hogs": args.hogs, "backend": args.backend,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
