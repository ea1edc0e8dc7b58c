"""How fast every console script answers ``--help``, a missing file and a malformed one.

Each case runs the installed ``sfnet-*`` script as a subprocess: one run first that is not
counted (it warms the disk cache: the interpreter, the venv's packages, the project's modules),
then ``--repeats`` runs; the median wall time is reported. Every case must end as the tools
promise: ``--help`` with exit status 0, a refusal with exit status 2 and one line on stderr
(printed beside the time, so the numbers are of the right answers). The last row is the
reference: ``python -c "import torch"`` alone.

Usage: ``python bench/startup.py [--repeats 5] [--tools sfnet-train sfnet-eval ...]``; prints a
table, then one JSON line (tool -> case -> median seconds). ``--source DIR`` times another copy
of the code (e.g. ``git archive <commit> | tar -x -C DIR``: the same entry points, run from DIR)
for a before/after comparison on the same machine. The target (issue 17): every answer
in under 1 s on a quiet machine. The test that keeps it, without timing anything:
``test/test_startup.py`` (the same answers with torch, ONNX and rclpy made unimportable).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

BIN = Path(sys.executable).parent

# tool -> (case name, arguments); "{d}" is the folder of prepared inputs
CASES: dict[str, list[tuple[str, str]]] = {
    "sfnet-train": [("missing recipe", "--config {d}/missing.yaml --out {d}/run"),
                    ("malformed YAML", "--config {d}/bad.yaml --out {d}/run"),
                    ("bad recipe value", "--config {d}/recipe.yaml --out {d}/run runtime.device=gpu0")],
    "sfnet-eval": [("missing checkpoint", "--config {d}/recipe.yaml --checkpoint {d}/missing.pt"),
                   ("malformed YAML", "--config {d}/bad.yaml --checkpoint {d}/random.pt"),
                   ("corrupt .pt", "--config {d}/recipe.yaml --checkpoint {d}/random.pt"),
                   ("corrupt .onnx", "--config {d}/recipe.yaml --checkpoint {d}/random.onnx")],
    "sfnet-export": [("missing checkpoint", "--checkpoint {d}/missing.pt --onnx {d}/out.onnx"),
                     ("corrupt .pt", "--checkpoint {d}/random.pt --onnx {d}/out.onnx")],
    "sfnet-import": [("missing file", "{d}/missing.pth --out {d}/out.pt"),
                     ("corrupt .pth", "{d}/random.pt --out {d}/out.pt")],
    "sfnet-synthetic": [("bad number", "--out {d}/synth --frames 0"),
                        ("malformed size", "--out {d}/synth --size 64")],
    "sfnet-bag-eval": [("missing bag", "--bag {d}/missing.mcap --image-topic /x --checkpoint {d}/random.pt"),
                       ("bad number", "--bag {d}/missing.mcap --image-topic /x --checkpoint {d}/m.pt --batch-size 0")],
    "sfnet-bag-play": [("missing bag", "--bag {d}/missing.mcap"),
                       ("bad number", "--bag {d}/missing.mcap --rate 0")],
    "sfnet-bag-record": [("bad number", "--topics /a --out {d}/rec.mcap --duration 0"),
                         ("malformed --type", "--topics /a --type /a:=nonsense --out {d}/rec.mcap")],
    "sfnet-live-eval": [("missing bag", "--bag {d}/missing.mcap --image-topic /x"),
                        ("malformed classes YAML", "--bag {d}/missing.mcap --image-topic /x --classes {d}/bad.yaml")],
    "sfnet-extract": [("missing bag", "--bag {d}/missing.mcap --image-topic /x --out {d}/data"),
                      ("malformed classes YAML",
                       "--bag {d}/missing.mcap --image-topic /x --out {d}/data --classes {d}/bad.yaml")],
    "sfnet-demo": [("missing recipe", "--out {d}/demo --config {d}/missing.yaml"),
                   ("malformed YAML", "--out {d}/demo --config {d}/bad.yaml"),
                   ("corrupt checkpoint", "--out {d}/demo --checkpoint {d}/random.pt")],
    "sfnet-status": [("bad number", "--period 0"), ("malformed command", "set checkpoint")],
    "sfnet-synthetic-bag": [("bad number", "--out {d}/drive.mcap --frames 0"),
                            ("malformed size", "--out {d}/drive.mcap --size 64")],
}


def prepare(d: Path) -> None:
    """The inputs: a recipe, YAML that does not parse, random bytes as a .pt and an .onnx."""
    (d / "recipe.yaml").write_text("runtime: {device: cpu}\n")
    (d / "bad.yaml").write_text("model: [1,\n")
    noise = random.Random(0).randbytes(4096)
    (d / "random.pt").write_bytes(noise)
    (d / "random.onnx").write_bytes(noise)


def tool_command(tool: str, source: Path | None) -> list[str]:
    """The installed console script, or with ``source`` its entry point imported from there."""
    if source is None:
        return [str(BIN / tool)]
    (script,) = entry_points(group="console_scripts", name=tool)
    module, _, function = script.value.partition(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {tool!r}; from {module} import {function}; {function}()"]


def time_case(command: list[str], repeats: int, expect: int, cwd: Path,
              source: Path | None = None) -> tuple[float, str]:
    """(median seconds over ``repeats`` runs after one uncounted run, the answer's first line)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    times = []
    line = ""
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120)
        elapsed = time.perf_counter() - start
        if proc.returncode != expect:
            raise SystemExit(f"{' '.join(command)}: exit {proc.returncode}, expected {expect}:\n{proc.stderr[-2000:]}")
        text = (proc.stdout if expect == 0 else proc.stderr).strip().splitlines()
        line = text[0] if text else ""
        if i:  # the first run only warms the disk cache
            times.append(elapsed)
    return statistics.median(times), line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="counted runs per case (median reported)")
    parser.add_argument("--tools", nargs="+", default=list(CASES), choices=list(CASES), metavar="TOOL",
                        help="tools to measure (default: all)")
    parser.add_argument("--source", type=Path, help="run the tools' code from this folder instead of the installed one")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sfnet-startup-") as tmp:
        d = Path(tmp)
        prepare(d)
        print(f"{'tool':<20} {'case':<24} {'median s':>9}  answer")
        for tool in args.tools:
            command = tool_command(tool, args.source)
            rows = [("--help", ["--help"], 0)] + [(name, a.replace("{d}", tmp).split(), 2) for name, a in CASES[tool]]
            for name, extra, expect in rows:
                seconds, line = time_case([*command, *extra], args.repeats, expect, d, args.source)
                results.setdefault(tool, {})[name] = round(seconds, 3)
                print(f"{tool:<20} {name:<24} {seconds:9.3f}  {line[:90]}", flush=True)
        seconds, _ = time_case([sys.executable, "-c", "import torch"], args.repeats, 0, d)
        results["reference"] = {"import torch": round(seconds, 3)}
        print(f"{'(reference)':<20} {'python -c import torch':<24} {seconds:9.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
