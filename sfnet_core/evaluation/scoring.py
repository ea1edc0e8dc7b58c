"""Evaluation: mIoU, per-class IoU and pixel accuracy, of a checkpoint or of label files.

* ``evaluate_checkpoint`` runs the network on a recipe's validation split, whole image, sliding
  window, or multi-scale + flip (``sfnet_core.inference.predict_logits``).
* ``evaluate_pred_dir`` scores any model's predicted train-id PNGs against ground truth (see
  ``match_key`` for the pairing rule); it agrees with the official Cityscapes script.
* ``evaluate_dataset`` is the loop both the training engine's validation and
  ``evaluate_checkpoint`` use.

All of them count with one ``ConfusionMatrix`` (``sfnet_core.evaluation.metrics``) and report
``metrics.to_dict(names)``. The command line is ``sfnet_core.cli.evaluate_command`` (``sfnet-eval``).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.config import DataConfig
from sfnet_core.data.factory import build_datasets
from sfnet_core.errors import ConfigError, DataError
from sfnet_core.evaluation.metrics import ConfusionMatrix
from sfnet_core.inference.loader import open_model
from sfnet_core.inference.predict import predict_logits
from sfnet_core.io_utils import atomic_write, check_output

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
    model: Any,  # an nn.Module in eval mode, or an InferenceBackend: normalised (N,3,H,W) -> logits
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


PREDICTIONS_MARKER = ".sfnet-predictions"  # names a folder written by evaluate_checkpoint(save_pred=...)
PREDICTIONS_TOOL = "sfnet-eval --save-pred"  # its manifest's tool name (sfnet_core.io_utils): what overwrite replaces


@dataclass
class CheckpointEvaluation:
    """What ``evaluate_checkpoint`` evaluates and how (the ``sfnet-eval`` checkpoint mode)."""

    data: DataConfig                              # the recipe's data section: names the val split
    checkpoint: Path
    mode: str = "whole"                           # whole | slide | msf
    window: tuple[int, int] | None = None         # slide: tile size (default: the recipe's crop)
    scales: tuple[float, ...] | None = None       # msf: scales (default MSF_SCALES)
    device: str = "auto"
    precision: str = "fp32"                       # fp32 | fp16 | bf16 | auto; an .onnx runs its own (fp32 or int8)
    backend: str = "auto"                         # auto (loader.choose_backend) | torch | onnxruntime | openvino
    max_images: int = 0                           # 0 = all
    save_pred: Path | None = None                 # folder for <name>.png and <name>_color.png
    overwrite: bool = False                       # replace an existing save_pred folder of ours
    source: str = "<recipe>"                      # where ``data`` came from (messages and the report)


def evaluate_checkpoint(job: CheckpointEvaluation) -> dict:
    """The report of ``job.checkpoint`` (a ``.pt`` checkpoint or an ``.onnx`` exported by
    sfnet-export, see ``sfnet_core.inference.loader``) on the validation split of ``job.data``.

    A fixed-size ``.onnx`` takes only inputs of its size: whole-image evaluation needs validation
    images that pad to it, sliding-window evaluation needs ``window`` = that size.
    """
    if job.mode not in ("whole", "slide", "msf"):
        raise ConfigError(f"mode: expected whole, slide or msf, got {job.mode!r}")
    if job.window is not None and (len(job.window) != 2 or min(job.window) < 1):
        raise ConfigError(f"window: needs two positive sizes (height width), got {list(job.window)}")
    if job.scales is not None and (not job.scales or min(job.scales) <= 0):
        raise ConfigError(f"scales: every scale must be > 0, got {list(job.scales)}")
    if job.max_images < 0:
        raise ConfigError(f"max_images: must be >= 0, got {job.max_images}")
    save_dir = None
    if job.save_pred is not None:
        save_dir = check_output(job.save_pred, inputs=(job.checkpoint, job.data.root),
                                overwrite=job.overwrite, kind="dir", what="save_pred", tool=PREDICTIONS_TOOL)
    is_onnx = Path(job.checkpoint).suffix.lower() == ".onnx"
    precision = job.precision
    if is_onnx and precision == "fp32":
        # fp32 (the recipes' default) means "as stored" for an exported model: an int8 model runs in
        # int8, an fp32 one in fp32 exactly ("auto" would let OpenVINO pick bf16 on AMX CPUs)
        from sfnet_core.onnx.metadata import read_onnx_info

        precision = "auto" if read_onnx_info(job.checkpoint, verify=False).precision == "int8" else "fp32"
    loaded = open_model(job.checkpoint, backend=job.backend, device=job.device, precision=precision,
                        channels_last=False)
    model, ck_classes = loaded.backend, loaded.classes
    _, val_set, classes = build_datasets(job.data, loaded.mean, loaded.std, train=False)
    if val_set is None:
        raise ConfigError(f"{job.source}: data.val_split is null: no validation split to evaluate")
    if classes.num_classes != ck_classes.num_classes:
        raise ConfigError(
            f"{job.checkpoint}: predicts {ck_classes.num_classes} classes but the recipe {job.source} has "
            f"{classes.num_classes}: evaluate with the recipe the model was trained with"
            + (", or give this recipe the model's class table (add data.classes=TABLE.yaml to the command, "
               "e.g. data.classes=config/classes/cityscapes.yaml for the 19 Cityscapes classes)"
               if job.data.kind == "folder" else "")
        )
    window: tuple[int, int] | None = None
    if job.mode == "slide":
        height, width = job.window or job.data.crop_size
        window = (height, width)
    scales, flip = (tuple(job.scales or MSF_SCALES), True) if job.mode == "msf" else ((1.0,), False)
    _check_fixed_size(loaded, val_set, job.mode, window)
    indices = range(min(len(val_set), job.max_images)) if job.max_images else None
    with _prediction_writer(save_dir, val_set, ck_classes.palette(), job.overwrite) as save:
        cm = evaluate_dataset(model, val_set, ck_classes.num_classes, ck_classes.ignore_index, model.device,
                              scales=scales, flip=flip, window=window, indices=indices, on_prediction=save)
    report = cm.report(ck_classes.names)
    report.update({"backend": model.describe(), "precision": model.precision})
    report.update({"mode": job.mode, "checkpoint": str(job.checkpoint), "config": job.source,
                   "images": len(indices) if indices is not None else len(val_set),
                   "scales": list(scales), "flip": flip, "window": list(window) if window else None})
    return report


def _check_fixed_size(loaded: Any, dataset: Any, mode: str, window: tuple[int, ...] | None) -> None:
    """A clear error before the first image when a fixed-size model cannot take the inputs."""
    fixed = loaded.backend.fixed_size
    if fixed is None or len(dataset) == 0:
        return
    if mode == "msf":
        raise ConfigError(f"{loaded.path}: a fixed-size model ({fixed[0]}x{fixed[1]}) cannot run multi-scale "
                          "evaluation; export with --dynamic")
    if mode == "slide":
        if window is None or tuple(window) != tuple(fixed):
            raise ConfigError(f"{loaded.path}: a fixed-size model takes {fixed[0]}x{fixed[1]} tiles: pass --window "
                              f"{fixed[0]} {fixed[1]}")
        return
    image, _ = dataset[0]
    h, w = image.shape[-2:]
    padded = (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)
    if padded != tuple(fixed):
        raise ConfigError(f"{loaded.path}: the model takes {fixed[0]}x{fixed[1]} inputs, the validation images are "
                          f"{h}x{w}: use --mode slide --window {fixed[0]} {fixed[1]}, or export with --dynamic")


class _prediction_writer:
    """Context manager yielding ``save(i, labels)`` (or None without a folder): the predictions go
    to a staging folder that replaces ``save_dir`` only when every image was written."""

    def __init__(self, save_dir: Path | None, dataset: Any, palette: np.ndarray, overwrite: bool = False) -> None:
        self.save_dir, self.dataset, self.palette, self.overwrite = save_dir, dataset, palette, overwrite
        self._atomic: Any = None

    def __enter__(self) -> Callable[[int, np.ndarray], None] | None:
        save_dir = self.save_dir
        if save_dir is None:
            return None
        self._atomic = atomic_write(save_dir, overwrite=self.overwrite, tool=PREDICTIONS_TOOL,
                                    what="--save-pred")
        staging = self._atomic.__enter__()
        try:
            staging.mkdir()
            (staging / PREDICTIONS_MARKER).write_text("predictions written by sfnet-eval\n")
        except BaseException:  # incl. a signal: __exit__ is not called when __enter__ fails
            self._atomic.__exit__(*sys.exc_info())
            raise

        def save(i: int, labels: np.ndarray) -> None:
            stem = _sample_name(self.dataset, i)
            for name, img in ((f"{stem}.png", labels), (f"{stem}_color.png", self.palette[labels][:, :, ::-1])):
                ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
                if not ok:
                    raise DataError(f"{save_dir / name}: cannot encode the prediction as PNG")
                (staging / name).write_bytes(buf.tobytes())

        return save

    def __exit__(self, *exc: Any) -> bool | None:
        if self._atomic is not None:
            return self._atomic.__exit__(*exc)
        return None


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
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    if img.ndim != 2:
        raise DataError(f"{path}: expected a single-channel label image, got shape {img.shape}")
    return img


def evaluate_pred_dir(pred_dir: str | Path, gt_dir: str | Path, classes: str | Path | None = None,
                      gt_format: str = "auto", strict: bool = False) -> dict:
    """Score the predicted train-id PNGs under ``pred_dir`` against the ground truth under ``gt_dir``.

    ``classes``: class table YAML (default Cityscapes). ``gt_format``: ``auto`` (raw ids for
    ``*_labelIds.png``, train ids otherwise), ``train`` or ``raw`` (mapped by the table's id_map).
    ``strict``: unmatched files are an error instead of being listed in the report.
    """
    if gt_format not in ("auto", "train", "raw"):
        raise ConfigError(f"gt_format: expected auto, train or raw, got {gt_format!r}")
    table = ClassTable.from_yaml(classes) if classes else ClassTable.cityscapes()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds = _index_dir(pred_dir, "prediction")
    gts = _index_dir(gt_dir, "ground-truth", prefer=("_labelTrainIds", "_labelIds"))
    matched = sorted(set(preds) & set(gts))
    unmatched_pred = sorted(set(preds) - set(gts))
    unmatched_gt = sorted(set(gts) - set(preds))
    if not matched:
        raise DataError(f"no prediction in {pred_dir} pairs with a ground-truth file in {gt_dir} "
                        f"({len(preds)} predictions, {len(gts)} ground-truth files)")
    if strict and (unmatched_gt or unmatched_pred):
        raise DataError(f"strict mode (--strict): {len(unmatched_gt)} ground-truth file(s) without prediction and "
                        f"{len(unmatched_pred)} prediction(s) without ground truth")
    lut = table.label_lut()
    cm = ConfusionMatrix(table.num_classes, table.ignore_index)
    for key in matched:
        gt = _read_label(gts[key])
        pred = _read_label(preds[key])
        if gt.shape != pred.shape:
            raise DataError(
                f"{preds[key]}: size {pred.shape[::-1]} differs from ground truth {gts[key]} {gt.shape[::-1]}")
        if gt_format == "raw" or (gt_format == "auto" and gts[key].stem.endswith("_labelIds")):
            if lut is None:
                raise ConfigError(f"{classes}: raw label ids in {gts[key]} need an id_map in the class table "
                                  "(or pass --gt-format train)")
            gt = lut[gt]
        try:
            cm.update(pred.astype(np.int64), gt.astype(np.int64))
        except ValueError as exc:
            raise DataError(f"{gts[key]}: {exc}") from None
    report = cm.report(table.names)
    report.update({
        "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "matched": len(matched),
        "unmatched_predictions": len(unmatched_pred), "unmatched_ground_truth": len(unmatched_gt),
        "unmatched_prediction_files": [str(preds[k]) for k in unmatched_pred],
        "unmatched_ground_truth_files": [str(gts[k]) for k in unmatched_gt],
    })
    return report
