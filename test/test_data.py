"""Datasets, bad-data errors, transforms and the data config, on tiny trees written here."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.config import DataConfig
from sfnet_core.data.datasets import CityscapesDataset, FolderDataset, SyntheticDataset
from sfnet_core.data.factory import build_datasets
from sfnet_core.data.transforms import EvalTransform, TrainTransform
from sfnet_core.errors import ConfigError, DataError
from sfnet_core.yaml_config import from_dict

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TABLE = ClassTable(names=("road", "car", "sky"), colors=((128, 64, 128), (0, 0, 142), (70, 130, 180)))
REPO = Path(__file__).resolve().parents[1]


def _write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def _pair(h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (h, w), dtype=np.uint8)
    label[0, 0] = 255
    return image, label


def _folder(tmp_path: Path, names=("a", "b"), split: str | None = "train") -> tuple[Path, dict]:
    root = tmp_path / "ds"
    pairs = {}
    for i, name in enumerate(names):
        image, label = _pair(seed=i)
        sub = Path(split) if split else Path()
        _write_rgb(root / "images" / sub / f"{name}.png", image)
        _write_label(root / "labels" / sub / f"{name}.png", label)
        pairs[name] = (image, label)
    return root, pairs


# ----------------------------------------------------------------------------- folder dataset
def test_folder_dataset_reads_pairs_by_stem(tmp_path):
    root, pairs = _folder(tmp_path, ("b", "a"))
    ds = FolderDataset(root, "train", TABLE)
    assert len(ds) == 2 and [ds.name(i) for i in range(2)] == ["a", "b"]
    image, label = ds[0]
    assert image.dtype == np.uint8 and image.shape == (6, 8, 3) and label.dtype == np.uint8
    assert np.array_equal(image, pairs["a"][0]) and np.array_equal(label, pairs["a"][1])
    # with a transform, tensors come out
    x, y = FolderDataset(root, "train", TABLE, EvalTransform(MEAN, STD))[1]
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(pairs["b"][1]).long())


def test_folder_dataset_flat_layout_and_jpg(tmp_path):
    root, _ = _folder(tmp_path, ("x",), split=None)
    image, _ = _pair()
    cv2.imwrite(str(root / "images" / "y.jpg"), image)
    _write_label(root / "labels" / "y.png", np.zeros((6, 8), np.uint8))
    ds = FolderDataset(root, None, TABLE)
    assert [ds.name(i) for i in range(len(ds))] == ["x", "y"]
    with pytest.raises(DataError, match="images/val: image folder not found"):
        FolderDataset(root, "val", TABLE)


def test_folder_dataset_id_map(tmp_path):
    """Raw label values are remapped by the class table's id_map; unmapped values -> ignore."""
    root = tmp_path / "raw"
    image, _ = _pair(2, 3)
    _write_rgb(root / "images" / "f.png", image)
    _write_label(root / "labels" / "f.png", np.array([[7, 26, 23], [0, 99, 7]], np.uint8))
    table = ClassTable(TABLE.names, TABLE.colors, 255, id_map={7: 0, 26: 1, 23: 2})
    _, label = FolderDataset(root, None, table)[0]
    assert label.tolist() == [[0, 1, 2], [255, 255, 0]]


def test_missing_label_names_the_image(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "labels" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match=r"images/train/b\.png: no label found"):
        FolderDataset(root, "train", TABLE)


def test_truncated_image_names_the_file(tmp_path):
    root, _ = _folder(tmp_path)
    path = root / "images" / "train" / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = FolderDataset(root, "train", TABLE)
    with pytest.raises(DataError, match=r"images/train/a\.png: cannot decode image"):
        ds[0]


def test_size_mismatch_names_the_label(tmp_path):
    root, _ = _folder(tmp_path)
    _write_label(root / "labels" / "train" / "a.png", np.zeros((6, 9), np.uint8))
    with pytest.raises(DataError, match=r"labels/train/a\.png: label size 9x6 .* differs from the image size 8x6"):
        FolderDataset(root, "train", TABLE)[0]


def test_out_of_table_label_value_names_the_file(tmp_path):
    root, _ = _folder(tmp_path)
    label = np.zeros((6, 8), np.uint8)
    label[2, 3] = 3  # 3 classes: 0..2 are train ids, 255 ignore; 3 is neither
    _write_label(root / "labels" / "train" / "b.png", label)
    ds = FolderDataset(root, "train", TABLE)
    ds[0]  # the good sample still loads
    with pytest.raises(DataError, match=r"labels/train/b\.png: label value\(s\) \[3\] are not train ids 0\.\.2"):
        ds[1]


