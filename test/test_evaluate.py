"""sfnet-eval: hand-computed confusion matrices, the official Cityscapes script, checkpoint mode."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfnet_core.cli.evaluate_command import main
from sfnet_core.data.classes import ClassTable
from sfnet_core.evaluation.scoring import match_key

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _three_classes(tmp_path: Path) -> Path:
    p = tmp_path / "classes.yaml"
    p.write_text(
        "ignore_index: 255\nclasses:\n"
        "  - {name: road, color: [128, 64, 128]}\n"
        "  - {name: car, color: [0, 0, 142]}\n"
        "  - {name: sky, color: [70, 130, 180]}\n"
    )
    return p


def _run(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_pred_dir_matches_hand_computed_confusion(tmp_path: Path, capsys) -> None:
    classes = _three_classes(tmp_path)
    # ground truth / prediction, 255 = ignore (never counted), 7 = an invalid prediction
    gt1 = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pr1 = np.array([[0, 1, 1, 1], [0, 0, 2, 2]], np.uint8)
    gt2 = np.array([[2, 2], [2, 0]], np.uint8)
    pr2 = np.array([[2, 2], [7, 0]], np.uint8)
    _png(tmp_path / "gt" / "a" / "f1_gtFine_labelTrainIds.png", gt1)
    _png(tmp_path / "gt" / "a" / "f1_gtFine_color.png", np.zeros((2, 4, 3), np.uint8))  # must be skipped
    _png(tmp_path / "gt" / "b" / "f2_gtFine_labelTrainIds.png", gt2)
    _png(tmp_path / "gt" / "b" / "f3_gtFine_labelTrainIds.png", gt2)  # no prediction
    _png(tmp_path / "pred" / "f1_leftImg8bit.png", pr1)
    _png(tmp_path / "pred" / "f2_leftImg8bit.png", pr2)
    _png(tmp_path / "pred" / "extra.png", pr2)  # no ground truth
    rc, report, err = _run(
        ["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--classes", str(classes),
         "--json", str(tmp_path / "r.json")], capsys)
    assert rc == 0, err
    # Confusion (rows gt, cols pred; last col = invalid):
    #   road: 0->0 x4 (3 in f1 + 1 in f2), 0->1 x1            -> tp 4, fn 1
    #   car:  1->1 x2, 1->2 x1                                -> tp 2, fn 1, fp(car) = 1 (road->car)
    #   sky:  2->2 x2, 2->invalid x1                          -> tp 2, fn 1, fp(sky) = 1 (car->sky)
    expected = {"road": 4 / 5, "car": 2 / 4, "sky": 2 / 4}
    for name, value in expected.items():
        assert report["per_class"][name] == pytest.approx(value, abs=1e-12)
    assert report["miou"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert report["pixel_accuracy"] == pytest.approx(8 / 11, abs=1e-12)
    assert (report["matched"], report["unmatched_predictions"], report["unmatched_ground_truth"]) == (2, 1, 1)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert "f3_gtFine_labelTrainIds.png" in err and "extra.png" in err
    assert "mIoU" in err  # the human-readable table goes to stderr

    rc, _, err = _run(["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"),
                       "--classes", str(classes), "--strict"], capsys)
    assert rc == 2 and "--strict" in err


def test_match_key_strips_cityscapes_suffixes() -> None:
    assert match_key(Path("x/frankfurt_000000_000294_leftImg8bit.png")) == "frankfurt_000000_000294"
    assert match_key(Path("frankfurt_000000_000294_gtFine_labelIds.png")) == "frankfurt_000000_000294"
    assert match_key(Path("frankfurt_000000_000294_gtFine_labelTrainIds.png")) == "frankfurt_000000_000294"
    assert match_key(Path("frame_0001.png")) == "frame_0001"


def test_pred_dir_agrees_with_official_cityscapes_script(tmp_path: Path, capsys) -> None:
    """Random label-id ground truth (incl. void ids) vs noisy predictions, scored by both."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import labels, trainId2label

    table = ClassTable.cityscapes()
    rng = np.random.default_rng(0)
    label_ids = np.array([l.id for l in labels if l.id >= 0])
    train_to_id = np.zeros(256, np.uint8)
    for t in range(19):
        train_to_id[t] = trainId2label[t].id
    train_to_id[255] = 0  # 'unlabeled' (ignored in evaluation)
    pred_files, gt_files = [], []
    for i, city in enumerate(("aachen", "aachen", "bremen")):
        gt = rng.choice(label_ids, size=(24, 40)).astype(np.uint8)
        gt[:8, :8] = 26  # a big car blob so IoUs are not all tiny
        truth = table.label_lut()[gt]
        pred = np.where(rng.random(gt.shape) < 0.6, truth, rng.integers(0, 19, gt.shape)).astype(np.uint8)
        pred[truth == 255] = rng.integers(0, 19, int((truth == 255).sum()))
        stem = f"{city}_{i:06d}_000019"
        gt_path = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        _png(gt_path, gt)
        _png(tmp_path / "pred" / f"{stem}_leftImg8bit.png", pred)
        _png(tmp_path / "official_pred" / f"{stem}_leftImg8bit.png", train_to_id[pred])  # label ids
        pred_files.append(str(tmp_path / "official_pred" / f"{stem}_leftImg8bit.png"))
        gt_files.append(str(gt_path))

    rc, ours, err = _run(["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gtFine")], capsys)
    assert rc == 0, err
    args = official.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    result = official.evaluateImgLists(pred_files, gt_files, args)
    theirs = result["classScores"]
    for name, value in ours["per_class"].items():
        assert value is not None
        assert value == pytest.approx(theirs[name], abs=1e-6), name
    official_mean = np.nanmean([theirs[n] for n in table.names])
    assert ours["miou"] == pytest.approx(official_mean, abs=1e-6)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PY, "-m", "sfnet_core.cli.evaluate_command", "--pred-dir", str(tmp_path / "missing"),
         "--gt-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr and "not found" in proc.stderr
    assert proc.stdout == ""


