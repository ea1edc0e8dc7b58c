"""The speed benchmark runs end to end and reports every comparison it promises (no timing is
asserted: the numbers belong to the README, measured on a quiet machine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_bench_quick_reports_all_ratios() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--quick", "--no-cuda", "--repeats", "1",
         "--warmup", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    cpu = result["cpu"]
    assert cpu["errors"] == {}
    assert set(cpu["median_ms"]) == {"sfnet_resnet18", "fpn_resnet18", "deeplabv3_resnet50", "fcn_resnet50",
                                     "sfnet_resnet18_onnxruntime"}
    assert all(ms > 0 for ms in cpu["median_ms"].values())
    assert set(cpu["ratios"]) == {"deeplabv3_over_sfnet", "fcn_over_sfnet", "sfnet_over_fpn", "torch_over_onnxruntime"}
    assert set(cpu["checks"]) == {"sfnet_at_least_4x_faster_than_deeplabv3", "fam_overhead_at_most_10pct"}
    # FLOPs are counted, not timed: SFNet-R18 at 128x256 is 1/16 of 121.5 GFLOP at 512x1024
    assert abs(cpu["sfnet_gflops_per_frame"] - 121.5 / 16) < 0.2
    assert 0 < cpu["sfnet_fraction_of_gemm_throughput"]
    assert "DeepLabV3-R50 / SFNet-R18 time" in run.stdout


# -- bench/node_latency.py (the node through real DDS; counts and printed reports, no timing) -------


def _node_latency(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "node_latency.py"), *args],
                          capture_output=True, text=True, timeout=540, check=False)


def test_node_latency_bench_quick_reports_latency_and_overload() -> None:
    run = _node_latency("--height", "64", "--width", "128", "--frames", "3", "--overload-seconds", "2",
                        "--device", "cpu")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for line in ("bare Segmenter.segment 64x128", "end-to-end (publish -> labels arrival) over DDS",
                 "overhead ratio end-to-end / bare", "overload x10", "node stopped with exit code 0"):
        assert line in run.stdout, line


def test_node_latency_delivery_quick_counts_frames_with_and_without_the_profile() -> None:
    """The documented `--delivery` run, shortened by --quick (one round of 10 frames, 320x240)."""
    doc = (REPO / "docs" / "transport.md").read_text()
    command = ".venv/bin/python bench/node_latency.py --delivery"
    assert command in doc, "docs/transport.md shows the command this test runs"
    run = _node_latency("--delivery", "--quick", "--device", "cpu")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {row["setting"]: row for row in result["delivery"]}
    assert set(rows) == {"default", "profile"}
    for row in rows.values():
        assert (row["width"], row["height"], row["offered"]) == (320, 240, 10)
        assert 0 <= row["node"] <= row["offered"] and 0 <= row["plain"] <= row["offered"]
    assert rows["profile"]["node"] >= 1  # frames reach the node's callback through the profile
    assert "320x240@10Hz with the profile:" in run.stdout and "load average" in run.stdout
