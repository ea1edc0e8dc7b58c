"""Class-uniform sampling (the authors' released --class_uniform_pct): the centroid index, its
cache, the epoch plans, and what the crops of a real training pipeline contain."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sfnet_core.data.class_uniform import (
    CentroidIndex,
    epoch_plan,
    image_centroids,
    load_or_build_index,
)
from sfnet_core.data.classes import ClassTable
from sfnet_core.data.datasets import FolderDataset
from sfnet_core.data.transforms import TrainTransform
from sfnet_core.errors import DataError
from sfnet_core.training.distributed import IterationBatchSampler, SeededDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RARE = (1, 2, 3, 4)  # each image holds one small square of one of these on a background of class 0
H, W, SQUARE = 96, 128, 6


def _classes() -> ClassTable:
    names = ("road", "pole", "sign", "rider", "train")
    return ClassTable(names, tuple((i * 40, 0, 0) for i in range(len(names))))


def _dataset(root: Path, n: int = 24, transform=None) -> FolderDataset:
    """``n`` frames: background class 0, one SQUARE x SQUARE patch of a rare class at a random place."""
    rng = np.random.default_rng(7)
    for split in ("images", "labels"):
        (root / split / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = np.zeros((H, W), np.uint8)
        y, x = int(rng.integers(0, H - SQUARE)), int(rng.integers(0, W - SQUARE))
        label[y:y + SQUARE, x:x + SQUARE] = RARE[i % len(RARE)]
        image = np.full((H, W, 3), 90, np.uint8)
        cv2.imwrite(str(root / "images" / "train" / f"f{i:03d}.png"), image)
        cv2.imwrite(str(root / "labels" / "train" / f"f{i:03d}.png"), label)
    return FolderDataset(root, "train", _classes(), transform)


def test_centroids_per_tile_per_class_ignore_skipped_partial_tiles_kept():
    label = np.full((6, 10), 255, np.uint8)  # ignore everywhere ...
    label[0:2, 0:2] = 1                      # class 1 in tile (0, 0): centre of mass (0.5, 0.5) -> (0, 0)
    label[4, 6:9] = 2                        # class 2 in tile (x 4..7, y 4..5) and the partial tile x 8..9
    rows = sorted(map(tuple, image_centroids(label, num_classes=3, tile=4)))
    # (class, x, y); x of class 2 in tile x0=4: pixels 6, 7 -> 6.5 -> 6; in the border tile x0=8: pixel 8
    assert rows == [(1, 0, 0), (2, 6, 4), (2, 8, 4)]


def test_index_is_built_once_cached_and_rebuilt_when_the_labels_change(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "data", n=8)
    reads = []
    original = FolderDataset.load_label
    monkeypatch.setattr(FolderDataset, "load_label", lambda self, i: reads.append(i) or original(self, i))
    cache = tmp_path / "cache"

    index, path, built = load_or_build_index(ds, 5, 64, cache)
    assert built and path.parent == cache and path.is_file() and sorted(reads) == list(range(8))
    assert set(index.classes_present) == {0, *RARE} and index.num_images == 8
    # 2 tiles of 64 (+ a partial one) across 128 x 96: class 0 appears in every tile of every frame
    assert index.counts()[0] == 8 * 4

    reads.clear()
    again, path2, built2 = load_or_build_index(ds, 5, 64, cache)
    assert not built2 and path2 == path and reads == []  # reused: no label read
    assert np.array_equal(again.xy, index.xy) and np.array_equal(again.cls, index.cls)

    # another tile size or class count is another index; a changed label file is a new dataset
    assert load_or_build_index(ds, 5, 32, cache)[1] != path
    label_file = ds.samples[3][1]
    label = cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)
    label[:8, :8] = 2
    cv2.imwrite(str(label_file), label)
    os.utime(label_file, ns=(1, 1))
    reads.clear()
    changed, path3, built3 = load_or_build_index(FolderDataset(ds.root, "train", _classes()), 5, 64, cache)
    assert built3 and path3 != path and len(reads) == 8
    assert (changed.counts()[2] > index.counts()[2])


def test_a_stale_or_foreign_cache_file_is_not_trusted(tmp_path):
    ds = _dataset(tmp_path / "data", n=4)
    index, path, _ = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    assert CentroidIndex.load(path, "another key") is None
    path.write_bytes(b"not an npz")
    rebuilt, _, built = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    assert built and np.array_equal(rebuilt.xy, index.xy)


def test_a_damaged_or_edited_cache_file_is_rebuilt_with_a_warning(tmp_path, caplog):
    """A flipped byte inside the arrays (the zip's CRC catches it) and an index rewritten with
    other centroids under the right key (only the digest catches it) are both rebuilt."""
    import zipfile

    ds = _dataset(tmp_path / "data", n=4)
    index, path, _ = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("xy.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside the xy array's data
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        rebuilt, _, built = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    assert built and np.array_equal(rebuilt.xy, index.xy) and "is damaged" in caplog.text

    key = str(np.load(path)["key"])
    edited = CentroidIndex(index.num_images, index.num_classes, index.tile, index.image, index.cls, index.xy + 1)
    with open(path, "wb") as f:  # the right key, other centroids, the old digest
        np.savez(f, key=np.array(key), num_images=index.num_images, num_classes=index.num_classes,
                 tile=index.tile, image=edited.image, cls=edited.cls, xy=edited.xy,
                 digest=np.array(index.digest(key)))
    caplog.clear()
    with caplog.at_level("WARNING"):
        rebuilt, _, built = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    assert built and np.array_equal(rebuilt.xy, index.xy) and "does not match the digest" in caplog.text


def test_a_cache_that_cannot_be_written_costs_time_not_the_run(tmp_path, small_disk, fill_small_disk, caplog):
    """The index does not fit the cache's disk (filled up): one warning, the index is used, and no
    staging file is left on the disk."""
    ds = _dataset(tmp_path / "data", n=4)
    expected, _, _ = load_or_build_index(ds, 5, 64, tmp_path / "cache")
    with fill_small_disk(512), caplog.at_level("WARNING"):  # less than the index needs
        index, path, built = load_or_build_index(ds, 5, 64, small_disk / "cache")
    assert built and np.array_equal(index.xy, expected.xy) and np.array_equal(index.cls, expected.cls)
    assert "class-uniform index not cached" in caplog.text and "rebuilt next run" in caplog.text, caplog.text
    assert not path.exists() and list((small_disk / "cache").iterdir()) == []


def test_index_refuses_labels_without_any_class(tmp_path):
    ds = _dataset(tmp_path / "data", n=2)
    for _, label in ds.samples:
        cv2.imwrite(str(label), np.full((H, W), 255, np.uint8))
    with pytest.raises(DataError, match="no pixel of any class"):
        load_or_build_index(FolderDataset(ds.root, "train", _classes()), 5, 64, tmp_path / "cache")


def test_epoch_plan_shares_half_the_crops_evenly_and_is_a_function_of_seed_and_epoch(tmp_path):
    index, _, _ = load_or_build_index(_dataset(tmp_path / "data", n=24), 5, 64, tmp_path / "cache")
    images, centroids = epoch_plan(index, 0.5, seed=3, epoch=0)
    assert images.shape == (24,) and centroids.shape == (24, 2)
    centred = centroids[:, 0] >= 0
    assert centred.sum() == 12  # round(0.5 * 24)
    assert len(set(images[~centred].tolist())) == 12  # the random half: distinct images
    # every centred crop is a centroid of the index; the 5 classes share the 12 crops 3/3/2/2/2
    rows = {(int(i), int(x), int(y)): int(c) for i, c, (x, y) in zip(index.image, index.cls, index.xy)}
    classes = [rows[(int(i), int(x), int(y))] for i, (x, y) in zip(images[centred], centroids[centred])]
    assert sorted(np.bincount(classes, minlength=5).tolist()) == [2, 2, 2, 3, 3]
    same = epoch_plan(index, 0.5, seed=3, epoch=0)
    assert np.array_equal(same[0], images) and np.array_equal(same[1], centroids)
    assert not np.array_equal(epoch_plan(index, 0.5, seed=3, epoch=1)[1], centroids)
    assert (epoch_plan(index, 0.0, seed=3, epoch=0)[1] < 0).all()


def _rare_fraction(ds: FolderDataset, index: CentroidIndex | None, pct: float, iterations: int = 48) -> float:
    """Fraction of the training crops (the real sampler -> SeededDataset -> transform) holding a rare class."""
    plan = partial(epoch_plan, index, pct, 11) if index is not None else None
    sampler = IterationBatchSampler(len(ds), 2, 1, 0, seed=11, start=0, stop=iterations, plan=plan)
    seeded = SeededDataset(ds)
    hits = total = 0
    for batch in sampler:
        for key in batch:
            _, label = seeded[key]
            hits += int(np.isin(label.numpy(), RARE).any())
            total += 1
    return hits / total


def test_class_uniform_crops_hold_rare_classes_about_half_the_time(tmp_path):
    """24 frames, each with one 6x6 square of a rare class; 24x24 crops of 96x128 frames.

    Plain random crops rarely hold the square; with pct 0.5, half the crops sit on a class drawn
    among {road, pole, sign, rider, train}: 4 of 5 of those are rare, plus the random half's luck.
    """
    tf = TrainTransform((24, 24), (0.75, 1.25), flip=True, color_jitter=0.25, blur=True)
    ds = _dataset(tmp_path / "data", n=24, transform=tf)
    index, _, _ = load_or_build_index(ds, 5, 1024, tmp_path / "cache")
    plain = _rare_fraction(ds, None, 0.0)
    uniform = _rare_fraction(ds, index, 0.5)
    assert plain < 0.2
    assert 0.4 <= uniform <= 0.6
    # and the stream is reproducible: same keys, same crops
    keys = next(iter(IterationBatchSampler(len(ds), 2, 1, 0, 11, 5, 6, plan=partial(epoch_plan, index, 0.5, 11))))
    a = [SeededDataset(ds)[k] for k in keys]
    b = [SeededDataset(ds)[k] for k in keys]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_resume_with_class_uniform_jitter_and_blur_is_exact(tmp_path):
    """The released augmentation through the engine: 2 iterations + resume 2 == 4 in one go."""
    from test_engine import tiny_recipe

    from sfnet_core.checkpoint import load_checkpoint
    from sfnet_core.training.config import load_train_config
    from sfnet_core.training.distributed import tensor_digest
    from sfnet_core.training.engine import train

    recipe = tiny_recipe(tmp_path, iterations=4, batch_size=2,
                         data={"color_jitter": 0.25, "blur": True, "scale_range": [0.5, 2.0],
                               "class_uniform": {"pct": 0.5, "tile": 64, "cache_dir": str(tmp_path / "cu")}},
                         runtime={"checkpoint_interval": 1})
    cfg = load_train_config(recipe)
    train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "split", max_iters=2)
    train(cfg, tmp_path / "split", resume=True)
    whole, split = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "split"))
    assert tensor_digest(whole.state_dict) == tensor_digest(split.state_dict)
    log = (tmp_path / "whole" / "train.log").read_text()
    assert "class-uniform sampling: 50% of the crops" in log
    assert len(list((tmp_path / "cu").glob("centroids_*.npz"))) == 1  # built once, reused by the other runs
