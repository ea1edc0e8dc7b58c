"""``sfnet-eval``: mIoU, per-class IoU and pixel accuracy, for a checkpoint or for label files.

Two modes:

* **checkpoint** — ``sfnet-eval --config RECIPE.yaml --checkpoint ck.pt [--mode whole|slide|msf]
  [--save-pred DIR] [--json report.json]`` runs the network on the recipe's validation split,
  whole image, sliding window, or multi-scale + flip (``sfnet_core.inference.predict_logits``).
* **pred-dir** — ``sfnet-eval --pred-dir P --gt-dir G --classes config/classes/cityscapes.yaml``
  scores any model's predicted train-id PNGs against ground truth (see ``match_key`` for the
  pairing rule). Agrees with the official Cityscapes script (cityscapesscripts).

Both print the report as one JSON object on stdout (``miou`` in 0..1, ``per_class``,
``pixel_accuracy``, ...) and a human-readable table on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import ConfigError, DataError, run_command
from sfnet_core.io_utils import atomic_write

MSF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the paper's multi-scale protocol (Table 4)

# File-name suffixes dropped from the stem before pairing predictions with ground truth: the
# Cityscapes ones, then generic ones people append to prediction files.
MATCH_SUFFIXES = (
    "_leftImg8bit", "_gtFine_labelTrainIds", "_gtFine_labelIds", "_gtCoarse_labelTrainIds",
    "_gtCoarse_labelIds", "_labelTrainIds", "_labelIds", "_prediction", "_pred",
)
LABEL_EXTENSIONS = (".png",)


# ----------------------------------------------------------------------------- network evaluation
def evaluate_dataset(
    model: torch.nn.Module,
    dataset: Any,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    indices: Sequence[int] | None = None,
    on_prediction: Callable[[int, np.ndarray], None] | None = None,
):
    """Confusion matrix of ``model`` (eval mode) on ``dataset[i]`` = (image (3,H,W), label (H,W)).

    Images go one at a time because validation images may differ in size. ``on_prediction(i,
    labels (H,W) uint8)`` receives every prediction (e.g. to save it). Returns a ConfusionMatrix
    (not reduced across ranks).
    """
    from sfnet_core.inference import predict_logits
    from sfnet_core.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    with torch.inference_mode():
        for i in (range(len(dataset)) if indices is None else indices):
            image, label = dataset[i]
            batch = torch.as_tensor(image).unsqueeze(0).to(device)
            probs = predict_logits(model, batch, scales=scales, flip=flip, window=window)
            pred = probs.argmax(1)[0]
            cm.update(pred, torch.as_tensor(label).to(device))
            if on_prediction is not None:
                on_prediction(i, pred.to(torch.uint8).cpu().numpy())
    return cm


def _sample_name(dataset: Any, index: int) -> str:
    """A file-name stem for prediction ``index``: the dataset's ``name(i)`` (image stem) if it has one."""
    if callable(getattr(dataset, "name", None)):
        return match_key(Path(str(dataset.name(index)) + ".png"))
    return f"{index:06d}"


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.data.config import build_datasets
    from sfnet_core.distributed import pick_device
    from sfnet_core.engine import autocast_context, crop_hw, resolve_precision
    from sfnet_core.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    ck = load_checkpoint(args.checkpoint)
    _, val_set, classes = build_datasets(cfg.data, ck.mean, ck.std)
    if val_set is None:
        raise ConfigError(f"{args.config}: data.val_split is null: no validation split to evaluate")
    if classes.num_classes != ck.num_classes:
        raise ConfigError(
            f"{args.checkpoint}: predicts {ck.num_classes} classes but the recipe {args.config} has {classes.num_classes}"
        )
    device = pick_device(args.device, 0)
    precision = resolve_precision(args.precision, device)
    model = ck.build_model().to(device)
    window = tuple(args.window) if args.window else None
    if args.mode == "slide" and window is None:
        window = crop_hw(cfg.data)
    scales, flip = (tuple(args.scales) if args.scales else MSF_SCALES, True) if args.mode == "msf" else ((1.0,), False)
    if args.mode == "whole":
        window = None
    palette = ck.classes.palette()
    save_dir = Path(args.save_pred) if args.save_pred else None

    def save(i: int, labels: np.ndarray) -> None:
        import cv2

        stem = _sample_name(val_set, i)
        save_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        for name, img in ((f"{stem}.png", labels), (f"{stem}_color.png", palette[labels][:, :, ::-1])):
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
            if not ok:
                raise DataError(f"{save_dir / name}: cannot encode the prediction as PNG")
            with atomic_write(save_dir / name) as tmp:  # type: ignore[operator]
                tmp.write_bytes(buf.tobytes())

    indices = range(min(len(val_set), args.max_images)) if args.max_images else None
    with autocast_context(device, precision):
        cm = evaluate_dataset(model, val_set, ck.num_classes, ck.classes.ignore_index, device, scales=scales,
                              flip=flip, window=window, indices=indices, on_prediction=save if save_dir else None)
    report = metrics_report(cm, ck.classes)
    report.update({"mode": args.mode, "checkpoint": str(args.checkpoint), "config": str(args.config),
                   "images": len(indices) if indices is not None else len(val_set),
                   "scales": list(scales), "flip": flip, "window": list(window) if window else None})
    return report


