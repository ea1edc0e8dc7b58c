"""The speed benchmark runs end to end and reports every comparison it promises (no timing is
asserted: the numbers belong to the README, measured on a quiet machine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_bench_quick_reports_all_ratios() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--quick", "--no-cuda", "--repeats", "1",
         "--warmup", "0", "--threads", "1", "--size", "64", "128"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    cpu = result["cpu"]
    assert cpu["errors"] == {}
    segmenter_rows = {"segmenter torch fp32", "segmenter onnxruntime fp32", "segmenter onnxruntime int8",
                      "segmenter openvino fp32", "segmenter openvino int8"}
    if cpu["cpu"]["bf16_native"]:
        segmenter_rows |= {"segmenter torch bf16", "segmenter openvino bf16"}
    else:
        assert "avx512_bf16" in cpu["skipped"]["segmenter torch bf16"]
        assert "avx512_bf16" in cpu["skipped"]["segmenter openvino bf16"]
    assert "--quick" in cpu["skipped"]["segmenter pt2e int8"]  # torch.compile rows are not in quick mode
    network_rows = {name.replace("segmenter", "network", 1) for name in segmenter_rows}
    prepost_rows = {"pre upload", "pre normalise + pad (NCHW canvas)", "pre normalise + pad (channels_last canvas)"} | {
        f"post {what} ({layout} scores)" for layout in ("NCHW", "channels_last")
        for what in ("banded resample + argmax", "argmax + confidence")}
    assert set(cpu["median_ms"]) == {"sfnet_resnet18", "fpn_resnet18", "deeplabv3_resnet50", "fcn_resnet50",
                                     "sfnet_resnet18_onnxruntime", "deeplabv3_resnet50_onnxruntime"} | (
        segmenter_rows | network_rows | prepost_rows)
    assert all(ms > 0 for ms in cpu["median_ms"].values())
    assert set(cpu["min_ms"]) == set(cpu["median_ms"])  # ratios use the fastest round of each
    assert all(cpu["min_ms"][k] <= cpu["median_ms"][k] for k in cpu["min_ms"])
    assert set(cpu["ratios"]) == {"deeplabv3_over_sfnet", "fcn_over_sfnet", "sfnet_over_fpn", "torch_over_onnxruntime",
                                  "deeplabv3_over_sfnet_onnxruntime", "segmenter_best_over_torch_fp32"}
    target = {"amx": "best_at_most_100ms_amx", "avx512_vnni": "best_at_least_4x_torch_fp32_avx512",
              "no_vnni": "best_at_least_2.5x_torch_fp32_no_vnni",
              "avx_vnni": "best_at_least_2.5x_torch_fp32_avx_vnni"}[cpu["cpu"]["kind"]]
    assert set(cpu["checks"]) == {"sfnet_at_least_4x_faster_than_deeplabv3", "fam_overhead_at_most_10pct",
                                  "sfnet_at_least_4x_faster_than_deeplabv3_onnxruntime", target,
                                  "pre_post_under_15pct_of_fastest_network"}
    # per path: the ratio to torch fp32 and the fraction of the peak of the precision it runs
    paths = cpu["paths"]
    assert set(paths) == segmenter_rows
    assert paths["segmenter torch fp32"]["over_torch_fp32"] == 1.0
    for name, row in paths.items():
        assert row["precision"] == name.split()[-1] and row["fraction_of_peak"] > 0, name
        # the peaks' clock is at least what any fp32 path implies: no fp32 fraction above 100%
        assert row["precision"] != "fp32" or row["fraction_of_peak"] <= 1.0 + 1e-9, name
        assert row["network_ms"] == cpu["min_ms"][name.replace("segmenter", "network", 1)]
    assert cpu["peak_clock"]["ghz"] >= cpu["cpu"]["clock_ghz"]
    # pre / post: each layout's totals add up and are shares of the fastest network
    prepost = cpu["prepost"]
    assert prepost["network_ms"] == min(row["network_ms"] for row in paths.values())
    fastest = paths[prepost["fastest_network"]]  # the path whose bare network is fastest
    assert fastest["network_ms"] == prepost["network_ms"]
    assert prepost["fastest_layout"] == fastest["scores_layout"] == (
        "channels_last" if prepost["fastest_network"].startswith("segmenter torch") else "NCHW")
    for layout, row in prepost["layouts"].items():
        assert row["pre_ms"] == cpu["min_ms"]["pre upload"] + cpu["min_ms"][f"pre normalise + pad ({layout} canvas)"]
        assert abs(row["total_ms"] / prepost["network_ms"] - row["total_share"]) < 1e-9
    assert cpu["segmenter_best"] in segmenter_rows
    # FLOPs are counted, not timed: SFNet-R18 at 64x128 is about 1/64 of 121.5 GFLOP at 512x1024
    assert abs(cpu["sfnet_gflops_per_frame"] - 121.5 / 64) < 0.05
    # the machine's limit: a measured GEMM per size, and peaks derived from flags and clock
    assert set(cpu["gemm"]["per_size_gflops"]) == {"256", "512"}  # JSON keys are strings
    assert cpu["gemm_gflop_per_s"] == max(cpu["gemm"]["per_size_gflops"].values())
    peaks = cpu["cpu"]
    assert peaks["cores"] == 1 and peaks["fp32_gflops"] > 0 and peaks["int8_gops"] >= peaks["fp32_gflops"]
    assert peaks["clock_source"] and peaks["fp32_how"] and peaks["int8_how"]
    assert 0 < cpu["sfnet_fraction_of_fp32_limit"] <= 1.0  # never above 100% of the limit
    assert 0 < cpu["sfnet_int8_fraction_of_int8_peak"] <= 1.0
    for line in ("DeepLabV3-R50 / SFNet-R18 time:", "DeepLabV3-R50 / SFNet-R18 time in ONNX Runtime",
                 "Segmenter end to end, best CPU path", "target for this CPU:", "measured fp32 GEMM: best",
                 "theoretical fp32:", "theoretical int8:", "theoretical bf16:", "avx512_vnni=",
                 "Pre + post (with confidence) under 15% of the fastest network ("):
        assert line in run.stdout, line


def test_theoretical_peaks_follow_the_vector_units() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from speed import target_check, theoretical_peaks
    finally:
        sys.path.pop(0)
    base = {"clock_ghz": 2.0, "clock_source": "test"}
    avx2 = theoretical_peaks({**base, "flags": ["avx", "avx2", "fma"]}, cores=2)
    assert (avx2["fp32_gflops"], avx2["int8_gops"], avx2["bf16_native"]) == (128.0, 256.0, False)
    avx512 = theoretical_peaks({**base, "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]}, cores=1)
    assert (avx512["fp32_gflops"], avx512["int8_gops"], avx512["bf16_native"]) == (128.0, 512.0, True)
    amx = theoretical_peaks({**base, "flags": ["avx512f", "amx_int8", "amx_bf16"]}, cores=1)
    assert amx["int8_gops"] == 4096.0
    # bf16: AMX tiles, AVX-512 BF16 dot products (2x fp32), else emulated at fp32's peak
    assert (amx["bf16_gflops"], avx512["bf16_gflops"], avx2["bf16_gflops"]) == (2048.0, 256.0, 128.0)
    # the CPU kind picks the target line (AMX: 100 ms; AVX-512 VNNI: 4x; no VNNI: 2.5x)
    assert (amx["kind"], avx512["kind"], avx2["kind"]) == ("amx", "avx512_vnni", "no_vnni")
    assert "avx512_vnni=no" in avx2["isa"] and "amx_int8=yes" in amx["isa"]
    assert target_check("amx", 99.0, 1000.0)[2] and not target_check("amx", 101.0, 1000.0)[2]
    assert target_check("avx512_vnni", 250.0, 1000.0)[2] and not target_check("avx512_vnni", 260.0, 1000.0)[2]
    assert target_check("no_vnni", 400.0, 1000.0)[2] and not target_check("no_vnni", 410.0, 1000.0)[2]


def test_startup_bench_times_each_case_and_checks_its_answer() -> None:
    """The documented start-up bench, one counted run: a row per case, each with the tool's real
    answer (the bench itself fails on a wrong exit status or a second stderr line)."""
    command = "python bench/startup.py --tools sfnet-train sfnet-eval"
    assert command in (REPO / "docs" / "performance.md").read_text()
    run = subprocess.run([sys.executable, str(REPO / "bench" / "startup.py"), "--repeats", "1",
                          "--tools", "sfnet-train", "sfnet-eval"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result["sfnet-train"]) == {"--help", "missing recipe", "malformed YAML", "bad recipe value"}
    assert len(result["sfnet-eval"]) == 5 and result["reference"]["import torch"] > 0
    assert "sfnet-train: error: " in run.stdout and "invalid YAML" in run.stdout


def test_segmenter_memory_bench_measures_each_case_in_its_own_process() -> None:
    reference = REPO / "sfnet_core" / "inference" / "segmenter.py"  # any segmenter.py, loaded by path
    run = subprocess.run([sys.executable, str(REPO / "bench" / "segmenter_memory.py"), "--frame", "300", "400",
                          "--input-size", "64", "96", "--band-mb", "1", "--reference", str(reference)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [(r["case"].split(" ")[0], r["confidence"]) for r in rows] == [
        ("reference", False), ("reference", True), ("current,", False), ("current,", True)]
    for row in rows:
        assert row["labels"] == [300, 400] and row["peak_mb"] >= row["baseline_mb"] > 0
    assert "Peak RSS (VmHWM) of one segment() call, 300x400 frame" in run.stdout


def test_gpu_check_script_writes_its_table(tmp_path: Path) -> None:
    """bench/gpu_check.sh on a machine without CUDA: it still runs both steps and writes the report."""
    report = tmp_path / "gpu.md"
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(report)], capture_output=True,
                         text=True, timeout=400, check=False, env={**os.environ, "PYTHON": sys.executable})
    text = report.read_text()
    assert "## bench/speed.py --no-cpu" in text and "## test/test_cuda.py" in text
    import torch

    if not torch.cuda.is_available():
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "SKIPPED" in text and "skipped" in text  # every CUDA test skips here, and says so


# -- bench/node_latency.py (the node through real DDS; counts and printed reports, no timing) -------


def _node_latency(*args: str) -> subprocess.CompletedProcess:
    """The bench on ROS domains no other running test uses: its own and (``--delivery``, one stack
    per setting) the next two."""
    from conftest import next_domain_id

    domains = [next_domain_id() for _ in range(3)]
    while domains[2] != domains[0] + 2:  # the worker's slice wrapped around: take the next three
        domains = domains[1:] + [next_domain_id()]
    env = {**os.environ, "ROS_DOMAIN_ID": str(domains[0])}
    return subprocess.run([sys.executable, str(REPO / "bench" / "node_latency.py"), *args], env=env,
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


def test_node_latency_backends_quick_reports_a_row_per_backend() -> None:
    """The documented `--backends` run, shortened to 64x128 frames: one node per backend, the
    same frames, labels compared with the torch node's (counts and agreement, no timing)."""
    doc = (REPO / "docs" / "node.md").read_text()
    command = ".venv/bin/python bench/node_latency.py --backends torch,onnxruntime,int8"
    assert command in doc, "docs/node.md shows the command this test runs"
    # torch and OpenVINO on the int8 file (the fastest CPU path; the overhead test below runs torch):
    # the fp32 ONNX Runtime node's labels are compared with the torch node's by
    # test_node_geometry.py; a third node here would only cost another model load
    run = _node_latency("--backends", "torch,openvino-int8", "--height", "64", "--width", "128",
                        "--frames", "2", "--threads", "1", "--calibration-frames", "1", "--device", "cpu")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {row["backend"]: row for row in result["backends"]}
    assert list(rows) == ["torch", "openvino-int8"]
    for row in rows.values():
        assert row["frames"] == 2 and row["exit_code"] == 0
        assert row["e2e_median_ms"] > 0 and row["in_node_median_ms"] > 0 and row["inference_median_ms"] > 0
    assert rows["torch"]["runs_in"].startswith("torch fp32")
    assert rows["openvino-int8"]["runs_in"].startswith("openvino int8")
    assert 0 < rows["openvino-int8"]["labels_equal_to_torch"] <= 1
    assert result["threads"] == 1 and "1 thread(s) per node" in run.stdout
    assert "openvino int8 (.onnx, QDQ)" in run.stdout and "load average" in run.stdout


