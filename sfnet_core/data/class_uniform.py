"""Class-uniform sampling: crops placed on the centroid of a class chosen uniformly among classes.

The authors' released training (``--class_uniform_pct 0.5 --class_uniform_tile 1024``, inherited
from NVIDIA's semantic-segmentation code) makes half of every epoch's crops cover a class picked
uniformly at random, so that rare classes (train, bus, motorcycle...) are seen as often as road.
It is what lifts the released SFNet-R18 from 78.4 to 79.0 val mIoU (authors' README).

Two parts:

* ``CentroidIndex`` - for every training label, split into ``tile`` x ``tile`` tiles, the centre of
  mass of each class present in each tile. Built once (reading every label takes minutes on
  Cityscapes) and cached as ``.npz`` under the cache folder, keyed by the dataset's fingerprint
  (label paths, sizes, modification times, class table), the tile and the class count: a
  changed dataset gets a new key and is re-indexed; an unchanged one is loaded in milliseconds.
* ``epoch_plan`` - the crops of one epoch, a pure function of (index, seed, epoch), so exact
  resume and any number of ranks / workers see the same plan: position ``p`` of the epoch is
  either an ordinary image (a random crop of it) or a (image, centroid) pair.

Differences from the released code, on purpose: tiles at the right/bottom border that are
smaller than ``tile`` are indexed too (the released code drops them, so images smaller than the
tile would never be class-sampled); and the class-centred share is exactly ``round(pct * N)``
crops spread evenly over the classes present (released: ``int(pct * N / C)`` per class, absent
classes' shares dropped), so an epoch always has ``N`` crops. On Cityscapes (19 classes present,
1024x2048 labels, tile 1024) the two agree up to 6 crops per epoch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sfnet_core.errors import DataError
from sfnet_core.io_utils import OutputError, atomic_write

__all__ = ["CentroidIndex", "IndexedDataset", "image_centroids", "load_or_build_index", "epoch_plan",
           "default_cache_dir"]

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the index contents change meaning


class IndexedDataset(Protocol):
    """What the index needs from a training dataset (FolderDataset, CityscapesDataset, SyntheticDataset)."""

    def __len__(self) -> int: ...
    def load_label(self, index: int) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sfnet_ros/class_uniform`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sfnet_ros" / "class_uniform"


def image_centroids(label: np.ndarray, num_classes: int, tile: int) -> np.ndarray:
    """``(K, 3)`` int32 rows ``(class, x, y)``: per tile, the centre of mass of each class present.

    ``label`` (H, W) train ids; values >= ``num_classes`` (the ignore index) are skipped. The
    centre is truncated to whole pixels, like ``int(scipy.ndimage.center_of_mass(...))``.
    """
    rows = []
    height, width = label.shape
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            patch = label[y0:y0 + tile, x0:x0 + tile]
            ids = patch.ravel().astype(np.int64)
            ys, xs = np.indices(patch.shape)
            count = np.bincount(ids, minlength=num_classes)[:num_classes]
            sum_x = np.bincount(ids, weights=xs.ravel(), minlength=num_classes)[:num_classes]
            sum_y = np.bincount(ids, weights=ys.ravel(), minlength=num_classes)[:num_classes]
            for c in np.flatnonzero(count):
                rows.append((c, x0 + int(sum_x[c] / count[c]), y0 + int(sum_y[c] / count[c])))
    return np.asarray(rows, dtype=np.int32).reshape(-1, 3)


@dataclass(frozen=True)
class CentroidIndex:
    """All centroids of a training set: row ``k`` is image ``image[k]``, class ``cls[k]``, point ``xy[k]``."""

    num_images: int
    num_classes: int
    tile: int
    image: np.ndarray  # (K,) int32
    cls: np.ndarray    # (K,) int32
    xy: np.ndarray     # (K, 2) int32, (x, y) in label pixels

    @property
    def classes_present(self) -> np.ndarray:
        return np.unique(self.cls)

    def counts(self) -> np.ndarray:
        """(num_classes,) number of centroids per class (0 = class never labelled)."""
        return np.bincount(self.cls, minlength=self.num_classes)[: self.num_classes]

    def digest(self, key: str) -> str:
        """SHA-256 of the key and every array: what a later run checks before trusting the file."""
        h = hashlib.sha256(f"{key}|{self.num_images}|{self.num_classes}|{self.tile}".encode())
        for array in (self.image, self.cls, self.xy):
            h.update(np.ascontiguousarray(array, dtype=np.int32).tobytes())
        return h.hexdigest()

    def save(self, path: Path, key: str) -> None:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:  # np.savez would append .npz to a str path
            np.savez(f, key=np.array(key), num_images=self.num_images, num_classes=self.num_classes,
                     tile=self.tile, image=self.image, cls=self.cls, xy=self.xy, digest=np.array(self.digest(key)))

    @classmethod
    def load(cls, path: Path, key: str) -> CentroidIndex | None:
        """The index in ``path`` if it was built for ``key`` and its content matches the digest
        recorded when it was written; None when absent, stale, damaged or unreadable (a damaged
        file is rebuilt with a warning: a wrong index would silently skew the sampling)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                index = cls(int(z["num_images"]), int(z["num_classes"]), int(z["tile"]),
                            z["image"].astype(np.int32), z["cls"].astype(np.int32), z["xy"].astype(np.int32))
                recorded = str(z["digest"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # zipfile.BadZipFile (CRC), truncation, a missing array, ...
            log.warning("class-uniform index %s is damaged (%s); building it again", path, exc)
            return None
        if recorded != index.digest(key):
            log.warning("class-uniform index %s does not match the digest recorded when it was written; "
                        "building it again", path)
            return None
        return index


def _key(dataset: IndexedDataset, num_classes: int, tile: int) -> str:
    return hashlib.sha256(
        f"v{_VERSION}|{num_classes}|{tile}|{len(dataset)}|{dataset.fingerprint()}".encode()).hexdigest()


def build_index(dataset: IndexedDataset, num_classes: int, tile: int, threads: int | None = None) -> CentroidIndex:
    """Read every label of ``dataset`` (in threads: decoding releases the GIL) and index it."""
    threads = threads or min(8, os.cpu_count() or 1)

    def one(i: int) -> np.ndarray:
        return image_centroids(dataset.load_label(i), num_classes, tile)

    with ThreadPoolExecutor(threads) as pool:
        per_image = list(pool.map(one, range(len(dataset))))
    image = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(per_image)] or [np.zeros(0, np.int32)])
    rows = np.concatenate(per_image) if per_image else np.zeros((0, 3), np.int32)
    return CentroidIndex(len(dataset), num_classes, tile, image, rows[:, 0].copy(), rows[:, 1:].copy())