# ----------------------------------------------------------------------------- pred-dir evaluation
def match_key(path: Path) -> str:
    """Pairing key of a label file: its stem with one known suffix (``MATCH_SUFFIXES``) removed.

    ``frankfurt_000000_000294_leftImg8bit.png`` (prediction) and
    ``frankfurt_000000_000294_gtFine_labelIds.png`` (ground truth) both give
    ``frankfurt_000000_000294``. Folders are not part of the key, so a flat prediction folder
    pairs with Cityscapes' per-city ground-truth folders.
    """
    stem = path.name
    for ext in LABEL_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    for suffix in MATCH_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_dir(root: Path, role: str, prefer: Sequence[str] = ()) -> dict[str, Path]:
    """``key -> file`` for the label PNGs under ``root`` (recursive).

    With ``prefer`` (ground truth), a folder holding Cityscapes-style ``*_labelTrainIds.png`` /
    ``*_labelIds.png`` files is narrowed to the first of those kinds present, so ``_color`` and
    ``_instanceIds`` images next to them are not mistaken for labels.
    """
    if not root.is_dir():
        raise DataError(f"{root}: {role} directory not found")
    # ``*_color.png`` are colourised previews (ours from --save-pred, Cityscapes' gtFine_color), never labels
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS and not p.stem.endswith("_color"))
    for suffix in prefer:
        chosen = [p for p in files if p.stem.endswith(suffix)]
        if chosen:
            files = chosen
            break
    index: dict[str, Path] = {}
    for p in files:
        key = match_key(p)
        if key in index:
            raise DataError(f"{role} files {index[key]} and {p} both pair under the name {key!r}; keep one")
        index[key] = p
    return index


