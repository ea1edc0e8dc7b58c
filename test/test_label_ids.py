"""``--label-classes`` everywhere a bag's labels are read (issue 20): a bag whose labels hold
Cityscapes label ids (``labelIds``, not train ids) gives, through the class table's ``id_map``,
exactly what the same bag with train ids gives: sfnet-extract's label PNGs, sfnet-bag-eval's
mIoU, sfnet-live-eval's ground truth (and sfnet-fleet-eval's totals: test_fleet_eval.py).
Without the option those label ids are refused, never silently scored as train ids."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from node_harness import REPO_ROOT, write_label_id_bag, write_test_checkpoint

from sfnet_ros.tools import bag_eval, extract, live_eval
from sfnet_ros.tools.bag_io import BagError
from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

CITYSCAPES = REPO_ROOT / "config" / "classes" / "cityscapes.yaml"
TOPICS = ["--image-topic", "/front/image_raw", "--label-topic", "/front/labels"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    d = tmp_path_factory.mktemp("label_ids")
    train_ids, _, labels = write_synthetic_bag(d / "train_ids.mcap", 3, 64, 128, seed=4)
    return train_ids, write_label_id_bag(train_ids, d / "label_ids.mcap"), labels


def test_the_label_id_bag_really_holds_other_values(bags: tuple) -> None:
    from sfnet_ros.tools.bag_io import BagReader, decode_labels

    with BagReader(bags[1]) as reader:
        values = set()
        for topic, msgtype, _, _, msg in reader.decoded_cdr_messages(["/front/labels"]):
            values |= set(np.unique(decode_labels(msg, msgtype, topic)).tolist())
    assert max(values) > 18  # road is 7, sky 23, car 26: not train ids


def test_extract_maps_label_ids_to_train_ids(bags: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, label_ids, labels = bags
    args = ["--no-progress", "--bag", str(label_ids), *TOPICS, "--split", "train"]
    assert extract.main([*args, "--out", str(tmp_path / "mapped"), "--label-classes", str(CITYSCAPES)]) == 0, \
        capsys.readouterr().err
    written = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
               for p in sorted((tmp_path / "mapped" / "labels" / "train").iterdir())]
    assert len(written) == 3 and all(np.array_equal(w, t) for w, t in zip(written, labels))
    from sfnet_core.data.classes import ClassTable

    assert ClassTable.from_yaml(tmp_path / "mapped" / "classes.yaml").id_map is None  # the PNGs hold train ids
    capsys.readouterr()
    assert extract.main([*args, "--out", str(tmp_path / "raw")]) == 2  # label ids as train ids: refused
    assert "are not train ids" in capsys.readouterr().err and not (tmp_path / "raw").exists()


def test_bag_eval_scores_label_ids_like_train_ids(bags: tuple, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    train_ids, label_ids, _ = bags
    checkpoint = write_test_checkpoint(tmp_path / "model.pt", model_name="sfnet_shufflenetv2")
    common = ["--no-progress", *TOPICS, "--checkpoint", str(checkpoint), "--threads", "1", "--backend", "torch"]
    reports = []
    for bag, extra in ((train_ids, []), (label_ids, ["--label-classes", str(CITYSCAPES)])):
        assert bag_eval.main(["--bag", str(bag), *common, *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[1]["matched"] == 3 and reports[1]["per_class"] == reports[0]["per_class"]
    assert bag_eval.main(["--bag", str(label_ids), *common]) == 2
    err = capsys.readouterr().err
    assert "are not train ids" in err and "--label-classes" in err


def test_live_eval_ground_truth_through_the_id_map(bags: tuple) -> None:
    from sfnet_core.data.classes import ClassTable

    train_ids, label_ids, labels = bags
    table = ClassTable.from_yaml(CITYSCAPES)
    _, truth = live_eval._load_ground_truth(label_ids, "/front/image_raw", "/front/labels", 19, 255, "x",
                                            table.label_lut())
    assert all(np.array_equal(got, want) for got, want in zip((truth[s] for s in sorted(truth)), labels))
    with pytest.raises(BagError, match="--label-classes"):
        live_eval._load_ground_truth(label_ids, "/front/image_raw", "/front/labels", 19, 255, "x")
    parser = live_eval.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--bag", "b", "--image-topic", "/i", "--classes", "a.yaml", "--label-classes", "b.yaml"])
