"""One bag's results, stored so that any set of them merges exactly.

Every frame keeps its own confusion counts (``sfnet_core.evaluation.metrics.ConfusionMatrix``
semantics: (C, C + 1), rows = ground truth, the last column = pixels with no prediction), so a
total over frames, cameras, bags, machines is a sum of integers: exactly the matrix of evaluating
everything as one set, whatever the order or the grouping. A bag's result is one ``.npz`` (arrays
plus a JSON header, loaded with ``allow_pickle=False``) written atomically: a killed run keeps the
bags it finished, and results written anywhere (another machine, a batch system) merge the same.

Shapes: F frames, M models (1, or 2 for an A/B comparison: baseline first), C classes.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.io_utils import atomic_write

FORMAT = "sfnet-fleet-bag"
VERSION = 1


class ResultError(ValueError):
    """A partial result that cannot be read or does not fit the others."""


@dataclass
class Strip:
    """A picture kept for the report: a worst frame of a model, or a frame where two disagree."""

    kind: str  # "worst" | "disagree"
    model: int  # the model's index ("worst"); -1 for "disagree"
    camera: str
    stamp_ns: int
    time_s: float
    score: float  # frame mIoU (worst, labelled), uncertainty (worst, unlabelled) or disagreeing fraction
    png: bytes
    caption: str


@dataclass
class BagResult:
    """Everything a fleet report needs from one bag (see the module docstring for shapes)."""

    bag: str  # the name shown in reports
    identity: str  # sources.bag_identity: path, sizes, modification times
    settings: str  # digest of the models and settings the numbers depend on
    cameras: list[str]
    class_names: list[str]
    camera: np.ndarray  # (F,) int16 index into ``cameras``
    stamp_ns: np.ndarray  # (F,) int64 header stamps
    time_s: np.ndarray  # (F,) float64 seconds since the camera's first frame in this bag
    labelled: np.ndarray  # (F,) bool: a label with the same stamp was found
    counts: np.ndarray  # (M, F, C, C + 1) int64 per-frame confusion counts (zeros when unlabelled)
    uncertainty: np.ndarray  # (M, F) float32 mean (1 - margin) over the frame's valid pixels
    class_uncertainty: np.ndarray  # (M, C) float64 sum of (1 - margin) over pixels predicted as c
    class_pixels: np.ndarray  # (M, C) int64 pixels predicted as c
    model_ms: np.ndarray  # (M, F) float32 model time per frame (batch time / batch size)
    disagreement: np.ndarray  # (F,) float32 fraction of pixels where the two models differ (M == 2)
    wall_s: float = 0.0
    strips: list[Strip] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # device, backend, unmatched counts, ...

    @property
    def frames(self) -> int:
        return int(self.stamp_ns.shape[0])

    # -- storage -------------------------------------------------------------------------------
    _ARRAYS = ("camera", "stamp_ns", "time_s", "labelled", "counts", "uncertainty", "class_uncertainty",
               "class_pixels", "model_ms", "disagreement")

    def save(self, path: Path) -> None:
        """Write the result as one .npz, atomically (a kill leaves the old file or none)."""
        header = {"format": FORMAT, "version": VERSION, "bag": self.bag, "identity": self.identity,
                  "settings": self.settings, "cameras": self.cameras, "class_names": self.class_names,
                  "wall_s": self.wall_s, "info": self.info,
                  "strips": [{k: v for k, v in vars(s).items() if k != "png"} for s in self.strips]}
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        for i, strip in enumerate(self.strips):
            arrays[f"strip_{i}"] = np.frombuffer(strip.png, np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        with atomic_write(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> BagResult:
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                if header.get("format") != FORMAT or header.get("version") != VERSION:
                    raise ResultError(f"{path}: not a fleet result of this version ({FORMAT} {VERSION})")
                arrays = {name: data[name] for name in cls._ARRAYS}
                pngs = [bytes(data[f"strip_{i}"]) for i in range(len(header["strips"]))]
        except ResultError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise ResultError(f"{path}: not a readable fleet result ({exc.__class__.__name__}: {exc})") from None
        strips = [Strip(png=png, **meta) for meta, png in zip(header["strips"], pngs)]
        result = cls(bag=header["bag"], identity=header["identity"], settings=header["settings"],
                     cameras=list(header["cameras"]), class_names=list(header["class_names"]),
                     wall_s=float(header["wall_s"]), info=dict(header["info"]), strips=strips, **arrays)
        result.check(path)
        return result

    def check(self, where: Path | str) -> None:
        """ResultError unless the arrays have the shapes the module docstring gives."""
        f, c = self.frames, len(self.class_names)
        m = self.counts.shape[0] if self.counts.ndim == 4 else -1
        expected = {"camera": (f,), "time_s": (f,), "labelled": (f,), "counts": (m, f, c, c + 1),
                    "uncertainty": (m, f), "class_uncertainty": (m, c), "class_pixels": (m, c),
                    "model_ms": (m, f)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ResultError(f"{where}: {name} has shape {getattr(self, name).shape}, expected {shape}")
        if m not in (1, 2) or (m == 2 and self.disagreement.shape != (f,)):
            raise ResultError(f"{where}: {m} models; a result holds 1, or 2 with their disagreement")


def load_results(paths: list[Path]) -> list[BagResult]:
    """Load partial results; ResultError if their class tables or model counts differ."""
    results = [BagResult.load(p) for p in paths]
    for path, result in zip(paths[1:], results[1:]):
        first = results[0]
        if result.class_names != first.class_names:
            raise ResultError(f"{path}: its classes {result.class_names[:4]}... differ from {paths[0]}'s")
        if result.counts.shape[0] != first.counts.shape[0]:
            raise ResultError(f"{path}: {result.counts.shape[0]} model(s), {paths[0]} has {first.counts.shape[0]}")
        if result.settings != first.settings:
            raise ResultError(f"{path}: made with other models or settings than {paths[0]} "
                              f"({result.info.get('models')} vs {first.info.get('models')})")
    return results


# ----------------------------------------------------------------------------- metrics
def iou_per_class(counts: np.ndarray) -> np.ndarray:
    """(..., C, C + 1) counts -> (..., C) IoU, NaN where TP + FP + FN == 0.

    The same arithmetic as ``ConfusionMatrix.compute`` (tested equal), vectorised over any leading
    axes: per frame, per group, per bootstrap resample."""
    c = counts.shape[-2]
    counts = counts.astype(np.float64)
    tp = np.diagonal(counts[..., :c], axis1=-2, axis2=-1)
    union = counts.sum(-1) + counts[..., :c].sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(counts: np.ndarray) -> np.ndarray:
    """(..., C, C + 1) -> (...) mean over the classes present (NaN where none is)."""
    iou = iou_per_class(counts)
    present = ~np.isnan(iou)
    total = np.where(present, iou, 0.0).sum(-1)
    n = present.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def figures(counts: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """mIoU, accuracies and per-class IoU of one (C, C + 1) matrix, JSON-ready (None for NaN)."""
    c = len(class_names)
    tp = np.diagonal(counts[:, :c]).astype(np.float64)
    gt = counts.sum(1).astype(np.float64)
    total = float(counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)
    iou = iou_per_class(counts)
    return {"miou": clean(float(mean_iou(counts))),
            "pixel_accuracy": clean(float(tp.sum()) / total if total else math.nan),
            "mean_accuracy": clean(float(np.nanmean(acc)) if (~np.isnan(acc)).any() else math.nan),
            "per_class_iou": {name: clean(float(v)) for name, v in zip(class_names, iou)}, "pixels": int(total)}


def clean(value: float) -> float | None:
    """JSON has no NaN: None for "not defined" (a class absent from both labels and predictions)."""
    return None if value is None or math.isnan(value) else round(float(value), 6)