def load_or_build_index(dataset: IndexedDataset, num_classes: int, tile: int,
                        cache_dir: str | os.PathLike | None = None) -> tuple[CentroidIndex, Path, bool]:
    """``(index, cache file, built_now)``: the cached index of this exact dataset, or a new one (saved).

    Raises DataError when no label of the dataset holds any class pixel (nothing to sample).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _key(dataset, num_classes, tile)
    path = folder / f"centroids_{key[:24]}.npz"
    index = CentroidIndex.load(path, key) if path.is_file() else None
    built = index is None
    if index is None:
        start = time.perf_counter()
        index = build_index(dataset, num_classes, tile)
        if len(index.cls) == 0:
            raise DataError("class_uniform: the training labels hold no pixel of any class; nothing to sample")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            index.save(path, key)
        except (OSError, OutputError) as exc:  # a read-only or full cache costs time, not correctness
            reason = f"{folder}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            log.warning("class-uniform index not cached (%s); it will be rebuilt next run", reason)
        log.info("class-uniform index: %d centroids of %d classes from %d labels in %.1f s (%s)",
                 len(index.cls), len(index.classes_present), index.num_images, time.perf_counter() - start, path)
    return index, path, built


def epoch_plan(index: CentroidIndex, pct: float, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The crops of ``epoch``: ``(images (N,) int64, centroids (N, 2) int64)``; centroid ``(-1, -1)`` = random crop.

    ``round(pct * N)`` positions are class-centred: the classes present in ``index`` share them
    evenly (the remainder goes to randomly chosen classes), each class drawing its centroids
    without replacement while it has enough (with wrap-around after, as the released
    ``random_sampling``). The other positions are distinct images drawn without replacement.
    A pure function of its arguments.
    """
    n = index.num_images
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0xC1A55]))
    present = index.classes_present
    k = int(round(pct * n)) if len(present) else 0
    per_class = np.full(len(present), k // max(len(present), 1), np.int64)
    per_class[rng.permutation(len(present))[: k - int(per_class.sum())]] += 1
    images = np.empty(n, np.int64)
    centroids = np.full((n, 2), -1, np.int64)
    images[: n - k] = rng.permutation(n)[: n - k]
    pos = n - k
    for c, m in zip(present, per_class):
        rows = np.flatnonzero(index.cls == c)
        pick = rows[rng.permutation(len(rows))[np.arange(m) % len(rows)]]
        images[pos:pos + m] = index.image[pick]
        centroids[pos:pos + m] = index.xy[pick]
        pos += m
    return images, centroids


PlanFn = Callable[[int], tuple[np.ndarray, np.ndarray]]
