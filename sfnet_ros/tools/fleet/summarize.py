"""Bag results -> the fleet summary (``summary_schema.md``) and the per-frame table.

Every total is a sum of per-frame confusion counts (``results``): overall, per bag, per camera,
per bag x camera. With two models the summary is the candidate's (the last model) and its
``compare`` block holds the baseline's figures, the deltas with bootstrap intervals and the gate.
"""
from __future__ import annotations

import base64
import csv
import datetime
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_ros.tools.fleet import compare
from sfnet_ros.tools.fleet.results import BagResult, clean, figures, mean_iou

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """``model (flags)`` of this machine's CPU, for the speed figures (which depend on it)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    have = [f for f in FLAGS if flags and f in flags.group(1).split()]
    return f"{model.group(1).strip() if model else 'CPU'} ({' '.join(have) or 'no AVX2'})"


def _group(kind: str, bag: str | None, camera: str | None, counts: np.ndarray, labelled: np.ndarray,
           uncertainty: np.ndarray, names: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "bag": bag, "camera": camera, "frames": int(labelled.size),
                           "labelled_frames": int(labelled.sum()),
                           "uncertainty": clean(float(np.nanmean(uncertainty))) if uncertainty.size else None}
    if labelled.any():
        numbers = figures(counts, names)
        row.update(miou=numbers["miou"], pixel_accuracy=numbers["pixel_accuracy"],
                   per_class_iou=numbers["per_class_iou"])
    else:
        row.update(miou=None, pixel_accuracy=None, per_class_iou={})
    return row


def _strip_entry(result: BagResult, strip: Any) -> dict[str, Any]:
    entry = {"bag": result.bag, "camera": strip.camera, "stamp_ns": strip.stamp_ns, "time_s": round(strip.time_s, 3),
             "strip_png": base64.b64encode(strip.png).decode(), "strip_caption": strip.caption}
    return entry


def summarize(results: Sequence[BagResult], failed: Sequence[dict[str, str]], classes: list[dict[str, Any]],
              ignore_index: int, speed: dict[str, Any], worst: int = 8, uncertain: int = 50,
              resample: str = "frames", resamples: int = 1000, gate_classes: Sequence[str] = (),
              max_drop: float = 0.0) -> dict[str, Any]:
    """The summary dict; see ``summary_schema.md``."""
    names = [c["name"] for c in classes]
    m = results[0].counts.shape[0] if results else 1
    cand = m - 1
    labelled = np.concatenate([r.labelled for r in results]) if results else np.zeros(0, bool)
    counts = [np.concatenate([r.counts[k] for r in results]) if results else
              np.zeros((0, len(names), len(names) + 1), np.int64) for k in range(m)]
    unc = [np.concatenate([r.uncertainty[k] for r in results]) if results else np.zeros(0) for k in range(m)]
    totals = [c[labelled].sum(0) for c in counts]
    any_labels = bool(labelled.any())

    def overall(k: int) -> dict[str, Any]:
        numbers = figures(totals[k], names) if any_labels else {
            "miou": None, "pixel_accuracy": None, "mean_accuracy": None, "per_class_iou": {}, "pixels": 0}
        return {"frames": int(labelled.size), "labelled_frames": int(labelled.sum()), **numbers,
                "uncertainty": clean(float(np.nanmean(unc[k]))) if unc[k].size else None}

    groups = []
    for result in results:
        for ci, camera in enumerate(result.cameras):
            mine = result.camera == ci
            groups.append(_group("bag_camera", result.bag, camera, result.counts[cand][mine & result.labelled].sum(0),
                                 result.labelled[mine], result.uncertainty[cand][mine], names))
    for result in results:
        groups.append(_group("bag", result.bag, None, result.counts[cand][result.labelled].sum(0), result.labelled,
                             result.uncertainty[cand], names))
    cameras = list(dict.fromkeys(c for r in results for c in r.cameras))
    for camera in cameras:
        parts = [(r, r.camera == r.cameras.index(camera)) for r in results if camera in r.cameras]
        lab = np.concatenate([r.labelled[mine] for r, mine in parts])
        groups.append(_group("camera", None, camera,
                             sum((r.counts[cand][mine & r.labelled].sum(0) for r, mine in parts),
                                 np.zeros_like(totals[cand])), lab,
                             np.concatenate([r.uncertainty[cand][mine] for r, mine in parts]), names))

    timeline = []
    for result in results:
        for ci, camera in enumerate(result.cameras):
            idx = np.flatnonzero(result.camera == ci)
            idx = idx[np.argsort(result.time_s[idx], kind="stable")]
            frame_miou = mean_iou(result.counts[cand][idx])
            timeline.append({"bag": result.bag, "camera": camera,
                             "time_s": [round(float(t), 3) for t in result.time_s[idx]],
                             "miou": [clean(float(v)) if result.labelled[i] else None for v, i in zip(frame_miou, idx)]
                             if result.labelled[idx].any() else None,
                             "uncertainty": [clean(float(v)) for v in result.uncertainty[cand][idx]]})

    kept = [(r, s) for r in results for s in r.strips if s.kind == "worst" and s.model == cand]
    labelled_strips = [(r, s) for r, s in kept if "ground truth" in s.caption]
    if any_labels and labelled_strips:
        chosen = sorted(labelled_strips, key=lambda rs: rs[1].score)
    else:
        chosen = sorted(kept, key=lambda rs: -rs[1].score)
    worst_frames = []
    for result, strip in chosen[:worst]:
        entry = _strip_entry(result, strip)
        labelled_strip = "ground truth" in strip.caption
        entry.update(miou=clean(strip.score) if labelled_strip else None,
                     uncertainty=clean(_frame_uncertainty(result, strip, cand)))
        worst_frames.append(entry)

    ranking = []
    for result in results:
        for i in range(result.frames):
            ranking.append((float(result.uncertainty[cand][i]), result, i))
    ranking.sort(key=lambda item: -item[0] if not np.isnan(item[0]) else 0.0)
    uncertain_frames = [{"bag": r.bag, "camera": r.cameras[int(r.camera[i])], "stamp_ns": int(r.stamp_ns[i]),
                         "time_s": round(float(r.time_s[i]), 3), "uncertainty": clean(u)}
                        for u, r, i in ranking[:uncertain]]
    class_unc = sum((r.class_uncertainty[cand] for r in results), np.zeros(len(names)))
    class_pix = sum((r.class_pixels[cand] for r in results), np.zeros(len(names), np.int64))
    model_ms = np.concatenate([r.model_ms[cand] for r in results]) if results else np.zeros(0)
    models = results[0].info.get("models", [{}]) if results else [{}]
    summary: dict[str, Any] = {
        "tool": "sfnet-fleet-eval", "version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": models[-1], "classes": classes, "ignore_index": ignore_index, "labelled": any_labels,
        "overall": overall(cand), "groups": groups,
        "confusion": totals[cand][:, : len(names)].tolist() if any_labels else None,
        "timeline": timeline, "worst_frames": worst_frames, "uncertain_frames": uncertain_frames,
        "class_uncertainty": {n: clean(float(u / p)) if p else None for n, u, p in zip(names, class_unc, class_pix)},
        "speed": {**speed, "frames": int(labelled.size),
                  "model_ms_p50": clean(float(np.percentile(model_ms, 50))) if model_ms.size else None,
                  "model_ms_p99": clean(float(np.percentile(model_ms, 99))) if model_ms.size else None,
                  "cpu": cpu_name()},
        "failed": list(failed), "compare": None,
    }
    if m == 2:
        summary["compare"] = _compare(results, counts, labelled, names, overall(0), models[0], resample, resamples,
                                      gate_classes, max_drop, worst)
    return summary


def _frame_uncertainty(result: BagResult, strip: Any, model: int) -> float:
    hit = np.flatnonzero((result.stamp_ns == strip.stamp_ns) & (result.camera == result.cameras.index(strip.camera)))
    return float(result.uncertainty[model][hit[0]]) if hit.size else float("nan")


def _compare(results: Sequence[BagResult], counts: list[np.ndarray], labelled: np.ndarray, names: list[str],
             baseline_overall: dict[str, Any], baseline: dict[str, Any], resample: str, resamples: int,
             gate_classes: Sequence[str], max_drop: float, worst: int) -> dict[str, Any]:
    block: dict[str, Any] = {"baseline": baseline, "baseline_overall": baseline_overall, "resampled": resample,
                             "resamples": resamples, "delta_miou": None, "delta_per_class": {}, "gate": None}
    if labelled.any():
        drive = np.concatenate([np.full(r.frames, i) for i, r in enumerate(results)])[labelled]
        pair = np.stack([counts[0][labelled], counts[1][labelled]])
        deltas = compare.bootstrap_deltas(pair, drive, resample, resamples)
        block["delta_miou"] = compare.interval(deltas["miou"])
        block["delta_per_class"] = {n: compare.interval(row) for n, row in zip(names, deltas["class"])}
    if gate_classes:
        block["gate"] = compare.gate(block["delta_per_class"], gate_classes, max_drop)
    strips = sorted(((r, s) for r in results for s in r.strips if s.kind == "disagree"), key=lambda rs: -rs[1].score)
    block["disagreements"] = [{**_strip_entry(r, s), "disagree_fraction": clean(s.score)} for r, s in strips[:worst]]
    return block


def frames_csv(results: Sequence[BagResult]) -> str:
    """One row per frame: where it is, whether it was labelled, its mIoU and uncertainty (per model)."""
    m = results[0].counts.shape[0] if results else 1
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["bag", "camera", "stamp_ns", "time_s", "labelled", "miou", "uncertainty"]
    if m == 2:
        header += ["baseline_miou", "baseline_uncertainty", "disagreement"]
    writer.writerow(header)
    for r in results:
        mious = [mean_iou(r.counts[k]) for k in range(m)]
        for i in range(r.frames):
            row: list[Any] = [r.bag, r.cameras[int(r.camera[i])], int(r.stamp_ns[i]), f"{r.time_s[i]:.3f}",
                              int(r.labelled[i]), _num(mious[m - 1][i]) if r.labelled[i] else "",
                              _num(r.uncertainty[m - 1][i])]
            if m == 2:
                row += [_num(mious[0][i]) if r.labelled[i] else "", _num(r.uncertainty[0][i]), _num(r.disagreement[i])]
            writer.writerow(row)
    return out.getvalue()


def _num(value: float) -> str:
    return "" if np.isnan(value) else f"{float(value):.6f}"
