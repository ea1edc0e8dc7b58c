"""Synthetic scenes written to disk in the folder-dataset layout of ``sfnet_core.data``.

``MARKER`` holds ``dataset_stamp`` (seed, size, split counts) so a cache folder is reused only
when it holds exactly the frames asked for; ``TOOL`` is the manifest's tool name
(``sfnet_core.io_utils``): what ``--overwrite`` may replace.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.synthetic_scenes.arguments import check_scene_args
from sfnet_core.data.synthetic_scenes.render import frame_seed, render_scene
from sfnet_core.data.synthetic_scenes.train_ids import SYNTHETIC_CLASSES
from sfnet_core.io_utils import atomic_write, foreign_files

__all__ = ["MARKER", "TOOL", "dataset_stamp", "write_folder_dataset"]

MARKER = ".sfnet_synthetic"  # the dataset stamp (a cache is reused only if it matches)
TOOL = "sfnet-synthetic"  # the manifest's tool name (sfnet_core.io_utils): what --overwrite may replace


def dataset_stamp(seed: int, splits: dict[str, int], height: int, width: int) -> str:
    """Content of the marker file: what was written (a cache is reused only if it matches)."""
    parts = " ".join(f"{k}={v}" for k, v in splits.items())
    return f"seed={seed} size={height}x{width} {parts}\n"


def _write_png(path: Path, image: np.ndarray) -> None:
    """PNG through Python's file API: a full disk is an OSError naming the file (cv2.imwrite
    would print a libpng line and return False)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"{path}: cannot encode PNG")
    path.write_bytes(buf.tobytes())


def write_folder_dataset(
    root: str | os.PathLike,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    splits: dict[str, int] | None = None,
    overwrite: bool = True,
    what: str | None = None,
) -> Path:
    """Write ``num_frames`` scenes in the folder-dataset layout and return ``root``.

    ``root/images/<split>/<name>.png``, ``root/labels/<split>/<name>.png`` (train ids) and
    ``root/classes.yaml`` (the Cityscapes table without id_map). ``splits`` maps split names to
    frame counts summing to ``num_frames``; default: 80 % train, the rest val. Frame ``i`` (over
    the splits in order) is ``render_scene(frame_seed(seed, i))``, the same frames as
    ``SyntheticDataset(..., seed, start=i0)``. The folder is written atomically with a manifest
    (``sfnet_core.io_utils``); an existing non-empty folder is only replaced if this function
    wrote it and nothing in it was added or changed since, and with ``overwrite=False`` nothing
    that appears at ``root`` meanwhile is replaced.
    """
    if splits is None:
        val = num_frames // 5
        splits = {"train": num_frames - val, "val": val}
    if any(n < 0 for n in splits.values()) or sum(splits.values()) != num_frames:
        raise ValueError(f"splits {splits} must be non-negative counts summing to num_frames={num_frames}")
    check_scene_args(seed, height, width)
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        foreign = foreign_files(root, TOOL)
        if foreign is None or foreign:
            detail = "is not a synthetic dataset written by sfnet" if foreign is None else \
                f"holds files sfnet-synthetic did not write or that changed since ({', '.join(foreign[:3])})"
            raise FileExistsError(f"{root}: exists and {detail}; choose an empty folder")
    table = ClassTable.cityscapes()
    classes = {**table.to_dict(), "id_map": None}
    index = 0
    with atomic_write(root, overwrite=overwrite, tool=TOOL, what=what) as tmp:
        for split, count in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for _ in range(count):
                image, labels = render_scene(frame_seed(seed, index), height, width)
                name = f"synth_{index:06d}.png"
                _write_png(tmp / "images" / split / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                _write_png(tmp / "labels" / split / name, labels)
                index += 1
        header = (f"# Synthetic driving scenes (sfnet_core.data.synthetic_scenes), seed {seed}, {height}x{width}.\n"
                  "# Labels are Cityscapes train ids; the generator draws: " + ", ".join(SYNTHETIC_CLASSES) + "\n")
        (tmp / "classes.yaml").write_text(header + yaml.safe_dump(classes, sort_keys=False), encoding="utf-8")
        (tmp / MARKER).write_text(dataset_stamp(seed, splits, height, width))
    return root
