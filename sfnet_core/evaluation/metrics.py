"""Segmentation metrics from a confusion matrix (the Cityscapes benchmark definitions).

``IoU_c = TP / (TP + FP + FN)``; a class with ``TP + FP + FN == 0`` (neither in the ground
truth nor predicted) has IoU NaN and is left out of the mean, as cityscapesscripts does. Pixels
whose ground truth is the ignore index never count. The matrix is accumulated with
``torch.bincount`` on the device the predictions live on, so evaluation does not copy
predictions to the host; ``all_reduce`` sums it over ``torch.distributed`` ranks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class SegmentationMetrics:
    miou: float                   # mean IoU over classes with a defined IoU (NaN if none)
    iou: list[float]              # per class, NaN for absent classes
    pixel_accuracy: float         # correct / labelled pixels
    mean_accuracy: float          # mean over classes present in the ground truth of TP / (TP + FN)
    accuracy: list[float]         # per class TP / (TP + FN), NaN when not in the ground truth
    pixels: int = 0               # labelled (non-ignored) pixels counted

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """The JSON report every tool prints (NaN -> None): ``miou``, ``pixel_accuracy``,
        ``mean_accuracy``, ``per_class`` (IoU by class name), ``per_class_accuracy``,
        ``num_classes``, ``pixels``."""
        if len(class_names) != len(self.iou):
            raise ValueError(f"{len(class_names)} class names for {len(self.iou)} classes")
        return {
            "miou": _clean(self.miou),
            "pixel_accuracy": _clean(self.pixel_accuracy),
            "mean_accuracy": _clean(self.mean_accuracy),
            "per_class": {n: _clean(v) for n, v in zip(class_names, self.iou)},
            "per_class_accuracy": {n: _clean(v) for n, v in zip(class_names, self.accuracy)},
            "num_classes": len(class_names),
            "pixels": int(self.pixels),
        }


def _clean(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pairs: ``mat`` is the ``(C, C)`` matrix, rows = ground
    truth, columns = prediction.

    A prediction outside ``0..C-1`` (e.g. 255 in a label file) is counted apart, in an extra
    column: it is wrong for its pixel's class (a false negative) but no class's false positive,
    as in the Cityscapes benchmark script. A ground-truth value that is neither a class nor the
    ignore index is an error (``ValueError``): it means the labels do not fit the class table.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.counts = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64,
                                  device=device if device is not None else "cpu")

    @property
    def mat(self) -> torch.Tensor:
        """(C, C) ground truth x prediction counts (predictions outside the classes left out)."""
        return self.counts[:, : self.num_classes]

    @property
    def pixels(self) -> int:
        return int(self.counts.sum())

    def reset(self) -> None:
        self.counts.zero_()

    @torch.no_grad()
    def update(self, pred, target) -> None:
        """Add a batch. ``pred``: class ids (N, H, W) / (H, W), or scores (N, C, H, W) (argmax taken);
        ``target``: class ids of the same shape. torch tensors (any device) or numpy arrays."""
        pred, target = _as_tensor(pred), _as_tensor(target)
        if pred.is_floating_point() and pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if self.counts.device != pred.device:
            self.counts = self.counts.to(pred.device)
        target = target.to(pred.device).reshape(-1).long()
        pred = pred.reshape(-1).long()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        c = self.num_classes
        if target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= c:
                bad = sorted({int(v) for v in target[(target < 0) | (target >= c)].unique()[:8].tolist()})
                raise ValueError(f"label value(s) {bad} are neither class ids 0..{c - 1} nor the ignore index "
                                 f"{self.ignore_index}")
        pred = torch.where((pred >= 0) & (pred < c), pred, torch.full_like(pred, c))
        self.counts += torch.bincount(target * (c + 1) + pred, minlength=c * (c + 1)).view(c, c + 1)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (same number of classes); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.counts += other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum over all ranks when ``torch.distributed`` is initialised (no-op otherwise); returns self."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegmentationMetrics:
        m = self.counts.double().cpu()
        c = self.num_classes
        tp = m[:, :c].diag()
        gt = m.sum(1)
        union = gt + m[:, :c].sum(0) - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = float(m.sum())
        return SegmentationMetrics(
            miou=_nanmean(iou),
            iou=iou.tolist(),
            pixel_accuracy=float(tp.sum()) / total if total else float("nan"),
            mean_accuracy=_nanmean(acc),
            accuracy=acc.tolist(),
            pixels=int(total),
        )

    def report(self, class_names: Sequence[str]) -> dict:
        """``compute().to_dict(class_names)``: the JSON report."""
        return self.compute().to_dict(class_names)


def _nanmean(x: torch.Tensor) -> float:
    present = ~torch.isnan(x)
    return float(x[present].mean()) if present.any() else float("nan")
