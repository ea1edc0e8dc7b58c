"""Fleet throughput with 1 and 2 workers, and the merge's exactness (issue 19).

Writes a synthetic fleet (``--bags`` drives x 2 cameras x ``--frames`` frames at ``--size``), a
random-weight checkpoint (speed does not depend on the weights), then runs ``sfnet-fleet-eval``
in turns: 1 worker, 2 workers, for ``--rounds`` rounds (interleaved, the order alternating), each
in its own folder. Printed per configuration: the median frames/s over the rounds (frames / the
run's wall time, model loading in each worker included), the ratio to 1 worker, and the CPU
with its instruction flags. Then the 2-worker run's per-bag results are split in two halves,
merged with ``sfnet-fleet-merge``, and the merged confusion matrix is compared with the
1-worker run's: equal, or the bench exits 1.

    .venv/bin/python bench/fleet.py                      # 8 bags x 2 cameras x 20 frames, 128x256, 2 rounds
    .venv/bin/python bench/fleet.py --bags 2 --frames 2 --size 32x64 --rounds 1   # a smoke run

Run it on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, tool: str = "sfnet-fleet-eval") -> dict:
    proc = subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench/fleet.py: {tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = args[args.index("--out") + 1]
    return json.loads((cwd / out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=8)
    parser.add_argument("--frames", type=int, default=20, help="frames per camera and bag")
    parser.add_argument("--size", default="128x256", help="HEIGHTxWIDTH")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="sfnet_resnet18")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    sys.path.insert(0, str(REPO / "test"))
    from node_harness import write_test_checkpoint

    from sfnet_ros.tools.fleet.summarize import cpu_name
    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    work = Path(tempfile.mkdtemp(prefix="sfnet_fleet_bench_"))
    try:
        for i in range(args.bags):
            write_synthetic_bag(work / "drives" / f"drive{i}.mcap", args.frames, height, width, seed=i,
                                cameras=("front", "left"))
        write_test_checkpoint(work / "model.pt", model_name=args.model)
        common = ["--bag", "drives", "--cameras", "front,left", "--checkpoint", "model.pt", "--no-progress",
                  "--backend", "torch", "--precision", "fp32"]
        fps: dict[int, list[float]] = {1: [], 2: []}
        last: dict[int, dict] = {}
        for r in range(args.rounds):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = f"run_{workers}_{r}"
                last[workers] = _run([*common, "--workers", str(workers), "--out", out], work)
                fps[workers].append(last[workers]["speed"]["fps"])
        frames = last[1]["overall"]["frames"]
        print(f"fleet: {args.bags} bags x 2 cameras x {args.frames} frames = {frames} frames at {args.size}, "
              f"{args.model} fp32 PyTorch, {args.rounds} interleaved round(s); CPU {cpu_name()}")
        print("| workers | frames/s (median) | all rounds | vs 1 worker |\n|---:|---:|---|---:|")
        base = statistics.median(fps[1])
        for workers, values in fps.items():
            median = statistics.median(values)
            print(f"| {workers} | {median:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {median / base:.2f}x |")
        partials = sorted((work / f"run_2_{args.rounds - 1}" / "partials").glob("*.npz"))
        for i, part in enumerate(partials):
            half = work / f"half{i % 2}"
            half.mkdir(exist_ok=True)
            shutil.copy(part, half / part.name)
        merged = _run(["half0", "half1", "--out", "merged"], work, "sfnet-fleet-merge")
        exact = merged["confusion"] == last[1]["confusion"]
        print(f"merge of the 2-worker run's results in two halves == the 1-worker run's confusion matrix: {exact}")
        return 0 if exact else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
