"""CVAT's "Segmentation mask 1.1" format, both ways (what CVAT imports and exports for masks).

A folder with ``labelmap.txt`` (``name:r,g,b::`` per label, ``background`` first),
``SegmentationClass/<frame>.png`` (palette PNGs: index 0 = background, index c + 1 = class c,
the palette holding the labelmap's colours), ``ImageSets/Segmentation/default.txt`` (the frame
names) and ``JPEGImages/`` (the images, so the folder imports into CVAT as a task on its own).
The dataset's ignore index is CVAT's background both ways. Reading maps colours, not indices,
through ``labelmap.txt``: a file written by CVAT (or datumaro) with its own index order reads
the same; RGB PNGs are accepted too.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.exchange.layout import Frame, check_label, safe_key
from sfnet_core.errors import DataError

BACKGROUND = "background"


def labelmap_text(table: ClassTable) -> str:
    colors = [tuple(int(v) for v in c) for c in table.colors]
    if (0, 0, 0) in colors or len(set(colors)) != len(colors):
        raise DataError("classes.yaml: CVAT tells classes by colour: every class needs its own colour, none black "
                        "(black is CVAT's background)")
    lines = ["# label:color_rgb:parts:actions", f"{BACKGROUND}:0,0,0::"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(table.names, colors)]
    return "\n".join(lines) + "\n"


def write_frame(out: Path, frame: Frame, label: np.ndarray, table: ClassTable) -> None:
    """The frame's palette PNG and its image, under ``out``."""
    index = np.where(label == table.ignore_index, 0, label.astype(np.int32) + 1).astype(np.uint8)
    png = Image.fromarray(index, mode="P")
    palette = [0, 0, 0] + [int(v) for c in table.colors for v in c]
    png.putpalette(palette + [0] * (768 - len(palette)))
    target = out / "SegmentationClass" / f"{frame.key}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    png.save(target)
    image_target = out / "JPEGImages" / f"{frame.key}{frame.image.suffix}"
    image_target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(frame.image, image_target)


def write_index(out: Path, keys: list[str], table: ClassTable) -> None:
    (out / "labelmap.txt").write_text(labelmap_text(table), encoding="utf-8")
    sets = out / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "default.txt").write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")


def read_labelmap(folder: Path, table: ClassTable) -> dict[tuple[int, int, int], int]:
    """colour -> train id (background -> the ignore index), every name checked against the table."""
    path = folder / "labelmap.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise DataError(f"{path}: missing or unreadable (a CVAT 'Segmentation mask 1.1' folder has one)") from None
    colors: dict[tuple[int, int, int], int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            values = [int(v) for v in rest.split(":")[0].split(",")]
        except ValueError:
            values = []
        if len(values) != 3 or not all(0 <= v < 256 for v in values):
            raise DataError(f"{path}:{number}: expected name:r,g,b::, got {line!r}")
        rgb = (values[0], values[1], values[2])
        if name == BACKGROUND:
            colors[rgb] = table.ignore_index
        elif name in table.names:
            colors[rgb] = table.names.index(name)
        else:
            raise DataError(f"{path}:{number}: label {name!r} is not a class of the dataset's classes.yaml")
    return colors


def read_frame_label(path: Path, colors: dict[tuple[int, int, int], int], size: tuple[int, int],
                     table: ClassTable) -> np.ndarray:
    """A mask PNG (palette or RGB) -> train ids, every colour known, the image's size."""
    try:
        with Image.open(path) as png:
            png.load()
            if png.mode == "P":
                index = np.asarray(png)
                flat = (png.getpalette() or []) + [0] * 768
                palette = np.array(flat[:768], np.int64).reshape(256, 3)
                rgb = palette[index]
            else:
                rgb = np.asarray(png.convert("RGB")).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable mask PNG ({exc.__class__.__name__})") from None
    if rgb.shape[:2] != size:
        raise DataError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} but its image is {size[1]}x{size[0]}")
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lut = {(r << 16) | (g << 8) | b: train for (r, g, b), train in colors.items()}
    used = np.unique(code)
    unknown = [int(u) for u in used if int(u) not in lut]
    if unknown:
        shown = ", ".join(f"({u >> 16},{(u >> 8) & 255},{u & 255})" for u in unknown[:4])
        raise DataError(f"{path}: colour(s) {shown} are in no line of labelmap.txt")
    label = np.empty(size, np.uint8)
    for u in used:
        label[code == u] = lut[int(u)]
    check_label(label, table, size, str(path))
    return label


def mask_files(folder: Path) -> dict[str, Path]:
    """frame name -> its SegmentationClass PNG."""
    root = folder / "SegmentationClass"
    if not root.is_dir():
        raise DataError(f"{folder}: no SegmentationClass/ folder (not a CVAT 'Segmentation mask 1.1' export)")
    return {safe_key(p.relative_to(root).with_suffix("").as_posix(), str(folder)): p
            for p in sorted(root.rglob("*.png"))}