def _read_label(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    if img.ndim != 2:
        raise DataError(f"{path}: expected a single-channel label image, got shape {img.shape}")
    return img


def evaluate_pred_dir(args: argparse.Namespace) -> dict:
    classes = ClassTable.from_yaml(args.classes) if args.classes else ClassTable.cityscapes()
    pred_dir, gt_dir = Path(args.pred_dir), Path(args.gt_dir)
    preds = _index_dir(pred_dir, "prediction")
    gts = _index_dir(gt_dir, "ground-truth", prefer=("_labelTrainIds", "_labelIds"))
    matched = sorted(set(preds) & set(gts))
    unmatched_pred = sorted(set(preds) - set(gts))
    unmatched_gt = sorted(set(gts) - set(preds))
    for key in unmatched_gt:
        print(f"sfnet-eval: warning: no prediction for ground truth {gts[key]}", file=sys.stderr)
    for key in unmatched_pred:
        print(f"sfnet-eval: warning: no ground truth for prediction {preds[key]}", file=sys.stderr)
    if not matched:
        raise DataError(f"no prediction in {pred_dir} pairs with a ground-truth file in {gt_dir} "
                        f"({len(preds)} predictions, {len(gts)} ground-truth files)")
    if args.strict and (unmatched_gt or unmatched_pred):
        raise DataError(f"--strict: {len(unmatched_gt)} ground-truth file(s) without prediction and "
                        f"{len(unmatched_pred)} prediction(s) without ground truth")
    lut = classes.label_lut()
    C = classes.num_classes
    counts = np.zeros((C, C + 1), dtype=np.int64)  # last column: predictions outside 0..C-1
    for key in matched:
        gt = _read_label(gts[key])
        pred = _read_label(preds[key])
        if gt.shape != pred.shape:
            raise DataError(f"{preds[key]}: size {pred.shape[::-1]} differs from ground truth {gts[key]} {gt.shape[::-1]}")
        if _gt_is_raw(args.gt_format, gts[key]):
            if lut is None:
                raise ConfigError(f"{args.classes}: raw label ids in {gts[key]} need an id_map in the class table "
                                  "(or pass --gt-format train)")
            gt = lut[gt]
        counts += _confusion(pred, gt, C, classes.ignore_index)
    report = _report_from_counts(counts, classes)
    report.update({
        "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "matched": len(matched),
        "unmatched_predictions": len(unmatched_pred), "unmatched_ground_truth": len(unmatched_gt),
        "unmatched_prediction_files": [str(preds[k]) for k in unmatched_pred],
        "unmatched_ground_truth_files": [str(gts[k]) for k in unmatched_gt],
    })
    return report


def _gt_is_raw(fmt: str, path: Path) -> bool:
    if fmt == "auto":
        return path.stem.endswith("_labelIds")
    return fmt == "raw"


def _confusion(pred: np.ndarray, gt: np.ndarray, C: int, ignore_index: int) -> np.ndarray:
    """(C, C+1) counts gt x pred over pixels whose gt is a class; invalid predictions -> column C.

    A prediction outside the train ids (e.g. 255) is wrong for the pixel's class (a false
    negative) but a false positive of no class, as in the Cityscapes script.
    """
    valid = gt < C
    if ignore_index < C:  # cannot happen with a valid ClassTable; kept for clarity
        valid &= gt != ignore_index
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    p = np.where((p >= 0) & (p < C), p, C)
    return np.bincount(g * (C + 1) + p, minlength=C * (C + 1)).reshape(C, C + 1)


def _report_from_counts(counts: np.ndarray, classes: ClassTable) -> dict:
    """IoU = TP / (TP + FP + FN) per class, NaN (null in JSON, excluded from the mean) when a class is
    neither in the ground truth nor predicted; pixel accuracy over non-ignored pixels."""
    C = classes.num_classes
    tp = np.diag(counts[:, :C]).astype(np.float64)
    gt_total = counts.sum(1).astype(np.float64)
    pred_total = counts[:, :C].sum(0).astype(np.float64)
    denom = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
        acc = np.where(gt_total > 0, tp / gt_total, np.nan)
    total = counts.sum()
    return _assemble(classes.names, iou, float(tp.sum() / total) if total else float("nan"),
                     float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"), int(total))


def _assemble(names: Sequence[str], iou: np.ndarray, pixel_acc: float, mean_acc: float, pixels: int) -> dict:
    present = np.isfinite(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return {
        "miou": _num(miou),
        "pixel_accuracy": _num(pixel_acc),
        "mean_accuracy": _num(mean_acc),
        "per_class": {n: _num(float(v)) for n, v in zip(names, iou)},
        "num_classes": len(names),
        "pixels": pixels,
    }


def metrics_report(cm: Any, classes: ClassTable) -> dict:
    """The report dict (miou, pixel_accuracy, mean_accuracy, per_class by name, pixels) of a ConfusionMatrix."""
    m = cm.compute()
    iou = np.asarray(m.iou, dtype=np.float64)
    return _assemble(classes.names, iou, float(m.pixel_accuracy), float(m.mean_accuracy), int(cm.mat.sum()))


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def format_report(report: dict) -> str:
    """The per-class table shown on stderr."""
    width = max(12, *(len(n) for n in report["per_class"]))
    lines = [f"{'class':<{width}}  IoU"]
    for name, v in report["per_class"].items():
        lines.append(f"{name:<{width}}  {'  n/a' if v is None else f'{100 * v:5.2f}'}")
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"
    lines.append(f"{'mIoU':<{width}}  {pct(report['miou'])}")
    lines.append(f"{'pixel acc':<{width}}  {pct(report['pixel_accuracy'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sfnet-eval",
        description="Evaluate a checkpoint on a recipe's validation split, or score predicted train-id "
        "PNGs (--pred-dir) against ground truth (--gt-dir). The report is printed as JSON on stdout.",
    )
    ck = p.add_argument_group("checkpoint mode")
    ck.add_argument("--config", help="recipe YAML whose data section names the validation split")
    ck.add_argument("--checkpoint", help="checkpoint (.pt) to evaluate")
    ck.add_argument("--mode", choices=("whole", "slide", "msf"), default="whole",
                    help="whole image, sliding window, or multi-scale + flip (default: whole)")
    ck.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                    help="sliding-window size (default for slide: the recipe's crop)")
    ck.add_argument("--scales", type=float, nargs="+", help=f"msf scales (default {' '.join(map(str, MSF_SCALES))})")
    ck.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ck.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="fp32")
    ck.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0 = all)")
    ck.add_argument("--save-pred", metavar="DIR", help="write <name>.png (train ids) and <name>_color.png")
    ck.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. data.root=/data")
    pd = p.add_argument_group("pred-dir mode")
    pd.add_argument("--pred-dir", help="predicted train-id PNGs (any folder layout)")
    pd.add_argument("--gt-dir", help="ground-truth PNGs (e.g. Cityscapes gtFine/val)")
    pd.add_argument("--classes", help="class table YAML (default: Cityscapes)")
    pd.add_argument("--gt-format", choices=("auto", "train", "raw"), default="auto",
                    help="ground truth holds train ids, or raw ids mapped by the class table's id_map; "
                    "auto: raw for *_labelIds.png, train ids otherwise")
    pd.add_argument("--strict", action="store_true", help="fail when any file is unmatched")
    p.add_argument("--json", metavar="FILE", help="also write the report to FILE (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.pred_dir or args.gt_dir:
            if not (args.pred_dir and args.gt_dir):
                raise ConfigError("--pred-dir and --gt-dir go together")
            if args.checkpoint or args.config:
                raise ConfigError("--pred-dir/--gt-dir cannot be combined with --checkpoint/--config")
            report = evaluate_pred_dir(args)
        else:
            if not (args.config and args.checkpoint):
                raise ConfigError("give --config and --checkpoint, or --pred-dir and --gt-dir")
            report = evaluate_checkpoint(args)
        print(format_report(report), file=sys.stderr)
        if args.json:
            with atomic_write(args.json) as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report))
        return 0

    return run_command("sfnet-eval", run)


if __name__ == "__main__":
    sys.exit(main())
