"""Choosing the frames worth labelling and pre-labelling them (sfnet-extract --select / --prelabel)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from node_harness import write_test_checkpoint

from sfnet_ros.tools import extract
from sfnet_ros.tools.bag_io import BagError, stamp_name
from sfnet_ros.tools.select_frames import Candidate, choose, frame_uncertainty
from sfnet_ros.tools.synthetic_bag import frame_stamps, write_synthetic_bag

H, W, N = 64, 128, 10


def _candidates(scores: list[float]) -> list[Candidate]:
    stamps = frame_stamps(len(scores), 10.0)
    return [Candidate(s, (s - stamps[0]) / 1e9, score) for s, score in zip(stamps, scores)]


def test_choose_by_uncertainty_skips_near_copies_and_stride_spreads() -> None:
    frames = _candidates([0.1, 0.9, 0.85, 0.2, 0.3, 0.8, 0.1, 0.05, 0.7, 0.6])
    picked = choose(frames, 3, "uncertainty", min_gap_s=0.25)
    assert [round(c.score, 2) for c in picked] == [0.9, 0.8, 0.7]  # 0.85 is 0.1 s from 0.9: a near copy
    assert [round(c.score, 2) for c in choose(frames, 3, "uncertainty", min_gap_s=0.05)] == [0.9, 0.85, 0.8]
    assert [c.score for c in choose(frames, 9, "uncertainty", min_gap_s=0.45)] == [0.9, 0.7]  # fewer: the gaps
    assert [c.time_s for c in choose(frames, 4, "stride")] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    with pytest.raises(BagError, match="no candidate"):
        choose([], 3, "stride")
    with pytest.raises(BagError, match="needs every candidate scored"):
        choose(_candidates([float("nan")]), 1, "uncertainty")


def test_frame_uncertainty_is_one_minus_margin_over_valid_or_focus_pixels() -> None:
    labels = np.array([[0, 0, 1, 255]], np.uint8)
    margin = np.array([[255, 0, 51, 0]], np.uint8)  # sure, a tie, 0.2, outside the frame
    assert frame_uncertainty(labels, margin) == pytest.approx(1 - (1.0 + 0.0 + 0.2) / 3)
    assert frame_uncertainty(labels, margin, focus=[1]) == pytest.approx(0.8)
    assert frame_uncertainty(labels, margin, focus=[5]) == 0.0  # the class is not in the frame


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    d = tmp_path_factory.mktemp("select")
    bag, images, _ = write_synthetic_bag(d / "drive.mcap", N, H, W, seed=3)
    return bag, write_test_checkpoint(d / "model.pt", model_name="sfnet_shufflenetv2"), images


def test_select_uncertain_frames_and_prelabel_them(drive: tuple, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from sfnet_core.inference import Segmenter

    bag, checkpoint, images = drive
    code = extract.main(["--no-progress", "--bag", str(bag), "--image-topic", "/front/image_raw", "--out",
                         str(tmp_path / "picked"), "--checkpoint", str(checkpoint), "--select", "uncertainty",
                         "--budget", "3", "--min-gap", "0.25", "--prelabel", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["images"] == 3 and summary["labels"] == 3 and summary["prelabelled"] == 3
    rows = list(csv.DictReader((tmp_path / "picked" / "selection.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3] and all(r["method"] == "uncertainty" for r in rows)
    # the scores: 1 - margin of the same model, independently; the picks the most uncertain, spaced
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False)
    stamps = frame_stamps(N, 10.0)
    expected = []
    for stamp, image in zip(stamps, images):
        result = segmenter.segment(image, return_confidence="margin")
        expected.append((frame_uncertainty(result.labels, result.confidence), stamp, result.labels))
    for row in rows:
        stamp = next(s for s in stamps if stamp_name(s) == row["stamp"])
        score, _, labels = next(e for e in expected if e[1] == stamp)
        assert float(row["score"]) == pytest.approx(score, abs=1e-6)
        draft = cv2.imread(str(tmp_path / "picked" / row["file"].replace("images", "labels")), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(draft, labels)  # the draft is the model's labels
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    picked = sorted(next(s for s in stamps if stamp_name(s) == r["stamp"]) for r in rows)
    assert all(b - a >= 250_000_000 for a, b in zip(picked, picked[1:]))
    best = max(expected, key=lambda e: e[0])
    assert rows[0]["stamp"] == stamp_name(best[1])  # the most uncertain frame of the drive comes first


def test_stride_selection_and_ground_truth_wins_over_drafts(drive: tuple, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    bag, checkpoint, _ = drive
    code = extract.main(["--no-progress", "--bag", str(bag), "--image-topic", "/front/image_raw", "--label-topic",
                         "/front/labels", "--out", str(tmp_path / "stride"), "--select", "stride", "--budget", "4",
                         "--prelabel", "--checkpoint", str(checkpoint), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["images"] == 4 and summary["labels"] == 4 and summary["prelabelled"] == 0  # the bag's labels
    rows = list(csv.DictReader((tmp_path / "stride" / "selection.csv").open()))
    stamps = frame_stamps(N, 10.0)
    assert [r["stamp"] for r in rows] == [stamp_name(stamps[i]) for i in (0, 3, 6, 9)] and rows[0]["score"] == ""
