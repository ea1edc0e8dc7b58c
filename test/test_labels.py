"""sfnet-labels: a dataset's labels to and from CVAT ("Segmentation mask 1.1") and Label Studio
(brush labels), round trips checked against the formats' real implementations, not only our own
reader: datumaro (CVAT's dataset library) imports what we export and exports what we import;
label-studio-converter's brush RLE (the code of Label Studio's SDK) decodes our masks and
encodes the ones we import. And a bad-file table: one line, exit 2, nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfnet_core.cli import labels_command
from sfnet_core.data.classes import ClassTable
from sfnet_core.data.exchange import label_studio

H, W = 48, 64


def _labels(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    code = labels_command.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], ClassTable]:
    """An extract-style dataset: 3 images in images/train, 2 of them labelled."""
    from sfnet_core.data.synthetic_scenes.render import render_scene

    root = tmp_path / "my_data"
    table = ClassTable.cityscapes()
    labels = {}
    for i in range(3):
        image, label = render_scene(seed=i, height=H, width=W)
        key = f"train/frame{i}"
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{key}.png"), image[..., ::-1])
        if i < 2:
            label = label.copy()
            label[:3, :5] = 255  # an ignored corner survives every round trip
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "labels" / f"{key}.png"), label)
            labels[key] = label
    from sfnet_ros.tools.extract import class_template

    (root / "classes.yaml").write_text(class_template(table, "test"))
    return root, labels, table


def _read_labels(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root / "labels").with_suffix("").as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted((root / "labels").rglob("*.png"))}


def test_rle_agrees_with_label_studios_own_codec() -> None:
    from label_studio_converter import brush

    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((300, 300), bool), np.ones((7, 9), bool)]  # 360000 zeros:
    masks[1][150, 150] = True  # runs longer than one chunk (65536 values)
    for mask in masks:
        ours = label_studio.mask_to_rle(mask)
        theirs = brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8))
        decoded = np.reshape(brush.decode_rle(ours), (*mask.shape, 4))[..., 3]
        assert np.array_equal(decoded > 127, mask)  # Label Studio's decoder reads what we write
        assert np.array_equal(label_studio.rle_to_mask(theirs, *mask.shape), mask)  # and we read what it writes
        assert np.array_equal(label_studio.rle_to_mask(ours, *mask.shape), mask)


def test_cvat_round_trip_through_datumaro(dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datumaro as dm

    root, labels, table = dataset
    code, err = _labels(capsys, "export", root, "--format", "cvat", "--out", tmp_path / "cvat")
    assert code == 0, err
    imported = dm.Dataset.import_from(str(tmp_path / "cvat"), "voc_segmentation")
    names = [c.name for c in imported.categories()[dm.AnnotationType.label]]
    assert names == ["background", *table.names]
    for item in imported:
        seen = np.full((H, W), 255, np.uint8)
        for mask in item.annotations:
            seen[mask.image.astype(bool)] = 255 if names[mask.label] == "background" else table.index(names[mask.label])
        assert np.array_equal(seen, labels[item.id]), item.id
    # corrections made "in CVAT": datumaro writes them in the same format, sfnet-labels reads them back
    corrected = {key: np.where(label == table.index("car"), table.index("truck"), label).astype(np.uint8)
                 for key, label in labels.items()}
    items = [dm.DatasetItem(id=key, media=dm.Image.from_file(str(root / "images" / f"{key}.png")), annotations=[
        dm.Mask(image=(label == c), label=names.index(table.names[c])) for c in np.unique(label) if c != 255])
        for key, label in corrected.items()]
    categories = {dm.AnnotationType.label: dm.LabelCategories.from_iterable(names),
                  dm.AnnotationType.mask: dm.MaskCategories(
                      {i: tuple(c) for i, c in enumerate([(0, 0, 0), *table.colors])})}
    dm.Dataset.from_iterable(items, categories=categories).export(str(tmp_path / "from_cvat"), "voc_segmentation",
                                                                  save_media=True)
    code, err = _labels(capsys, "import", tmp_path / "from_cvat", "--format", "cvat", "--into", root)
    assert code == 2 and "pass --overwrite" in err  # the drafts are never replaced silently
    assert all(np.array_equal(_read_labels(root)[k], v) for k, v in labels.items())
    code, err = _labels(capsys, "import", tmp_path / "from_cvat", "--format", "cvat", "--into", root, "--overwrite")
    assert code == 0, err
    assert {k: v.tolist() for k, v in _read_labels(root).items()} == {k: v.tolist() for k, v in corrected.items()}


def test_label_studio_round_trip(dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from label_studio_converter import brush

    root, labels, table = dataset
    code, err = _labels(capsys, "export", root, "--format", "label-studio", "--out", tmp_path / "ls",
                        "--url-prefix", "my_data/")
    assert code == 0, err
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=my_data/images/train/frame{i}.png"
                                                   for i in range(3)]
    assert "predictions" not in tasks[2]  # an unlabelled image: a task to label from scratch
    assert 'BrushLabels name="tag" toName="image"' in (tmp_path / "ls" / "label_config.xml").read_text()
    for t in tasks[:2]:  # the drafts, decoded by Label Studio's own code
        draft = np.full((H, W), 255, np.uint8)
        for result in t["predictions"][0]["result"]:
            mask = np.reshape(brush.decode_rle(result["value"]["rle"]), (H, W, 4))[..., 3] > 127
            draft[mask] = table.index(result["value"]["brushlabels"][0])
        assert np.array_equal(draft, labels[t["data"]["sfnet_frame"]])
    # a labeller's corrections, as Label Studio exports them: annotations, masks from its encoder
    corrected = labels["train/frame0"].copy()
    corrected[10:20, 10:30] = table.index("person")
    tasks[0]["annotations"] = [{"id": 1, "was_cancelled": False, "result": [
        {"type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W, "original_height": H,
         "value": {"format": "rle", "brushlabels": [table.names[c]],
                   "rle": brush.mask2rle(np.where(corrected == c, 255, 0).astype(np.uint8))}}
        for c in np.unique(corrected) if c != 255]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, err = _labels(capsys, "import", tmp_path / "export.json", "--format", "label-studio", "--into", root,
                        "--overwrite")
    assert code == 0, err
    back = _read_labels(root)
    assert np.array_equal(back["train/frame0"], corrected) and np.array_equal(back["train/frame1"],
                                                                              labels["train/frame1"])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_bad_files_are_one_line_exit_2_and_nothing_written(dataset: tuple, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    root, labels, table = dataset
    assert _labels(capsys, "export", root, "--format", "cvat", "--out", tmp_path / "cvat")[0] == 0
    assert _labels(capsys, "export", root, "--format", "label-studio", "--out", tmp_path / "ls")[0] == 0
    capsys.readouterr()

    def cvat_case(edit):
        case = tmp_path / f"cvat_case{len(list(tmp_path.glob('cvat_case*')))}"
        shutil.copytree(tmp_path / "cvat", case)
        edit(case)
        return case

    def ls_case(edit):
        case = tmp_path / f"ls_case{len(list(tmp_path.glob('ls_case*')))}.json"
        shutil.copy(tmp_path / "ls" / "tasks.json", case)
        _edit_json(case, edit)
        return case

    png = "SegmentationClass/train/frame0.png"

    def small_png(case: Path) -> None:
        from PIL import Image

        Image.open(case / png).resize((W // 2, H // 2)).save(case / png)

    def unknown_colour(case: Path) -> None:
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[...] = (1, 2, 3)
        cv2.imwrite(str(case / png), rgb)

    def first_result(data: list) -> dict:
        return data[0]["predictions"][0]["result"][0]

    table_cases = [
        ("cvat", cvat_case(lambda c: (c / "labelmap.txt").write_text("background:0,0,0::\nunicorn:1,2,3::\n")),
         "label 'unicorn' is not a class"),
        ("cvat", cvat_case(lambda c: (c / "labelmap.txt").write_text("road:128,64\n")), "expected name:r,g,b::"),
        ("cvat", cvat_case(lambda c: (c / "labelmap.txt").unlink()), "labelmap.txt: missing"),
        ("cvat", cvat_case(small_png), "32x24 but its image is 64x48"),
        ("cvat", cvat_case(unknown_colour), "colour(s) (3,2,1) are in no line of labelmap.txt"),
        ("cvat", cvat_case(lambda c: (c / png).write_bytes(b"not a png")), "not a readable mask PNG"),
        ("cvat", cvat_case(lambda c: shutil.copy(c / png, c / "SegmentationClass/train/nine.png")),
         "'train/nine' is not an image of"),
        ("cvat", cvat_case(lambda c: shutil.rmtree(c / "SegmentationClass")), "no SegmentationClass/ folder"),
        ("label-studio", ls_case(lambda d: first_result(d)["value"].update(brushlabels=["unicorn"])),
         "brush label ['unicorn'] is not one class"),
        ("label-studio", ls_case(lambda d: first_result(d).update(original_width=W + 1)),
         "a mask of 65x48 for an image of 64x48"),
        ("label-studio", ls_case(lambda d: first_result(d)["value"].update(
            rle=first_result(d)["value"]["rle"][:-5])), "the RLE ends early"),
        ("label-studio", ls_case(lambda d: first_result(d)["value"].update(rle="abc")), "not a list of byte values"),
        ("label-studio", ls_case(lambda d: d[0]["data"].pop("sfnet_frame")), "without data.sfnet_frame"),
        ("label-studio", ls_case(lambda d: d[0]["data"].update(sfnet_frame="../../etc/x")),
         "is not a frame name of the dataset"),
        ("label-studio", ls_case(lambda d: d.__setitem__(0, "not a task")), "a task is not an object"),
        ("label-studio", ls_case(lambda d: d.clear()), "holds no label"),
    ]
    (tmp_path / "not_json.json").write_text("{ not json")
    table_cases.append(("label-studio", tmp_path / "not_json.json", "not a Label Studio JSON export"))
    before = {k: v.tobytes() for k, v in _read_labels(root).items()}
    for fmt, source, expected in table_cases:
        code, err = _labels(capsys, "import", source, "--format", fmt, "--into", root, "--overwrite")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sfnet-labels: error: "), (source, err)
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in err
        assert {k: v.tobytes() for k, v in _read_labels(root).items()} == before, source  # nothing written
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_merge_adds_labelled_frames_and_refuses_what_would_change_meaning(
        dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, labels, table = dataset
    from sfnet_ros.tools.extract import class_template

    new = tmp_path / "to_label"  # two labelled frames, as sfnet-extract --split train writes them
    for i in (7, 8):
        image, label = _scene(i)
        (new / "images" / "train").mkdir(parents=True, exist_ok=True)
        (new / "labels" / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(new / "images" / "train" / f"n{i}.png"), image)
        cv2.imwrite(str(new / "labels" / "train" / f"n{i}.png"), label)
    (new / "classes.yaml").write_text(class_template(table, "test"))
    before = _tree(root)

    # refused, nothing written: another class table, a frame without its label, a clash, itself
    other = tmp_path / "other_table"
    shutil.copytree(new, other)
    (other / "classes.yaml").write_text(class_template(ClassTable(names=("road", "car"), colors=((1, 1, 1), (2, 2, 2))),
                                                       "test"))
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(new, unlabelled)
    (unlabelled / "labels" / "train" / "n8.png").unlink()
    bad_value = tmp_path / "bad_value"
    shutil.copytree(new, bad_value)
    cv2.imwrite(str(bad_value / "labels" / "train" / "n7.png"), np.full((H, W), 40, np.uint8))
    clash = tmp_path / "clash"
    shutil.copytree(new, clash)
    shutil.copy(root / "images" / "train" / "frame0.png", clash / "images" / "train" / "frame0.png")
    shutil.copy(root / "labels" / "train" / "frame0.png", clash / "labels" / "train" / "frame0.png")
    cases = [
        (other, [], "are different class tables (classes road, car vs road, sidewalk"),
        (unlabelled, [], "n8.png: has no label PNG"),
        (bad_value, [], "value(s) 40 are not train ids"),
        (clash, [], "1 frame(s) of"),  # and it suggests --prefix
        (root, [], "are the same folder or one holds the other"),
        (new, ["--split", "../x"], "is not a split folder name"),
        (new, ["--prefix", "a/"], "cannot start a file name"),
        (tmp_path / "missing", [], "no classes.yaml"),
    ]
    for source, extra, expected in cases:
        code, err = _labels(capsys, "merge", source, "--into", root, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sfnet-labels: error: "), (source, err)
        assert expected in lines[0], (expected, lines[0])
        assert _tree(root) == before, source
    with pytest.raises(SystemExit) as usage:
        _labels(capsys, "merge", new, "--into", root, "--format", "cvat")
    assert usage.value.code == 2 and "merge takes no --format" in capsys.readouterr().err

    # merged: the frames under their split, bytes unchanged; the source untouched
    code, err = _labels(capsys, "merge", new, "--into", root)
    assert code == 0, err
    after = _tree(root)
    assert {k: v for k, v in after.items() if k not in before} == {
        f"{kind}/train/n{i}.png": (new / kind / "train" / f"n{i}.png").read_bytes()
        for kind in ("images", "labels") for i in (7, 8)}
    assert all(after[k] == v for k, v in before.items())
    assert not [p for p in root.rglob(".*") if p.name != "classes.yaml"]  # no staging left
    # --split puts them elsewhere; a clash is replaced only with --overwrite, every byte the source's
    code, err = _labels(capsys, "merge", new, "--into", root, "--split", "val")
    assert code == 0 and (root / "labels" / "val" / "n7.png").is_file(), err
    code, err = _labels(capsys, "merge", clash, "--into", root, "--prefix", "b-")  # both kept
    assert code == 0 and "(0 replaced)" in err and (root / "images" / "train" / "b-frame0.png").is_file(), err
    code, err = _labels(capsys, "merge", clash, "--into", root, "--overwrite")
    assert code == 0 and "3 frames" in err and "(3 replaced)" in err, err

    # a file that appears at a target while the frames are staged is never replaced: nothing merged
    from sfnet_core.data.exchange import merge

    real_copy, appeared = merge.shutil.copyfile, root / "labels" / "train" / "c-n8.png"

    def copy_then_appear(src, dst):
        appeared.write_bytes(b"a person's file")
        return real_copy(src, dst)

    before = _tree(root)
    merge.shutil.copyfile = copy_then_appear
    try:
        code, err = _labels(capsys, "merge", new, "--into", root, "--prefix", "c-")
    finally:
        merge.shutil.copyfile = real_copy
    assert code == 2 and "c-n8.png appeared while the frames were being merged" in err, err
    assert _tree(root) == {**before, "labels/train/c-n8.png": b"a person's file"}


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sfnet_core.data.synthetic_scenes.render import render_scene

    image, label = render_scene(seed=seed, height=H, width=W)
    return image[..., ::-1], label
