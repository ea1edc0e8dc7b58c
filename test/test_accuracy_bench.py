"""bench/accuracy.py runs every CPU path `backend: auto` may choose end to end and reports the
accuracy table with its checks (random weights, tiny frames: no accuracy figure is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_accuracy_bench_quick_reports_every_path_and_check() -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    paths = {"torch fp32", "onnxruntime fp32", "openvino fp32", "onnxruntime int8", "openvino int8"}
    bf16 = {"torch bf16", "openvino bf16"}
    assert paths <= set(result["trained"]) and set(result["trained"]) <= paths | bf16
    assert set(result["released"]) == set(result["trained"])
    assert bf16 <= set(result["trained"]) | set(result["skipped"])
    reference = result["trained"]["torch fp32"]
    assert reference["labels_equal"] == 1.0 and reference["delta_points"] == 0.0
    # fp32 runtimes run the same graph: equal labels but for rare near-ties
    for table in ("trained", "released"):
        assert result[table]["openvino fp32"]["labels_equal"] > 0.99, table
    for name, row in result["trained"].items():
        assert 0.0 <= row["miou"] <= 100.0 and 0.0 < row["labels_equal"] <= 1.0, name
        assert abs(row["delta_points"] - (row["miou"] - reference["miou"])) < 1e-9
        assert f"{name}: at most 0.3 points lost" in result["checks"]
        assert f"released stand-in, {name}: at least 99.5% labels equal" in result["checks"]
    assert "check openvino int8: at least 99.5% labels equal:" in run.stdout
    assert "released stand-in" in run.stdout
