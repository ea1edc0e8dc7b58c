"""Which frames of one or many bags are worth labelling: by the model's uncertainty, or by a fixed stride.

``score_frames`` runs a model over a bag's candidate frames (those ``--every`` / ``--rate`` keep)
and gives each its uncertainty: the mean over its pixels of ``1 - margin``, the margin being the
difference of the two largest softmax probabilities (1 where the network cannot tell two classes
apart); with ``focus`` classes, only over the pixels predicted as one of them (a frame unsure
about the rare class, not about the sky). ``choose`` picks one budget of frames from the
candidates of all the bags together (each candidate knows its bag: ``Candidate.bag``):

* ``uncertainty``: the most uncertain first, wherever they are, never two of the same bag within
  ``min_gap_s`` seconds of header time of each other (neighbouring frames of a drive are near
  copies: one label of the two is enough), so a second is spent on another moment of the drive;
  frames of different bags are different drives, never near copies, whatever their stamps;
* ``stride``: evenly spaced over the candidates in (bag, time) order, the baseline a team uses
  today: within a bag evenly in time, and each bag gets a share of the budget in proportion to
  its number of candidates.

The ranked list (``selection.csv``: rank, file, bag, topic, stamp, seconds, score) goes with the
dataset, so a labeller knows why each frame is there and in which order to label them.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfnet_ros.tools.bag_io import BagError, BagReader, decode_image, stamp_name

UNLABELED = 255


@dataclass
class Candidate:
    stamp: int
    time_s: float  # header time since the first candidate of its bag
    score: float  # mean (1 - margin) over the frame's (focus) pixels; NaN without a model
    bag: int = 0  # which bag (its index in the list of bags read)


def candidate_stamps(bag: str | os.PathLike, topic: str, every: int, rate_hz: float | None) -> list[int]:
    """Header stamps of the frames ``--every`` / ``--rate`` keep, in bag order (duplicates once)."""
    stamps: list[int] = []
    seen: set[int] = set()
    last: int | None = None
    min_gap_ns = int(1e9 / rate_hz) if rate_hz else 0
    with BagReader(bag) as reader:
        reader.check_topic(topic)
        for index, m in enumerate(reader.messages([topic])):
            stamp = m.header_ns()
            if index % every or (last is not None and stamp - last < min_gap_ns) or stamp in seen:
                continue
            seen.add(stamp)
            stamps.append(stamp)
            last = stamp
    return stamps


def frame_uncertainty(labels: np.ndarray, margin: np.ndarray, focus: Sequence[int] = ()) -> float:
    """Mean ``1 - margin`` over the valid pixels (predicted as a ``focus`` class, when given)."""
    valid = labels != UNLABELED
    if focus:
        valid &= np.isin(labels, np.asarray(focus, labels.dtype))
    if not valid.any():
        return 0.0
    return float(1.0 - margin[valid].astype(np.float64).mean() / 255.0)


def score_frames(bag: str | os.PathLike, topic: str, stamps: Sequence[int], segmenter: Any, focus: Sequence[int] = (),
                 batch_size: int = 4, progress: Callable[[int], None] | None = None,
                 bag_index: int = 0) -> list[Candidate]:
    """The uncertainty of every frame of ``stamps`` (batches through ``segmenter``); the
    candidates are of bag number ``bag_index``."""
    wanted = set(stamps)
    scores: dict[int, float] = {}
    batch: list[tuple[int, np.ndarray]] = []

    def run() -> None:
        results = segmenter.segment([rgb for _, rgb in batch], return_confidence="margin")
        for (stamp, _), result in zip(batch, results):
            scores[stamp] = frame_uncertainty(result.labels, result.confidence, focus)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    with BagReader(bag) as reader:
        for m in reader.messages([topic]):
            stamp = m.header_ns()
            if stamp in wanted and stamp not in scores and all(s != stamp for s, _ in batch):
                batch.append((stamp, decode_image(m.msg, m.msgtype)))
                if len(batch) >= batch_size:
                    run()
        if batch:
            run()
    first = min(stamps) if stamps else 0
    return [Candidate(s, (s - first) / 1e9, scores.get(s, float("nan")), bag_index) for s in stamps]


def choose(candidates: Sequence[Candidate], budget: int, method: str, min_gap_s: float = 1.0) -> list[Candidate]:
    """``budget`` candidates, ranked (see the module docstring). Fewer when the gap rule leaves
    fewer; a BagError when there are no candidates."""
    if not candidates:
        raise BagError("no candidate frame to select from (--every / --rate kept none)")
    if method == "stride":
        ordered = sorted(candidates, key=lambda c: (c.bag, c.stamp))
        if budget >= len(ordered):
            return ordered
        picks = np.linspace(0, len(ordered) - 1, budget).round().astype(int)
        return [ordered[i] for i in dict.fromkeys(picks.tolist())]
    if method != "uncertainty":
        raise BagError(f"--select: unknown method {method!r} (uncertainty, stride)")
    if any(np.isnan(c.score) for c in candidates):
        raise BagError("--select uncertainty needs every candidate scored (a model: --checkpoint)")
    chosen: list[Candidate] = []
    gap_ns = int(min_gap_s * 1e9)
    for candidate in sorted(candidates, key=lambda c: (-c.score, c.bag, c.stamp)):
        if all(c.bag != candidate.bag or abs(candidate.stamp - c.stamp) >= gap_ns for c in chosen):
            chosen.append(candidate)
            if len(chosen) == budget:
                break
    return chosen


def selection_csv(chosen: Sequence[Candidate], files: dict[tuple[int, int], str],
                  bags: Sequence[str | os.PathLike], topic: str, method: str) -> str:
    """The ranked list: rank, file, bag, topic, stamp, seconds, score, method. ``files``: (bag
    index, stamp) -> the file's path in the dataset; ``bags``: the bags, by index."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "file", "bag", "topic", "stamp", "time_s", "score", "method"])
    for rank, c in enumerate(chosen, 1):
        writer.writerow([rank, files[c.bag, c.stamp], str(bags[c.bag]), topic, stamp_name(c.stamp), f"{c.time_s:.3f}",
                         "" if np.isnan(c.score) else f"{c.score:.6f}", method])
    return out.getvalue()
