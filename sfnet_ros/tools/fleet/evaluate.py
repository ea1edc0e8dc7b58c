"""One bag, every camera, one or two models: the per-frame numbers a fleet report is made of.

Frames are read in bag order, batched per model through ``Segmenter.segment`` (with the margin
map: a pixel's uncertainty is ``1 - (p1 - p2)``, p1 and p2 its two largest softmax probabilities,
the usual score for choosing what to label: 1 where the network cannot tell two classes apart),
and paired with ground truth by camera and header stamp, whichever comes first. A labelled
frame keeps its confusion counts; every frame keeps its uncertainty. The worst frames (lowest
frame mIoU; the most uncertain where a bag has no labels) and, for two models, the frames where
they disagree most are kept as strips for the report, a bounded number per bag.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sfnet_core.viz import colorize, image_strip
from sfnet_ros.conversions import ImageConversionError
from sfnet_ros.tools.bag_io import (
    COMPRESSED,
    IMAGE,
    BagError,
    BagReader,
    decode_image,
    decode_labels,
    required_stamp,
    stamp_name,
)
from sfnet_ros.tools.fleet.results import BagResult, Strip, mean_iou
from sfnet_ros.tools.fleet.sources import Camera

UNLABELED = 255  # Segmenter's label outside the frame's valid region
PENDING_LIMIT = 512  # frames waiting for a label that never comes are let go (they count unlabelled)


class _Pairs:
    """Predictions and labels of one (camera, stamp) meet here, whichever comes first. At most
    ``PENDING_LIMIT`` wait on either side: a frame whose label never comes is let go (it counts as
    unlabelled), so memory stays bounded however a bag orders its topics."""

    PREDICTION, LABEL = 0, 1

    def __init__(self) -> None:
        self.waiting: tuple[dict, dict] = ({}, {})
        self.let_go = [0, 0]

    def add(self, side: int, key: tuple[int, int], value: Any) -> Any | None:
        """The other side's value for ``key`` if it is here (taken), else None (``value`` waits)."""
        other = self.waiting[1 - side].pop(key, None)
        if other is None:
            self.waiting[side][key] = value
            if len(self.waiting[side]) > PENDING_LIMIT:
                self.waiting[side].pop(next(iter(self.waiting[side])))
                self.let_go[side] += 1
        return other


@dataclass
class _Pending:
    index: int
    rgb: np.ndarray
    preds: list[np.ndarray]


def frame_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """(C, C + 1) confusion counts of one frame: ``ConfusionMatrix.update``'s rules (ignored ground
    truth skipped, a prediction that is no class counted in the last column), in numpy."""
    keep = gt != ignore_index
    target = gt[keep].astype(np.int64)
    predicted = pred[keep].astype(np.int64)
    predicted[(predicted < 0) | (predicted >= num_classes)] = num_classes
    c1 = num_classes + 1
    return np.bincount(target * c1 + predicted, minlength=num_classes * c1).reshape(num_classes, c1)


