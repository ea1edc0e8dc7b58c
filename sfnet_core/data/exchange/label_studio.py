"""Label Studio's brush labels: tasks JSON with run-length-encoded masks, both ways.

Export: one task per image (``data.image``: the image's URL under Label Studio's local-files
serving, ``/data/local-files/?d=<prefix>/<path>``), the labels as ``predictions`` (drafts for the
labellers to correct), one ``brushlabels`` result per class present; and ``label_config.xml``, the
project's labelling interface with the class names and colours. Import: Label Studio's JSON
export of those tasks: each task's newest annotation (else its prediction), every result decoded
and checked (size, class name) and painted in order; pixels no brush covers are ignored.

The RLE is Label Studio's (its ``rle-pack`` format: a 32-bit value count, word size, four run
length widths, then chunks of repeated or literal 8-bit values over the mask as RGBA, each
pixel's value in all four channels). Written here in numpy because the reference implementation
(``label_studio_converter.brush``, also in ``label-studio-sdk``) walks bit strings in Python and
costs seconds per 1 MP mask; the tests compare both ways against it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.exchange.layout import Frame, check_label, safe_key
from sfnet_core.errors import DataError

FROM_NAME, TO_NAME = "tag", "image"
RLE_SIZES = (3, 4, 8, 16)  # bits of (run length - 1) per size class, as Label Studio's encoder uses
LOCAL_FILES = "/data/local-files/?d="


def _bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - k)) & 1 for k in range(width)]


def rle_encode(values: np.ndarray) -> list[int]:
    """uint8 values -> Label Studio RLE bytes (runs of equal values as repeat chunks)."""
    values = np.asarray(values, np.uint8).ravel()
    n = int(values.size)
    bits = _bits(n, 32) + _bits(7, 5) + [b for size in RLE_SIZES for b in _bits(size - 1, 4)]
    if n:
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        lengths = np.diff(np.r_[starts, n])
        longest = 1 << RLE_SIZES[-1]
        for start, length in zip(starts.tolist(), lengths.tolist()):
            value = int(values[start])
            while length > 0:
                chunk = min(length, longest)
                size_class = next(k for k, size in enumerate(RLE_SIZES) if chunk - 1 < 1 << size)
                bits += [1, *_bits(size_class, 2), *_bits(chunk - 1, RLE_SIZES[size_class]), *_bits(value, 8)]
                length -= chunk
    return np.packbits(np.array(bits, np.uint8)).tolist()


class _BitReader:
    def __init__(self, data: Sequence[int]) -> None:
        self.bits = np.unpackbits(np.asarray(data, np.uint8))
        self.at = 0

    def read(self, width: int) -> int:
        if self.at + width > self.bits.size:
            raise DataError("the RLE ends early (truncated)")
        chunk = self.bits[self.at : self.at + width]
        self.at += width
        return int(chunk.dot(1 << np.arange(width - 1, -1, -1, dtype=np.int64))) if width else 0


def rle_decode(data: Any) -> np.ndarray:
    """Label Studio RLE bytes -> the uint8 values (any chunk kind its encoders write)."""
    if not isinstance(data, (list, tuple)) or not all(isinstance(v, int) and 0 <= v < 256 for v in data):
        raise DataError("the RLE is not a list of byte values")
    reader = _BitReader(data)
    num = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if word != 8:
        raise DataError(f"the RLE has {word}-bit values; brush masks have 8")
    if num > 4 * 50_000_000:
        raise DataError(f"the RLE claims {num} values (more than a 50-megapixel mask)")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = reader.read(1)
        j = min(num, i + 1 + reader.read(sizes[reader.read(2)]))
        if repeat:
            out[i:j] = reader.read(word)
        else:
            for k in range(i, j):
                out[k] = reader.read(word)
        i = j
    return out


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> RLE of the RGBA brush image (255 where the mask is set, in every channel)."""
    return rle_encode(np.repeat(np.where(mask, 255, 0).astype(np.uint8).ravel(), 4))


