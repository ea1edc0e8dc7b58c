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


@dataclass
class SegmentationMetrics:
    miou: float                   # mean IoU over classes with a defined IoU (NaN if none)
    iou: list[float]              # per class, NaN for absent classes
    pixel_accuracy: float         # correct / labelled pixels
    mean_accuracy: float          # mean over classes present in the ground truth of TP / (TP + FN)
    accuracy: list[float]         # per class TP / (TP + FN), NaN when not in the ground truth

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready: NaN -> None; per-class lists become ``{name: value}`` when names are given."""
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        def per_class(values: list[float]):
            if class_names is None:
                return [clean(v) for v in values]
            return {n: clean(v) for n, v in zip(class_names, values)}

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_accuracy": clean(self.mean_accuracy),
            "iou": per_class(self.iou),
            "accuracy": per_class(self.accuracy),
        }


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


class ConfusionMatrix:
    """``(C, C)`` int64 counts, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64,
                               device=device if device is not None else "cpu")

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred, target) -> None:
        """Add a batch. ``pred``: class ids (N, H, W) / (H, W), or scores (N, C, H, W) (argmax taken);
        ``target``: class ids of the same shape. torch tensors (any device) or numpy arrays."""
        pred, target = _as_tensor(pred), _as_tensor(target)
        if pred.is_floating_point() and pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if self.mat.device != pred.device:
            self.mat = self.mat.to(pred.device)
        target = target.to(pred.device).reshape(-1).long()
        pred = pred.reshape(-1).long()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        c = self.num_classes
        if target.numel():
            # one reduction for both range checks: out-of-range ids would silently land in
            # another class's cell of the flattened matrix
            lo = torch.minimum(target.min(), pred.min())
            hi = torch.maximum(target.max(), pred.max())
            if int(lo) < 0 or int(hi) >= c:
                raise ValueError(f"class ids must be in 0..{c - 1} (or the ignore index {self.ignore_index} "
                                 f"in the target); got values in {int(lo)}..{int(hi)}")
        self.mat += torch.bincount(target * c + pred, minlength=c * c).view(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (same number of classes); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.mat += other.mat.to(self.mat.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum over all ranks when ``torch.distributed`` is initialised (no-op otherwise); returns self."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegmentationMetrics:
        m = self.mat.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        union = gt + m.sum(0) - tp
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
        )


def _nanmean(x: torch.Tensor) -> float:
    present = ~torch.isnan(x)
    return float(x[present].mean()) if present.any() else float("nan")


def format_table(metrics: SegmentationMetrics, class_names: Sequence[str]) -> str:
    """A plain-text table: one row per class (IoU and accuracy in %), then the means."""
    def pct(v: float) -> str:
        return "    -" if math.isnan(v) else f"{100 * v:5.1f}"

    width = max([len(n) for n in class_names] + [len("pixel accuracy")])
    lines = [f"{'class':<{width}}   IoU%   Acc%", "-" * (width + 15)]
    for name, iou, acc in zip(class_names, metrics.iou, metrics.accuracy):
        lines.append(f"{name:<{width}}  {pct(iou)}  {pct(acc)}")
    lines.append("-" * (width + 15))
    lines.append(f"{'mean':<{width}}  {pct(metrics.miou)}  {pct(metrics.mean_accuracy)}")
    lines.append(f"{'pixel accuracy':<{width}}  {pct(metrics.pixel_accuracy)}")
    return "\n".join(lines)
