#!/usr/bin/env bash
# Every CUDA measurement and test of the project, in one run of under 5 minutes on one H200, for
# the moments a GPU machine is lent: run it at once, then copy the markdown it writes into
# docs/performance.md.
#
#   bash bench/gpu_check.sh [OUTPUT.md]        # default: gpu_check.md (or $OUT/gpu_check.md)
#
# 1. bench/speed.py, GPU rows only (--no-cpu): the bare network eager / channels_last / compiled,
#    the baselines, and the Segmenter end to end (eager, pipeline="compiled", pipeline="cuda_graph",
#    one camera and 4 cameras batched, ONNX Runtime when its CUDA provider is installed);
# 2. test/test_cuda.py: AMP training, the Segmenter on CUDA against the CPU (precisions, CUDA graph
#    and compiled pipelines, letterbox, banded post-processing, ONNX Runtime CUDA).
# Each step has its own time limit, so the table is written whatever happens (a step that ran out
# of time says so). The python used: $PYTHON, else .venv/bin/python, else python3; the repository
# is put on PYTHONPATH, so a plain PyTorch environment without the package installed works.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEFAULT_OUT=gpu_check.md
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then DEFAULT_OUT="$OUT/gpu_check.md"; fi
REPORT=${1:-$DEFAULT_OUT}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

# --- 1. speed (150 s at most) -----------------------------------------------------------------
timeout 150 "$PY" bench/speed.py --no-cpu --repeats 20 --warmup 3 --cameras 4 >"$WORK/speed.txt" 2>&1
speed_rc=$?
# --- 2. tests (130 s at most) -----------------------------------------------------------------
timeout 130 "$PY" -m pytest test/test_cuda.py -q -rA -p no:cacheprovider -o addopts= >"$WORK/tests.txt" 2>&1
tests_rc=$?
elapsed=$(( $(date +%s) - start ))

"$PY" - "$WORK" "$REPORT" "$speed_rc" "$tests_rc" "$elapsed" <<'EOF'
import json, re, subprocess, sys
from pathlib import Path

work, report, speed_rc, tests_rc, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:])
lines = [f"# GPU check ({elapsed} s)", ""]
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    smi = "nvidia-smi not available"
try:
    import torch
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
except ImportError:
    versions = "torch not importable"
lines += [f"GPU: {smi}; {versions}", ""]

def status(rc):
    return "timed out" if rc == 124 else ("ok" if rc == 0 else f"exit {rc}")

speed = (work / "speed.txt").read_text(errors="replace")
lines += [f"## bench/speed.py --no-cpu ({status(speed_rc)})", ""]
result = None
for line in reversed(speed.splitlines()):
    if line.startswith("{"):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            pass
cuda = (result or {}).get("cuda")
if cuda:
    h, w = cuda["size"]
    lines += [f"{cuda['device']}, {h}x{w}, median of {cuda['repeats']} interleaved rounds; batched rows: frames "
              f"per second over {cuda['cameras']} cameras", "",
              "| configuration | FPS | vs bare fp16 network |", "|---|---|---|"]
    base = cuda["fps"].get("fp16 channels_last compile") or cuda["fps"].get("fp16 channels_last")
    for name, fps in cuda["fps"].items():
        lines.append(f"| {name} | {fps:.1f} | {fps / base:.2f} |" if base else f"| {name} | {fps:.1f} | |")
    for name, err in cuda["errors"].items():
        lines.append(f"| {name} | failed: {err.replace('|', '/')} | |")
else:
    lines += ["no result; the end of its output:", "", "```", *speed.splitlines()[-25:], "```"]
tests = (work / "tests.txt").read_text(errors="replace")
lines += ["", f"## test/test_cuda.py ({status(tests_rc)})", "", "| test | outcome |", "|---|---|"]
outcomes = re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) (\S+)(.*)$", tests, re.M)
for outcome, name, rest in outcomes:
    lines.append(f"| {name} | {outcome}{rest.replace('|', '/')} |")
summary = [l for l in tests.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
lines += ["", summary[-1].strip("= ") if summary else "no pytest summary"]
if tests_rc not in (0, 5):
    lines += ["", "```", *tests.splitlines()[-40:], "```"]
report.parent.mkdir(parents=True, exist_ok=True)
report.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $REPORT"
[ "$speed_rc" = 0 ] && [ "$tests_rc" = 0 ]