def test_colour_label_is_rejected(tmp_path):
    root, _ = _folder(tmp_path)
    _write_rgb(root / "labels" / "train" / "a.png", _pair()[0])
    with pytest.raises(DataError, match="colour image"):
        FolderDataset(root, "train", TABLE)[0]


# ----------------------------------------------------------------------------- cityscapes
def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    image, _ = _pair(2, 4)
    # labelIds: 7 road, 8 sidewalk, 26 car, 23 sky, 0 unlabeled, 1 ego vehicle, 4 static, 33 bicycle
    label_ids = np.array([[7, 8, 26, 23], [0, 1, 4, 33]], np.uint8)
    for city in ("aachen", "bremen"):
        stem = f"{city}_000000_000019"
        _write_rgb(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", image)
        _write_label(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", label_ids)
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 2 and ds.name(0) == "aachen_000000_000019"
    got_image, label = ds[1]
    assert np.array_equal(got_image, image)
    assert label.tolist() == [[0, 1, 13, 10], [255, 255, 255, 18]]
    assert ds.classes.num_classes == 19
    (root / "gtFine" / "train" / "bremen" / "bremen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="bremen_000000_000019_leftImg8bit.png: no label found"):
        CityscapesDataset(root, "train")
    with pytest.raises(DataError, match="leftImg8bit/val"):
        CityscapesDataset(root, "val")


# ----------------------------------------------------------------------------- transforms
def test_eval_transform_normalises():
    image = np.full((4, 5, 3), 255, np.uint8)
    x, y = EvalTransform(MEAN, STD)(image, np.ones((4, 5), np.uint8))
    assert x.shape == (3, 4, 5) and y.shape == (4, 5) and y.dtype == torch.int64
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))


def test_train_transform_shapes_and_ignore_padding():
    image, label = _pair(10, 12)
    label[label == 255] = 0
    t = TrainTransform((32, 40), scale_range=(1.0, 1.0), flip=False, mean=MEAN, std=STD,
                       generator=torch.Generator().manual_seed(0))
    x, y = t(image, label)
    assert x.shape == (3, 32, 40) and x.dtype == torch.float32 and y.shape == (32, 40) and y.dtype == torch.int64
    # the 10x12 image sits in the top-left corner; the rest is padding: label ignore, image mean (0)
    assert torch.equal(y[:10, :12], torch.from_numpy(label).long())
    assert (y[10:] == 255).all() and (y[:, 12:] == 255).all()
    assert x[:, 10:].abs().max() < 0.02 and x[:, :, 12:].abs().max() < 0.02


def test_train_transform_scale_and_nearest_labels():
    image, label = _pair(40, 60)
    t = TrainTransform((20, 20), scale_range=(2.0, 2.0), flip=False, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        x, y = t(image, label)
        assert x.shape == (3, 20, 20)
        assert set(y.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended ids


def test_flip_moves_image_and_label_together():
    # a label that equals a function of the image: red channel 0/100/200 <-> class 0/1/2
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, (16, 16), dtype=np.uint8)
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = label * 100
    flips = 0
    for seed in range(8):
        t = TrainTransform((16, 16), scale_range=(1.0, 1.0), flip=True, mean=(0, 0, 0), std=(1, 1, 1),
                           generator=torch.Generator().manual_seed(seed))
        x, y = t(image, label)
        red = (x[0] * 255).round().long()
        assert torch.equal(red, y * 100)  # still consistent after the flip
        flips += int(torch.equal(y, torch.from_numpy(label[:, ::-1].copy()).long()))
    assert 0 < flips < 8  # both outcomes happened


def test_train_transform_is_deterministic_under_torch_seed():
    image, label = _pair(30, 40)
    t = TrainTransform((24, 24), color_jitter=0.25, blur=True)
    torch.manual_seed(5)
    a = t(image, label)
    torch.manual_seed(5)
    b = t(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = t(image, label)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("options", [{"color_jitter": 0.25}, {"blur": True}], ids=["jitter", "blur"])
def test_colour_jitter_and_blur_change_image_only(options):
    image, label = _pair(16, 16)
    image = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)  # texture to blur
    plain = TrainTransform((16, 16), (1.0, 1.0), flip=False, generator=torch.Generator().manual_seed(2))
    other = TrainTransform((16, 16), (1.0, 1.0), flip=False, generator=torch.Generator().manual_seed(2), **options)
    (x0, y0), (x1, y1) = plain(image, label), other(image, label)
    assert torch.equal(y0, y1) and not torch.allclose(x0, x1)


def test_colour_jitter_follows_the_released_factors():
    """Brightness alone (other factors 1) scales the image: jitter j=0.25 stays within [0.75, 1.25]."""
    grey = np.full((8, 8, 3), 100, np.uint8)
    label = np.zeros((8, 8), np.uint8)
    t = TrainTransform((8, 8), (1.0, 1.0), flip=False, color_jitter=0.25, mean=(0, 0, 0), std=(1, 1, 1),
                       generator=torch.Generator().manual_seed(0))
    values = [float(t(grey, label)[0].mean()) * 255 for _ in range(40)]
    # a grey image keeps its grey under contrast / saturation / hue: only brightness moves it
    assert 74 <= min(values) < 90 and 110 < max(values) <= 126


def test_crop_covers_the_given_point_at_any_scale():
    image, label = _pair(40, 60)
    t = TrainTransform((16, 16), (0.5, 2.0), flip=False, generator=torch.Generator().manual_seed(3))
    label = np.zeros((40, 60), np.uint8)
    label[30:34, 50:54] = 7  # a small object near the bottom right corner
    hits = sum(bool((t(image, label, centroid=(51, 31))[1] == 7).any()) for _ in range(30))
    misses = sum(bool((t(image, label)[1] == 7).any()) for _ in range(30))
    assert hits == 30 and misses < 20


# ----------------------------------------------------------------------------- config
def test_data_config_validation():
    with pytest.raises(ConfigError, match=r"x\.yaml: kind: expected one of"):
        from_dict(DataConfig, {"kind": "kitti"}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: scale_range: need 0 < min <= max"):
        from_dict(DataConfig, {"scale_range": [2.0, 1.0]}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: crop_size: must be positive"):
        from_dict(DataConfig, {"crop_size": [0, 64]}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: root: required for kind 'folder'"):
        from_dict(DataConfig, {"kind": "folder", "root": None}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: synthetic\.height: expected an integer"):
        from_dict(DataConfig, {"synthetic": {"height": "big"}}, "x.yaml")


def test_build_datasets_folder(tmp_path):
    root, _ = _folder(tmp_path)
    _folder(tmp_path, ("c",), split="val")
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [4, 5, 6]}\n"
        "  - {name: sky, color: [7, 8, 9]}\n")
    cfg = from_dict(DataConfig, {"kind": "folder", "root": str(root), "crop_size": [4, 4]}, "x.yaml")
    train, val, classes = build_datasets(cfg, MEAN, STD)
    assert classes.names == ("road", "car", "sky") and len(train) == 2 and len(val) == 1
    assert train[0][0].shape == (3, 4, 4) and val[0][0].shape == (3, 6, 8)
    (root / "classes.yaml").unlink()
    with pytest.raises(DataError, match="classes.yaml: class table not found"):
        build_datasets(cfg, MEAN, STD)


def test_build_datasets_synthetic_on_the_fly_and_cached(tmp_path):
    syn = {"train_frames": 3, "val_frames": 2, "height": 32, "width": 64, "seed": 4}
    cfg = from_dict(DataConfig, {"kind": "synthetic", "crop_size": [16, 16], "synthetic": syn}, "x.yaml")
    train, val, classes = build_datasets(cfg, MEAN, STD)
    assert isinstance(train, SyntheticDataset) and len(train) == 3 and len(val) == 2
    assert classes.num_classes == 19 and classes.id_map is None
    x, y = train[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    cached_cfg = from_dict(DataConfig, {"kind": "synthetic", "crop_size": [16, 16],
                                        "synthetic": {**syn, "cache_dir": str(tmp_path / "cache")}}, "x.yaml")
    ctrain, cval, _ = build_datasets(cached_cfg, MEAN, STD)
    assert len(ctrain) == 3 and len(cval) == 2
    assert torch.equal(cval[1][1], val[1][1]) and torch.equal(cval[1][0], val[1][0])
    stamp = (tmp_path / "cache" / ".sfnet_synthetic").stat().st_mtime_ns
    build_datasets(cached_cfg, MEAN, STD)  # reused, not rewritten
    assert (tmp_path / "cache" / ".sfnet_synthetic").stat().st_mtime_ns == stamp


def test_camvid_class_table():
    table = ClassTable.from_yaml(REPO / "config" / "classes" / "camvid.yaml")
    assert table.num_classes == 11 and table.ignore_index == 255
    assert table.names[0] == "sky" and table.colors[table.index("road")] == (128, 64, 128)
    lut = table.label_lut()
    assert lut[11] == 255 and lut[3] == table.index("road")
