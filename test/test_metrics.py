"""Confusion matrix and IoU on a small example computed by hand; merging and all_reduce."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfnet_core.evaluation.metrics import ConfusionMatrix
from sfnet_core.evaluation.report_text import format_report

# ground truth / prediction of 8 pixels; the last two are ignored (and predicted anything)
TARGET = [0, 0, 0, 1, 1, 2, 255, 255]
PRED = [0, 0, 1, 1, 2, 2, 0, 1]
# by hand, rows = truth: [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
# IoU0 = 2 / (3 + 2 - 2) = 2/3, IoU1 = 1 / (2 + 2 - 1) = 1/3, IoU2 = 1 / (1 + 2 - 1) = 1/2
MATRIX = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
IOU = [2 / 3, 1 / 3, 1 / 2]


def _cm(num_classes=3, target=TARGET, pred=PRED) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes, ignore_index=255)
    cm.update(torch.tensor(pred).view(2, 4), torch.tensor(target).view(2, 4))
    return cm


def test_hand_computed_example():
    cm = _cm()
    assert cm.mat.tolist() == MATRIX
    m = cm.compute()
    assert m.iou == pytest.approx(IOU)
    assert m.miou == pytest.approx(0.5)
    assert m.pixel_accuracy == pytest.approx(4 / 6)  # ignored pixels do not count
    assert m.accuracy == pytest.approx([2 / 3, 1 / 2, 1])
    assert m.mean_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_ignore_pixels_never_count():
    cm = _cm()
    other = [p if t != 255 else 2 for t, p in zip(TARGET, PRED)]  # change only ignored predictions
    assert _cm(pred=other).mat.tolist() == cm.mat.tolist()
    all_ignored = ConfusionMatrix(3)
    all_ignored.update(torch.zeros(4, dtype=torch.long), torch.full((4,), 255))
    m = all_ignored.compute()
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy) and all(math.isnan(v) for v in m.iou)


def test_absent_classes_are_nan_and_excluded():
    m = _cm(num_classes=5).compute()
    assert m.iou[:3] == pytest.approx(IOU)
    assert math.isnan(m.iou[3]) and math.isnan(m.iou[4])
    assert m.miou == pytest.approx(0.5)  # mean over the 3 classes that occur
    # a class predicted but absent from the truth has IoU 0 and does count
    fp = _cm(num_classes=5, pred=[0, 0, 1, 1, 4, 2, 0, 1]).compute()
    assert fp.iou[4] == 0.0 and math.isnan(fp.accuracy[4])
    # rows: [2,1,0,0,0], [0,1,0,0,1], [0,0,1,0,0]: IoU = 2/3, 1/3, 1, nan, 0
    assert fp.iou[:3] == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert fp.miou == pytest.approx((2 / 3 + 1 / 3 + 1 + 0) / 4)


def test_numpy_inputs_scores_and_merge():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(np.array(PRED[:4]), np.array(TARGET[:4]))
    scores = torch.nn.functional.one_hot(torch.tensor(PRED[4:]), 3).float().T.unsqueeze(0)  # (1, 3, 4)
    b.update(scores, torch.tensor(TARGET[4:]).unsqueeze(0))
    assert a.merge(b) is a
    assert a.mat.tolist() == MATRIX
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(4))


def test_bad_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] are neither class ids 0\.\.2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([7, 1]))
    assert cm.mat.sum() == 0


def test_predictions_outside_the_classes_are_false_negatives_only():
    """As the Cityscapes script: a prediction of 255 is wrong for its pixel, nobody's false positive."""
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 3, 255, 1]), torch.tensor([0, 0, 1, 1]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]] and cm.pixels == 4
    m = cm.compute()
    assert m.iou[0] == pytest.approx(0.5) and m.iou[1] == pytest.approx(0.5)
    assert m.pixel_accuracy == pytest.approx(0.5)


def test_to_dict_and_table():
    m = _cm(num_classes=4).compute()
    d = m.to_dict(["road", "car", "sky", "bus"])
    assert d["per_class"]["bus"] is None and d["per_class"]["car"] == pytest.approx(1 / 3)
    assert d["miou"] == pytest.approx(0.5)
    assert d["num_classes"] == 4 and d["pixels"] == sum(map(sum, _cm(num_classes=4).mat.tolist()))
    table = format_report(d)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU%", "Acc%"]
    assert "car" in table and " 33.3" in table and "mIoU" in table and " 50.0" in table
    assert [l for l in lines if l.startswith("bus")][0].split()[1:] == ["-", "-"]


def _rank(rank: int, world: int, init_file: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        half = slice(0, 4) if rank == 0 else slice(4, 8)
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor(PRED[half]), torch.tensor(TARGET[half]))
        out.put((rank, cm.all_reduce().mat.tolist()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {0: MATRIX, 1: MATRIX}
    # without an initialised process group it is a no-op
    assert _cm().all_reduce().mat.tolist() == MATRIX
