"""Class tables: what each train id means, how it is drawn, and how raw label values map to it.

A class table travels inside every checkpoint (so a node decodes labels without any side file)
and is loaded from ``config/classes/*.yaml`` for training and evaluation. The YAML shape::

    ignore_index: 255
    classes:                      # in train-id order, or with explicit ids 0..N-1
      - {id: 0, name: road, color: [128, 64, 128]}
      ...
    id_map: {7: 0, 8: 1}          # optional: raw label value -> train id, others -> ignore
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfnet_core.errors import ConfigError
from sfnet_core.yaml_config import load_yaml

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """Names and colours of the train ids ``0..num_classes-1``, plus the ignore index."""

    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    ignore_index: int = 255
    id_map: dict[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("classes: the class table is empty")
        if len(self.names) != len(self.colors):
            raise ConfigError(f"classes: {len(self.names)} names but {len(self.colors)} colours")
        if len(set(self.names)) != len(self.names):
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ConfigError(f"classes: duplicate class name(s) {dupes}")
        if len(self.names) > 255:
            raise ConfigError(f"classes: {len(self.names)} classes do not fit a uint8 label image")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.names):
            raise ConfigError(
                f"classes: ignore_index {self.ignore_index} must be in {len(self.names)}..255 "
                "(outside the train ids, inside uint8)"
            )
        for name, color in zip(self.names, self.colors):
            if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
                raise ConfigError(f"classes: colour of {name!r} must be three integers 0..255, got {color!r}")
        if self.id_map is not None:
            for raw, train in self.id_map.items():
                if not 0 <= raw <= 65535:
                    raise ConfigError(f"classes: id_map key {raw} is not a label value 0..65535")
                if not (0 <= train < len(self.names) or train == self.ignore_index):
                    raise ConfigError(
                        f"classes: id_map {raw} -> {train}: not a train id (0..{len(self.names) - 1}) "
                        f"nor the ignore index {self.ignore_index}"
                    )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 RGB lookup table: train id -> colour; ignore and unused ids are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return lut

    def index(self, name: str) -> int:
        """Train id of class ``name`` (ConfigError listing the valid names otherwise)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"unknown class name {name!r}; valid names: {', '.join(self.names)}") from None

    def label_lut(self) -> np.ndarray | None:
        """(65536,) uint8 lookup raw label value -> train id, or None when labels are train ids."""
        if self.id_map is None:
            return None
        lut = np.full(65536, self.ignore_index, dtype=np.uint8)
        for raw, train in self.id_map.items():
            lut[raw] = train
        return lut

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only, so it survives ``torch.load(weights_only=True)`` and JSON."""
        return {
            "ignore_index": self.ignore_index,
            "classes": [
                {"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.names, self.colors))
            ],
            "id_map": None if self.id_map is None else {int(k): int(v) for k, v in self.id_map.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ClassTable:
        """Inverse of ``to_dict``; also the YAML schema. Errors name ``source``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with a 'classes' list")
        unknown = sorted(set(data) - {"ignore_index", "classes", "id_map"})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; valid: classes, ignore_index, id_map")
        entries = data.get("classes")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: 'classes' must be a non-empty list of {{id, name, color}}")
        by_id: dict[int, tuple[str, RGB]] = {}  # train id -> (name, colour)
        for position, entry in enumerate(entries):
            where = f"{source}: classes[{position}]"
            if not isinstance(entry, dict) or "name" not in entry or "color" not in entry:
                raise ConfigError(f"{where}: expected a mapping with 'name' and 'color' (and optional 'id')")
            extra = sorted(set(entry) - {"id", "name", "color"})
            if extra:
                raise ConfigError(f"{where}: unknown key(s) {extra}")
            train_id = entry.get("id", position)
            if not isinstance(train_id, int) or not 0 <= train_id < len(entries):
                raise ConfigError(f"{where}: id must be an integer 0..{len(entries) - 1}, got {train_id!r}")
            if train_id in by_id:
                raise ConfigError(f"{where}: id {train_id} is used twice")
            color = entry["color"]
            if not isinstance(color, (list, tuple)) or len(color) != 3:
                raise ConfigError(f"{where}: color must be [r, g, b], got {color!r}")
            if not isinstance(entry["name"], str) or not entry["name"]:
                raise ConfigError(f"{where}: name must be a non-empty string")
            by_id[train_id] = (entry["name"], tuple(color))
        ignore_index = data.get("ignore_index", 255)
        if not isinstance(ignore_index, int):
            raise ConfigError(f"{source}: ignore_index must be an integer, got {ignore_index!r}")
        id_map = data.get("id_map")
        if id_map is not None:
            if not isinstance(id_map, dict) or not all(
                isinstance(k, int) and isinstance(v, int) for k, v in id_map.items()
            ):
                raise ConfigError(f"{source}: id_map must map integer label values to integer train ids")
            id_map = dict(id_map)
        # len(entries) distinct ids in 0..len(entries)-1: every id is present
        names = tuple(by_id[i][0] for i in range(len(entries)))
        colors = tuple(by_id[i][1] for i in range(len(entries)))
        try:
            return cls(names, colors, ignore_index, id_map)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {str(exc).removeprefix('classes: ')}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClassTable:
        return cls.from_dict(load_yaml(path), source=str(path))

    @classmethod
    def cityscapes(cls) -> ClassTable:
        """The 19 Cityscapes train ids, from the official label table (cityscapesscripts)."""
        from cityscapesscripts.helpers.labels import labels

        train = sorted((l for l in labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
        id_map = {l.id: l.trainId for l in train}  # every other label value maps to ignore
        return cls(
            names=tuple(l.name for l in train),
            colors=tuple(tuple(l.color) for l in train),
            ignore_index=255,
            id_map=id_map,
        )
