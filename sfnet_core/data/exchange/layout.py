"""A dataset folder's frames: images, their label PNGs (train ids) and the class table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Frame:
    """One image of the dataset: ``key`` is its path under ``images/`` without suffix
    (``train/1700000000_000000000``), the name both tools use for it."""

    key: str
    image: Path
    label: Path  # where its label PNG is (or goes): labels/<key>.png

    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        image = cv2.imdecode(np.fromfile(self.image, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"{self.image}: not a readable image")
        return int(image.shape[0]), int(image.shape[1])


def read_classes(dataset: Path) -> ClassTable:
    path = dataset / "classes.yaml"
    if not path.is_file():
        raise DataError(f"{dataset}: no classes.yaml (a dataset folder as sfnet-extract writes it)")
    table = ClassTable.from_yaml(path)
    if table.id_map is not None:
        raise DataError(f"{path}: has an id_map; a dataset's label PNGs hold train ids (remove the id_map)")
    return table


def frames(dataset: Path) -> list[Frame]:
    """Every image under ``dataset/images`` (sorted), with its label path under ``labels``."""
    root = dataset / "images"
    if not root.is_dir():
        raise DataError(f"{dataset}: no images/ folder (a dataset folder as sfnet-extract writes it)")
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            key = path.relative_to(root).with_suffix("").as_posix()
            found.append(Frame(key, path, dataset / "labels" / f"{key}.png"))
    if not found:
        raise DataError(f"{root}: holds no image")
    return found


def read_label(path: Path, table: ClassTable, size: tuple[int, int]) -> np.ndarray:
    """A train-id label PNG, checked: single channel 8 bit, ``size``, values in the table."""
    data = np.fromfile(path, np.uint8)
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise DataError(f"{path}: not a single-channel 8-bit label PNG")
    check_label(label, table, size, str(path))
    return label


def check_label(label: np.ndarray, table: ClassTable, size: tuple[int, int], where: str) -> None:
    if label.shape != size:
        raise DataError(f"{where}: {label.shape[1]}x{label.shape[0]} but its image is {size[1]}x{size[0]}")
    bad = label[(label >= table.num_classes) & (label != table.ignore_index)]
    if bad.size:
        values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
        raise DataError(f"{where}: value(s) {values} are not train ids of the dataset's classes.yaml "
                        f"(0..{table.num_classes - 1}, {table.ignore_index} = ignore)")


def label_png(label: np.ndarray) -> bytes:
    """A train-id label map as the bytes of a single-channel 8-bit PNG."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(label))
    if not ok:
        raise DataError("cannot encode a label PNG")
    return encoded.tobytes()


def safe_key(key: str, where: str) -> str:
    """A frame name from a tool's file: relative, no ``..``, so an import writes inside the dataset."""
    parts = Path(key).parts
    if not key or Path(key).is_absolute() or ".." in parts or any(p.startswith(".") for p in parts):
        raise DataError(f"{where}: {key!r} is not a frame name of the dataset")
    return Path(key).as_posix()


__all__ = ["Frame", "read_classes", "frames", "read_label", "check_label", "label_png", "safe_key"]