def test_checkpoint_modes_and_saved_predictions(tmp_path: Path, capsys) -> None:
    """whole / slide / msf through the CLI; --save-pred files re-scored in pred-dir mode agree."""
    import torch
    import yaml

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.datasets import SyntheticDataset
    from sfnet_core.models import build_model

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {
        "kind": "synthetic", "crop_size": [32, 64], "workers": 0,
        "synthetic": {"train_frames": 4, "val_frames": 2, "height": 64, "width": 128}}}))
    torch.manual_seed(0)
    model = build_model("sfnet_resnet18", 19)
    for m in model.modules():  # non-trivial statistics so the predictions vary across pixels
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.5)
    val = SyntheticDataset(2, 64, 128, seed=0, start=4)
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, model, "sfnet_resnet18", val.classes)
    reports = {}
    for mode, extra in (("whole", []), ("slide", ["--window", "32", "64"]), ("msf", ["--scales", "0.5", "1.0"])):
        save = tmp_path / f"pred_{mode}"
        rc, reports[mode], err = _run(["--config", str(recipe), "--checkpoint", str(ck), "--mode", mode, *extra,
                                       "--save-pred", str(save), "--json", str(tmp_path / f"{mode}.json")], capsys)
        assert rc == 0, err
        report = reports[mode]
        assert report["mode"] == mode and report["images"] == 2 and 0 <= report["miou"] <= 1
        assert sorted(p.name for p in save.iterdir()) == [".sfnet-manifest.json", ".sfnet-predictions",
            "synth_000004.png", "synth_000004_color.png", "synth_000005.png", "synth_000005_color.png"]
        colour = cv2.imread(str(save / "synth_000004_color.png"))
        labels = cv2.imread(str(save / "synth_000004.png"), cv2.IMREAD_UNCHANGED)
        assert colour.shape == (64, 128, 3) and labels.shape == (64, 128)
        assert np.array_equal(colour[:, :, ::-1], val.classes.palette()[labels])
    assert reports["msf"]["flip"] is True and reports["msf"]["scales"] == [0.5, 1.0]
    # an existing prediction folder is refused without --overwrite, replaced with it
    whole = ["--config", str(recipe), "--checkpoint", str(ck), "--save-pred", str(tmp_path / "pred_whole")]
    rc, _, err = _run(whole, capsys)
    assert rc == 2 and "exists" in err and "--overwrite" in err
    rc, _, err = _run([*whole, "--overwrite"], capsys)
    assert rc == 0, err
    assert reports["slide"]["window"] == [32, 64]
    # a folder data set with another class table: the error says how to give the recipe the
    # model's table, and that works
    folder = tmp_path / "folder_data"
    for i in range(2):
        image, label = val.load(i)
        _png(folder / "images" / "val" / f"f{i}.png", image[:, :, ::-1])
        _png(folder / "labels" / "val" / f"f{i}.png", np.minimum(label, 2).astype(np.uint8))
    folder_recipe = tmp_path / "folder_recipe.yaml"
    folder_recipe.write_text(yaml.safe_dump({"data": {
        "kind": "folder", "root": str(folder), "classes": str(_three_classes(tmp_path)), "train_split": None,
        "val_split": "val", "crop_size": [32, 64], "workers": 0}}))
    rc, _, err = _run(["--config", str(folder_recipe), "--checkpoint", str(ck)], capsys)
    assert rc == 2 and "predicts 19 classes but the recipe" in err and "has 3" in err, err
    assert "add data.classes=TABLE.yaml to the command" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(["--config", str(folder_recipe), "--checkpoint", str(ck),
                       f"data.classes={REPO / 'config' / 'classes' / 'cityscapes.yaml'}"], capsys)
    assert rc == 0, err
    # the saved predictions, scored against the ground truth in pred-dir mode, give the same numbers
    for i in range(2):
        _png(tmp_path / "gt" / f"synth_{4 + i:06d}.png", val.load(i)[1])
    rc, rescored, err = _run(["--pred-dir", str(tmp_path / "pred_msf"), "--gt-dir", str(tmp_path / "gt"),
                              "--gt-format", "train"], capsys)
    assert rc == 0, err
    assert rescored["matched"] == 2 and rescored["unmatched_predictions"] == 0
    assert rescored["per_class"] == pytest.approx(reports["msf"]["per_class"], abs=1e-12)
    assert rescored["miou"] == pytest.approx(reports["msf"]["miou"], abs=1e-12)


def test_cli_msf_default_is_the_library_one() -> None:
    """The CLI repeats MSF_SCALES so that parsing a command line does not import torch."""
    from sfnet_core.cli.evaluate_command import MSF_SCALES as CLI_SCALES
    from sfnet_core.evaluation.scoring import MSF_SCALES

    assert tuple(CLI_SCALES) == tuple(MSF_SCALES)