def test_node_latency_overhead_quick_reports_node_against_segmenter() -> None:
    """The documented `--overhead` run, shortened by --quick (64x128, 3 frames, a 2 s stream): the
    node with labels, colour and masks subscribed against the bare Segmenter of the default (the
    fastest) backend; counts, columns and the check line, no timing."""
    doc = (REPO / "docs" / "performance.md").read_text()
    command = ".venv/bin/python bench/node_latency.py --overhead"
    assert command in doc, "docs/performance.md shows the command this test runs"
    # torch: OpenVINO int8 in the node is the --backends test's (an int8 export here would cost as much again)
    run = _node_latency("--overhead", "--quick", "--threads", "1", "--backend", "torch")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    row = result["overhead"]
    report = run.stdout[-3000:]
    assert (result["height"], result["width"], result["threads"]) == (64, 128, 1)
    assert row["frames"] == 3 and len(row["per_frame_bare_node_ms"]) == 3 and row["exit_code"] == 0, report
    assert row["backend"] == "torch" and "1 CPU thread(s)" in row["runs_in"], report
    # every output of every frame came back, each the answer to its own frame: the node runs the
    # bare Segmenter's model file, backend and thread count
    assert row["labels_equal"] >= 0.999, report
    stages = row["stages_ms"]
    assert set(stages) == {"dds_in_ms", "queue_ms", "decode_ms", "inference_ms", "render_ms", "out_ms"}
    # each a time between two instants in that order (out: rendered -> last output arrival)
    assert stages["inference_ms"] > 0 and stages["render_ms"] >= 0, report
    assert stages["out_ms"] > 0 and row["send_ms"] >= 0, report
    assert 1 <= row["stream_answered"] <= row["stream_sent"] and row["ratio"] > 0, report
    for text in ("p50", "p99", "FPS", "bare Segmenter.segment", "node, stamp -> last output",
                 "colour + masks road,car,person subscribed", "camera at 1.5x its rate", "render", "of which send",
                 "target <= 1.05x", "node stopped with exit code 0"):
        assert text in run.stdout, f"{text!r} missing:\n{report}"


def test_discovery_bench_reports_both_profiles() -> None:
    """The documented discovery comparison, one process per profile (no timing asserted)."""
    command = ".venv/bin/python bench/discovery.py"
    assert command in (REPO / "docs" / "transport.md").read_text(), "docs/transport.md shows the command this test runs"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "discovery.py"), "--trials", "1"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result["profiles"]) == {"shipped (1 s)", "Fast DDS default (3 s)"} and result["range"] == "LOCALHOST"
    assert all(0 < row["median_s"] <= row["max_s"] < 30 and 0 < row["mean_s"] <= row["max_s"]
               for row in result["profiles"].values())
    assert "mean default / shipped:" in run.stdout
