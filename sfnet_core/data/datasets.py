"""Segmentation datasets: Cityscapes, a generic folder layout, and on-the-fly synthetic scenes.

Every dataset returns ``transform(image, label)`` where ``image`` is (H, W, 3) uint8 RGB and
``label`` (H, W) uint8 train ids (``ignore_index`` = unlabelled); without a transform the numpy
pair itself. Files are listed when the dataset is built (missing labels fail early) and read
lazily; anything wrong with a file raises ``DataError`` naming it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.synthetic_scenes import dataset_writer
from sfnet_core.data.synthetic_scenes.arguments import MIN_SIZE
from sfnet_core.data.synthetic_scenes.render import frame_seed, render_scene
from sfnet_core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
# (image, label) -> sample; the training transform also takes a crop centroid (x, y) as a third argument.
Transform = Callable[..., Any]
_GENERATOR = Path(dataset_writer.__file__).parent  # the synthetic_scenes package: its code decides the pixels


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB; DataError naming ``path`` when it is missing, truncated or not an image."""
    image = _decode(Path(path), cv2.IMREAD_COLOR, "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    """cv2.imdecode of a file read with numpy (works for any path encoding); DataError naming it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    decoded = cv2.imdecode(data, flags) if data.size else None
    if decoded is None:
        raise DataError(f"{path}: cannot decode {what} (truncated, empty or not an image file)")
    return decoded


def read_label(path: str | os.PathLike, classes: ClassTable, image_shape: tuple[int, int] | None = None,
               image_path: str | os.PathLike | None = None) -> np.ndarray:
    """(H, W) uint8 train ids from a single-channel PNG of class ids (raw ids mapped by ``id_map``).

    DataError naming the file when it cannot be decoded, is a colour image, its size differs
    from ``image_shape``, or holds a value that is neither a train id nor the ignore index.
    """
    path = Path(path)
    raw = _decode(path, cv2.IMREAD_UNCHANGED, "label image")
    if raw.ndim == 3:
        if raw.shape[2] >= 3 and (raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all():
            raw = raw[..., 0]  # a grey image saved as RGB: the ids are in every channel
        else:
            raise DataError(f"{path}: label is a colour image with {raw.shape[2]} channels; "
                            "expected a single-channel PNG of class ids")
    if raw.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: label pixels are {raw.dtype}; expected 8- or 16-bit class ids")
    if image_shape is not None and raw.shape != tuple(image_shape):
        other = f" of {image_path}" if image_path is not None else ""
        raise DataError(f"{path}: label size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from the image size "
                        f"{image_shape[1]}x{image_shape[0]}{other}")
    lut = classes.label_lut()
    if lut is not None:
        return lut[raw]  # unmapped raw values -> ignore, by the class-table contract
    valid = np.zeros(65536 if raw.dtype == np.uint16 else 256, bool)
    valid[: classes.num_classes] = True
    valid[classes.ignore_index] = True
    if not valid[raw].all():
        bad = sorted(int(v) for v in np.unique(raw[~valid[raw]]))
        raise DataError(f"{path}: label value(s) {bad[:10]} are not train ids 0..{classes.num_classes - 1} "
                        f"nor the ignore index {classes.ignore_index} (add an id_map to the class YAML?)")
    return raw.astype(np.uint8, copy=False)


class SegmentationDataset(Dataset):
    """What every dataset here shares: ``load`` gives the checked numpy pair of a sample, the
    optional transform turns it into the training / evaluation sample."""

    classes: ClassTable
    transform: Transform | None

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked numpy pair (image (H, W, 3) uint8 RGB, label (H, W) uint8 train ids) of sample ``index``."""
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """(H, W) uint8 train ids of sample ``index`` (the class-uniform index reads only these)."""
        return self.load(index)[1]

    def name(self, index: int) -> str:
        """A stable name of sample ``index``, for prediction files."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes whenever the samples' labels change (the class-uniform index cache key)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        return self.sample(index)

    def sample(self, index: int, centroid: tuple[int, int] | None = None) -> Any:
        """Sample ``index`` through the transform; ``centroid`` (x, y) asks for a crop covering it."""
        image, label = self.load(index)
        if self.transform is None:
            return image, label
        return self.transform(image, label) if centroid is None else self.transform(image, label, centroid)


class _PairDataset(SegmentationDataset):
    """A list of (image, label) file pairs, read and checked lazily."""

    samples: list[tuple[Path, Path]]

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        """The image's stem."""
        return self.samples[index][0].stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = read_label(label_path, self.classes, image.shape[:2], image_path)
        return image, label

    def load_label(self, index: int) -> np.ndarray:
        """Without decoding the image."""
        return read_label(self.samples[index][1], self.classes)

    def fingerprint(self) -> str:
        """Changes whenever a label file (path, size, modification time) or the class table changes."""
        h = hashlib.sha256(repr(sorted(dataclasses.asdict(self.classes).items())).encode())
        for _, label in self.samples:
            st = label.stat()
            h.update(f"{label.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


class FolderDataset(_PairDataset):
    """``root/images/<split>/*.png|jpg`` + ``root/labels/<split>/<stem>.png`` (class-id PNGs).

    ``split=None`` reads ``root/images`` and ``root/labels`` directly (a single split). Images
    are paired with labels by file stem (also nested sub-folders, by relative path).
    """

    def __init__(self, root: str | os.PathLike, split: str | None, classes: ClassTable,
                 transform: Transform | None = None) -> None:
        self.root, self.split, self.classes, self.transform = Path(root), split, classes, transform
        image_dir = self.root / "images" if split is None else self.root / "images" / split
        label_dir = self.root / "labels" if split is None else self.root / "labels" / split
        if not image_dir.is_dir():
            found = sorted(p.name for p in (self.root / "images").iterdir() if p.is_dir()) \
                if (self.root / "images").is_dir() else []
            hint = f" (splits found: {', '.join(found)})" if found else ""
            raise DataError(f"{image_dir}: image folder not found{hint}")
        images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if split is None:  # flat layout: sub-folders would be splits, not samples
            images = [p for p in images if p.parent == image_dir]
        if not images:
            raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.samples = []
        for image in images:
            label = label_dir / image.relative_to(image_dir).with_suffix(".png")
            if not label.is_file():
                raise DataError(f"{image}: no label found (expected {label})")
            self.samples.append((image, label))


class CityscapesDataset(_PairDataset):
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Label ids are mapped to the 19 train ids with cityscapesscripts' label table (others: 255).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None) -> None:
        self.root, self.split, self.transform = Path(root), split, transform
        self.classes = ClassTable.cityscapes()
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: Cityscapes image folder not found (expected leftImg8bit/{split}/<city>/)")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DataError(f"{image_dir}: no */*_leftImg8bit.png images")
        self.samples = []
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            label = self.root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise DataError(f"{image}: no label found (expected {label})")
            self.samples.append((image, label))

    def name(self, index: int) -> str:
        return self.samples[index][0].name[: -len("_leftImg8bit.png")]


class SyntheticDataset(SegmentationDataset):
    """``num_frames`` procedural scenes rendered on the fly (no disk, deterministic per index).

    Frame ``i`` is ``render_scene(frame_seed(seed, start + i), height, width)``; rendering takes
    about 10 ms at 128x256, cheaper than decoding a PNG pair of that size plus the disk cache.
    Use a different ``start`` (or seed) for the validation set so no scene is shared.
    """

    def __init__(self, num_frames: int, height: int, width: int, seed: int = 0, start: int = 0,
                 transform: Transform | None = None) -> None:
        if num_frames <= 0 or height < MIN_SIZE or width < MIN_SIZE:
            raise ValueError(f"synthetic dataset needs frames > 0 and size >= {MIN_SIZE}x{MIN_SIZE}, "
                             f"got {num_frames} of {height}x{width}")
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        self.seed, self.start, self.transform = int(seed), int(start), transform
        self.classes = dataclasses.replace(ClassTable.cityscapes(), id_map=None)  # labels are train ids

    def __len__(self) -> int:
        return self.num_frames

    def name(self, index: int) -> str:
        return f"synth_{self.start + index:06d}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"index {index} out of range for {self.num_frames} synthetic frames")
        return render_scene(frame_seed(self.seed, self.start + index), self.height, self.width)

    def fingerprint(self) -> str:
        """The frames are a pure function of these numbers and of the generator's code."""
        code = hashlib.sha256()
        for module in sorted(_GENERATOR.glob("*.py")):
            code.update(module.read_bytes())
        stamp = dataset_writer.dataset_stamp(self.seed, {"frames": self.num_frames, "start": self.start},
                                             self.height, self.width)
        return f"{stamp.strip()} generator={code.hexdigest()[:16]}"
