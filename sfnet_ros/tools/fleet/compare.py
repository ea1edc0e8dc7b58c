"""Is the candidate better than the baseline? Deltas with bootstrap intervals, and a CI gate.

Both models ran on the same frames, so every frame (or every drive) is a paired sample: one
resample draws frames (or drives) with replacement, sums each model's confusion counts over the
draw and takes the difference of the IoUs. The interval is the 2.5-97.5 percentile of the
differences over ``resamples`` draws (seeded: the same report for the same results). Resampling
drives is the honest choice when frames of one drive are alike; frames give narrower intervals.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sfnet_ros.tools.fleet.results import clean, iou_per_class, mean_iou

SEED = 20201  # fixed: the intervals of a report do not change from one run to the next


def _units(counts: np.ndarray, drive: np.ndarray, resample: str) -> np.ndarray:
    """(M, F, C, C + 1) per-frame counts -> (M, U, C, C + 1) per resampled unit (frame or drive)."""
    if resample == "frames":
        return counts
    groups = np.unique(drive)
    return np.stack([counts[:, drive == g].sum(1) for g in groups], axis=1)


def bootstrap_deltas(counts: np.ndarray, drive: np.ndarray, resample: str = "frames",
                     resamples: int = 1000) -> dict[str, np.ndarray]:
    """Candidate - baseline for mIoU and per class: point values and 95% intervals.

    ``counts``: (2, F, C, C + 1), baseline first, labelled frames only; ``drive``: (F,) group ids."""
    units = _units(counts, drive, resample).astype(np.float64)
    n_units, c = units.shape[1], units.shape[2]
    flat = units.reshape(2, n_units, -1)
    rng = np.random.default_rng(SEED)
    weights = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=resamples).astype(np.float64)
    sums = np.einsum("bu,muk->mbk", weights, flat).reshape(2, resamples, c, c + 1)
    total = units.sum(1)
    point_iou = iou_per_class(total)
    point = {"miou": mean_iou(total[1]) - mean_iou(total[0]), "class": point_iou[1] - point_iou[0]}
    iou = iou_per_class(sums)
    miou = mean_iou(sums)
    with np.errstate(invalid="ignore"):
        class_delta = iou[1] - iou[0]
        miou_delta = miou[1] - miou[0]
    return {"miou": np.array([point["miou"], *np.nanpercentile(miou_delta, [2.5, 97.5])]),
            "class": np.stack([point["class"], *_nan_percentiles(class_delta)], axis=-1)}


def _nan_percentiles(values: np.ndarray) -> list[np.ndarray]:
    """Per-column 2.5 / 97.5 percentiles, NaN for a column that is NaN in every resample."""
    out = np.full((2, values.shape[1]), np.nan)
    for k in range(values.shape[1]):
        column = values[:, k][~np.isnan(values[:, k])]
        if column.size:
            out[:, k] = np.percentile(column, [2.5, 97.5])
    return [out[0], out[1]]


def interval(row: np.ndarray) -> dict[str, float | None] | None:
    value, low, high = (clean(float(v)) for v in row)
    return None if value is None else {"value": value, "low": low, "high": high}


def gate(per_class_delta: dict[str, Any], classes: Sequence[str], max_drop_points: float) -> dict[str, Any]:
    """Fail when the candidate's IoU of a named class is lower than the baseline's by more than
    ``max_drop_points`` (IoU points, 0-100). A named class with no IoU (absent from the labels
    and from both predictions) cannot be judged: it fails too, so a gate never passes blind."""
    failed = []
    for name in classes:
        delta = per_class_delta.get(name)
        if delta is None or delta["value"] * 100 < -max_drop_points:
            failed.append(name)
    return {"classes": list(classes), "max_drop": max_drop_points / 100, "failed": failed, "passed": not failed}