def rle_to_mask(data: Any, height: int, width: int) -> np.ndarray:
    values = rle_decode(data)
    if values.size != height * width * 4:
        raise DataError(f"the RLE holds {values.size} values, a {width}x{height} RGBA mask has {height * width * 4}")
    return values.reshape(height, width, 4)[..., 3] > 127


def label_config(table: ClassTable) -> str:
    """The project's labelling interface: an image and one brush label per class, its colour."""
    lines = [f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>',
             f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">']
    for name, color in zip(table.names, table.palette()):
        lines.append(f'    <Label value={quoteattr(name)} background="#{int(color[0]):02x}{int(color[1]):02x}'
                     f'{int(color[2]):02x}"/>')
    return "\n".join([*lines, "  </BrushLabels>\n</View>\n"])


def task(frame: Frame, image_url: str, label: np.ndarray | None, table: ClassTable) -> dict[str, Any]:
    """One task: the image's URL, the frame's name, and (with ``label``) the draft as a prediction."""
    entry: dict[str, Any] = {"data": {"image": image_url, "sfnet_frame": frame.key}}
    if label is not None:
        height, width = label.shape
        results = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels", "origin": "prediction",
                    "original_width": width, "original_height": height, "image_rotation": 0,
                    "value": {"format": "rle", "rle": mask_to_rle(label == c), "brushlabels": [name]}}
                   for c, name in enumerate(table.names) if (label == c).any()]
        entry["predictions"] = [{"model_version": "sfnet draft", "result": results}]
    return entry


def label_from_task(item: Any, table: ClassTable, sizes: dict[str, tuple[int, int]], where: str,
                    ) -> tuple[str, np.ndarray] | None:
    """(frame name, train-id label) of one exported task; None when it has no annotation and no
    prediction. DataError naming ``where`` and the task on anything that does not fit."""
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise DataError(f"{where}: a task is not an object with 'data'")
    key = item["data"].get("sfnet_frame")
    if not isinstance(key, str):
        raise DataError(f"{where}: a task without data.sfnet_frame (tasks must come from sfnet-labels export)")
    key = safe_key(key, where)
    if key not in sizes:
        raise DataError(f"{where}: task {key!r} is not an image of the dataset")
    runs = [a for a in item.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    source = runs[-1] if runs else ((item.get("predictions") or [None])[-1])
    if source is None:
        return None
    height, width = sizes[key]
    label = np.full((height, width), table.ignore_index, np.uint8)
    for result in source.get("result", []) if isinstance(source, dict) else []:
        if not isinstance(result, dict) or result.get("type") != "brushlabels":
            continue
        value = result.get("value") or {}
        rle = value.get("rle", result.get("rle"))
        names = value.get("brushlabels", result.get("brushlabels"))
        where_task = f"{where}: task {key!r}"
        if (result.get("original_height"), result.get("original_width")) != (height, width):
            raise DataError(f"{where_task}: a mask of {result.get('original_width')}x{result.get('original_height')} "
                            f"for an image of {width}x{height}")
        if not isinstance(names, list) or len(names) != 1 or names[0] not in table.names:
            raise DataError(f"{where_task}: brush label {names!r} is not one class of the dataset's classes.yaml")
        try:
            mask = rle_to_mask(rle, height, width)
        except DataError as exc:
            raise DataError(f"{where_task}: {exc}") from None
        label[mask] = table.names.index(names[0])
    check_label(label, table, (height, width), f"{where}: task {key!r}")
    return key, label


def write_tasks(out: Path, tasks: list[dict[str, Any]], table: ClassTable) -> None:
    (out / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
    (out / "label_config.xml").write_text(label_config(table), encoding="utf-8")


def read_tasks(path: Path) -> list[Any]:
    """The tasks of a Label Studio JSON export (a file, or a folder holding tasks.json)."""
    file = path / "tasks.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not a Label Studio JSON export ({exc.__class__.__name__})") from None
    if not isinstance(data, list):
        raise DataError(f"{file}: not a Label Studio JSON export (a list of tasks)")
    return data