class _Keeper:
    """The ``limit`` frames of highest ``score`` seen, with what their strip needs (references to
    arrays already made, no copies)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[tuple[float, int, tuple]] = []
        self.order = 0

    def offer(self, score: float, payload: tuple) -> None:
        if self.limit <= 0 or np.isnan(score):
            return
        self.order += 1
        entry = (score, -self.order, payload)  # ties: the earlier frame stays
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def best_first(self) -> list[tuple]:
        return [entry[2] for entry in sorted(self.heap, key=lambda e: e[:2], reverse=True)]


def _png(picture: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise BagError("cannot encode a report strip as PNG")
    return encoded.tobytes()


def error_map(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, ignore_index: int) -> np.ndarray:
    """The frame darkened, wrong pixels red, ignored ground truth black."""
    out = (rgb.astype(np.uint16) * 2 // 5).astype(np.uint8)
    out[(pred != gt) & (gt != ignore_index)] = (255, 0, 0)
    out[gt == ignore_index] = 0
    return out


def evaluate_bag(bag: Path, name: str, identity: str, settings: str, cameras: Sequence[Camera],
                 segmenters: Sequence[Any], batch_size: int = 4, keep: int = 8,
                 label_lut: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
                 ) -> BagResult:
    """Evaluate ``bag`` with ``segmenters`` (1 model, or baseline and candidate); BagError naming
    the bag, camera and stamp on anything that would make a number wrong (label values outside
    the class table, a label of another size than its image, a missing camera topic)."""
    classes = segmenters[0].classes
    num_classes, ignore = classes.num_classes, classes.ignore_index
    palette = classes.palette()
    m_count = len(segmenters)
    started = time.perf_counter()
    with BagReader(bag) as reader:
        label_topics: dict[str, int] = {}
        image_topics: dict[str, int] = {}
        for index, camera in enumerate(cameras):
            reader.check_topic(camera.image_topic, what=f"camera {camera.name!r}: image topic")
            image_topics[camera.image_topic] = index
            if camera.label_topic and (camera.label_required or camera.label_topic in reader.topics):
                reader.check_topic(camera.label_topic, (IMAGE, COMPRESSED), what=f"camera {camera.name!r}: label topic")
                label_topics[camera.label_topic] = index
        rows: list[tuple[int, int]] = []  # (camera, stamp) per frame, in bag order
        counts: dict[int, np.ndarray] = {}  # frame -> (M, C, C + 1)
        uncertainty: list[list[float]] = [[] for _ in segmenters]
        model_ms: list[list[float]] = [[] for _ in segmenters]
        disagreement: list[float] = []
        class_unc = np.zeros((m_count, num_classes), np.float64)
        class_pix = np.zeros((m_count, num_classes), np.int64)
        pairs = _Pairs()
        worst = [_Keeper(keep) for _ in segmenters]
        uncertain = [_Keeper(keep) for _ in segmenters]
        disagree = _Keeper(keep if m_count == 2 else 0)
        batch: list[tuple[int, np.ndarray]] = []  # (frame, rgb)

        def score(key: tuple[int, int], item: _Pending, gt: np.ndarray) -> None:
            if gt.shape != item.preds[0].shape:
                raise BagError(f"camera {cameras[key[0]].name!r} at stamp {stamp_name(key[1])}: the label is "
                               f"{gt.shape[1]}x{gt.shape[0]} but its image is {item.rgb.shape[1]}x{item.rgb.shape[0]}")
            frame = np.stack([frame_counts(p, gt, num_classes, ignore) for p in item.preds])
            counts[item.index] = frame
            for m, pred in enumerate(item.preds):
                frame_miou = float(mean_iou(frame[m]))
                worst[m].offer(-frame_miou, (item.index, frame_miou, item.rgb, gt, pred))

        def run_batch() -> None:
            images = [rgb for _, rgb in batch]
            outputs = []
            for m, segmenter in enumerate(segmenters):
                begin = time.perf_counter()
                outputs.append(segmenter.segment(images, return_confidence="margin"))
                model_ms[m] += [1000.0 * (time.perf_counter() - begin) / len(images)] * len(images)
            for j, (index, rgb) in enumerate(batch):
                preds = [outputs[m][j].labels for m in range(m_count)]
                for m in range(m_count):
                    labels, conf = preds[m], outputs[m][j].confidence
                    valid = labels != UNLABELED
                    unc = 1.0 - conf[valid].astype(np.float32) / 255.0
                    frame_unc = float(unc.mean()) if unc.size else float("nan")
                    uncertainty[m].append(frame_unc)
                    class_unc[m] += np.bincount(labels[valid], weights=unc, minlength=num_classes)[:num_classes]
                    class_pix[m] += np.bincount(labels[valid], minlength=num_classes)[:num_classes]
                    uncertain[m].offer(frame_unc, (index, frame_unc, rgb, labels, conf))
                if m_count == 2:
                    valid = (preds[0] != UNLABELED) | (preds[1] != UNLABELED)
                    differs = float((preds[0] != preds[1])[valid].mean()) if valid.any() else 0.0
                    disagreement.append(differs)
                    disagree.offer(differs, (index, differs, rgb, preds[0], preds[1]))
                key = rows[index]
                if key[0] in label_topics.values():
                    item = _Pending(index, rgb, preds)
                    gt = pairs.add(_Pairs.PREDICTION, key, item)
                    if gt is not None:
                        score(key, item, gt)
            if progress is not None:
                progress(len(batch))
            batch.clear()

        topics = list(image_topics) + list(label_topics)
        try:
            for topic, msgtype, _, _, msg in reader.decoded_cdr_messages(topics):
                stamp = required_stamp(msg, topic, msgtype)
                if topic in image_topics:
                    rows.append((image_topics[topic], stamp))
                    batch.append((len(rows) - 1, decode_image(msg, msgtype)))
                    if len(batch) >= batch_size:
                        run_batch()
                    continue
                gt = decode_labels(msg, msgtype, topic)
                if label_lut is not None:
                    gt = label_lut[gt]
                bad = gt[(gt >= num_classes) & (gt != ignore)]
                if bad.size:
                    values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
                    raise BagError(f"label topic {topic} at stamp {stamp_name(stamp)}: value(s) {values} are not "
                                   f"train ids of the checkpoint's {num_classes} classes (or {ignore} = ignore); "
                                   "give --label-classes with an id_map if the bag holds other label ids")
                key = (label_topics[topic], stamp)
                item = pairs.add(_Pairs.LABEL, key, gt)
                if item is not None:
                    score(key, item, gt)
            if batch:
                run_batch()
        except ImageConversionError as exc:
            raise BagError(f"{exc}") from None
    unmatched_labels = pairs.let_go[_Pairs.LABEL] + len(pairs.waiting[_Pairs.LABEL])
    frames = len(rows)
    camera_index = np.array([c for c, _ in rows], np.int16)
    stamps = np.array([s for _, s in rows], np.int64)
    times = np.zeros(frames, np.float64)
    for c in range(len(cameras)):
        mine = camera_index == c
        if mine.any():
            times[mine] = (stamps[mine] - stamps[mine].min()) / 1e9
    all_counts = np.zeros((m_count, frames, num_classes, num_classes + 1), np.int64)
    labelled = np.zeros(frames, bool)
    for index, frame in counts.items():
        all_counts[:, index] = frame
        labelled[index] = True

    def where(index: int) -> tuple[str, int, float]:
        return cameras[rows[index][0]].name, rows[index][1], float(times[index])

    strips: list[Strip] = []
    for m in range(m_count):
        if labelled.any():
            for index, miou, rgb, gt, pred in worst[m].best_first():
                strips.append(Strip("worst", m, *where(index), miou, _png(image_strip(
                    [rgb, colorize(gt, palette), colorize(pred, palette), error_map(rgb, pred, gt, ignore)],
                    labels=["input", "ground truth", "prediction", "errors (red)"])),
                    "input | ground truth | prediction | errors (red)"))
        else:
            for index, unc, rgb, labels, conf in uncertain[m].best_first():
                strips.append(Strip("worst", m, *where(index), unc, _png(image_strip(
                    [rgb, colorize(labels, palette), 255 - conf], labels=["input", "prediction", "uncertainty"])),
                    "input | prediction | uncertainty (white: unsure)"))
    for index, differs, rgb, base, cand in disagree.best_first():
        strips.append(Strip("disagree", -1, *where(index), differs, _png(image_strip(
            [rgb, colorize(base, palette), colorize(cand, palette), ((base != cand) * 255).astype(np.uint8)],
            labels=["input", "baseline", "candidate", "differs"])), "input | baseline | candidate | differs (white)"))
    return BagResult(
        bag=name, identity=identity, settings=settings, cameras=[c.name for c in cameras],
        class_names=list(classes.names), camera=camera_index, stamp_ns=stamps, time_s=times, labelled=labelled,
        counts=all_counts, uncertainty=np.array(uncertainty, np.float32).reshape(m_count, frames),
        class_uncertainty=class_unc, class_pixels=class_pix,
        model_ms=np.array(model_ms, np.float32).reshape(m_count, frames),
        disagreement=np.array(disagreement, np.float32), wall_s=time.perf_counter() - started, strips=strips,
        info={"unmatched_labels": unmatched_labels,
              "labelled_cameras": sorted(cameras[i].name for i in set(label_topics.values()))})
