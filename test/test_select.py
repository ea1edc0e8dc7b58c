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


def test_choose_over_several_bags_gap_within_a_bag_only_and_stride_in_proportion() -> None:
    stamps = frame_stamps(6, 10.0)  # both drives start at the same header stamp
    a = [Candidate(s, (s - stamps[0]) / 1e9, score, 0) for s, score in zip(stamps, [0.9, 0.8, 0.1, 0.2, 0.3, 0.1])]
    b = [Candidate(s, (s - stamps[0]) / 1e9, score, 1) for s, score in zip(stamps[:3], [0.85, 0.05, 0.7])]
    picked = choose(b + a, 3, "uncertainty", min_gap_s=0.25)
    # 0.85 has the stamp of 0.9 but is of the other drive: kept; 0.8 and 0.7 are near copies in their own drive
    assert [(c.bag, c.score) for c in picked] == [(0, 0.9), (1, 0.85), (0, 0.3)]
    # stride: evenly over the candidates in (bag, time) order, each bag in proportion to its candidates
    assert [(c.bag, c.stamp) for c in choose(b + a, 3, "stride")] == [(0, stamps[0]), (0, stamps[4]), (1, stamps[2])]
    assert [(c.bag, c.stamp) for c in choose(b + a, 5, "stride")] == \
        [(0, stamps[0]), (0, stamps[2]), (0, stamps[4]), (1, stamps[0]), (1, stamps[2])]


@pytest.fixture(scope="module")
def two_drives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Path, list, list]]]:
    """Two drives in drives/day1/, drives/day2/ with the same header stamps, and a list file naming them."""
    d = tmp_path_factory.mktemp("select_two")
    drives = [write_synthetic_bag(d / "drives" / day / "drive.mcap", 4, 32, 64, seed=seed, label_topic=None)
              for day, seed in (("day1", 5), ("day2", 6))]
    (d / "bags.txt").write_text("# the week's drives\ndrives/day1/drive.mcap\ndrives/day2/drive.mcap\n")
    return d, drives


def test_one_budget_over_several_bags(drive: tuple, two_drives: tuple, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """--bag-list: the most uncertain frames of all the drives, wherever they are; --min-gap
    within a drive only; drafts of the right drive's frames."""
    from sfnet_core.inference import Segmenter

    _, checkpoint, _ = drive
    d, drives = two_drives
    stamps = frame_stamps(4, 10.0)
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False)
    expected = {}  # (tag, stamp name) -> (score, the model's labels)
    for tag, (_, images, _) in zip(("day1-drive", "day2-drive"), drives):
        for stamp, image in zip(stamps, images):
            result = segmenter.segment(image, return_confidence="margin")
            expected[tag, stamp_name(stamp)] = (frame_uncertainty(result.labels, result.confidence), result.labels)
    ranked = sorted(expected, key=lambda k: -expected[k][0])
    assert {tag for tag, _ in ranked[:3]} == {"day1-drive", "day2-drive"}  # the budget is split between the drives

    def select(out: Path, min_gap: str) -> list[dict]:
        code = extract.main(["--no-progress", "--bag-list", str(d / "bags.txt"), "--image-topic", "/front/image_raw",
                             "--out", str(out), "--checkpoint", str(checkpoint), "--select", "uncertainty",
                             "--budget", "3", "--min-gap", min_gap, "--prelabel", "--threads", "1"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads(captured.out)
        assert summary["bags"] == 2 and summary["prelabelled"] == summary["images"] == summary["selection"]["selected"]
        return list(csv.DictReader((out / "selection.csv").open()))

    rows = select(tmp_path / "close", "0.05")  # frames are 0.1 s apart: no gap rule in the way
    # the bag as --bag-list names it (relative to the list file), the file named after bag and stamp
    assert [(r["file"], r["bag"]) for r in rows] == [
        (f"images/{tag}_{stamp}.png", f"{d}/drives/{tag.replace('-', '/')}.mcap") for tag, stamp in ranked[:3]]
    for row, key in zip(rows, ranked):
        assert float(row["score"]) == pytest.approx(expected[key][0], abs=1e-6) and row["stamp"] == key[1]
        assert row["time_s"] == f"{(next(s for s in stamps if stamp_name(s) == key[1]) - stamps[0]) / 1e9:.3f}"
        draft = cv2.imread(str(tmp_path / "close" / row["file"].replace("images", "labels")), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(draft, expected[key][1])  # the model's labels of that drive's frame
    # a gap longer than the drives: one frame of each, though their stamps are within 0.3 s
    rows = select(tmp_path / "apart", "10")
    best = [next(k for k in ranked if k[0] == tag) for tag in ("day1-drive", "day2-drive")]
    assert [r["file"] for r in rows] == [f"images/{tag}_{stamp}.png"
                                         for tag, stamp in sorted(best, key=lambda k: -expected[k][0])]
