"""Results as people read them: one format for every tool's summary lines and tables.

A score (mIoU, accuracy) is a percentage with one decimal, ``mIoU 72.4%``, as in the SFNet paper
and the Cityscapes benchmark; a difference between two scores is in percentage points,
``+0.3 pt``. Full precision stays in the JSON reports (fractions 0..1), which programs read.
Torch-free, so that a tool can format before (or without) importing torch.
"""
from __future__ import annotations

import math

__all__ = ["percent", "points", "format_report"]


def percent(value: float | None) -> str:
    """A fraction 0..1 as ``72.4%``; ``-`` when there is no value (None or NaN: nothing to score)."""
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def points(delta: float | None) -> str:
    """A difference of two fractions in percentage points, signed: ``+0.3 pt``, ``-1.2 pt``."""
    return "-" if delta is None or math.isnan(delta) else f"{100 * delta:+.1f} pt"


def format_report(report: dict) -> str:
    """A metrics report (``SegmentationMetrics.to_dict``) as a plain-text table: IoU and accuracy
    per class in %, then the means."""
    def cell(v: float | None) -> str:
        return "    -" if v is None or math.isnan(v) else f"{100 * v:5.1f}"

    names = list(report["per_class"])
    accuracy = report.get("per_class_accuracy", {})
    width = max([len(n) for n in names] + [len("pixel accuracy")])
    lines = [f"{'class':<{width}}   IoU%   Acc%", "-" * (width + 15)]
    for name in names:
        lines.append(f"{name:<{width}}  {cell(report['per_class'][name])}  {cell(accuracy.get(name))}")
    lines.append("-" * (width + 15))
    lines.append(f"{'mIoU, mean acc':<{width}}  {cell(report['miou'])}  {cell(report['mean_accuracy'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {cell(report['pixel_accuracy'])}")
    return "\n".join(lines)
