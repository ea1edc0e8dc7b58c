"""Data section of the training recipe (``data:`` in ``training/configs/*.yaml``); the datasets
it describes are built by ``sfnet_core.data.factory.build_datasets``.

Defaults are the paper's Cityscapes recipe (Sec. 4: random scale 0.75-2.0, 1024x1024 crops,
horizontal flip). For the synthetic scenes pick a crop that fits the frames, e.g.::

    data:
      kind: synthetic
      crop_size: [128, 256]
      synthetic: {train_frames: 2000, val_frames: 100, height: 128, width: 256}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sfnet_core.errors import ConfigError


@dataclass
class SyntheticConfig:
    """Procedural scenes (``sfnet_core.data.synthetic``); val frames never repeat train scenes."""

    train_frames: int = 2000
    val_frames: int = 100
    height: int = 256
    width: int = 512
    seed: int = 0
    # None: render on the fly (about 10 ms per 128x256 frame, no disk). A folder: write the
    # frames once as PNGs (reused while seed/frames/size match) and read them back.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.train_frames < 1 or self.val_frames < 0:
            raise ConfigError(f"synthetic.train_frames must be >= 1 and val_frames >= 0, "
                              f"got {self.train_frames} and {self.val_frames}")
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"synthetic.height/width: must be >= 8, got {self.height}x{self.width}")
        if self.seed < 0:
            raise ConfigError(f"synthetic.seed: must be >= 0, got {self.seed}")


@dataclass
class DataConfig:
    """Where the data is and how it is augmented (training only; evaluation only normalises)."""

    kind: Literal["cityscapes", "folder", "synthetic"] = "cityscapes"
    root: Path | None = Path("data/cityscapes")
    classes: Path | None = None           # class YAML (folder kind); default root/classes.yaml
    train_split: str | None = "train"     # None: the folder has no split sub-folders
    val_split: str | None = "val"         # None: no validation set
    crop_size: tuple[int, int] = (1024, 1024)   # (h, w)
    scale_range: tuple[float, float] = (0.75, 2.0)
    flip: bool = True
    photometric: bool = False             # brightness / contrast / saturation jitter
    workers: int = 2                      # DataLoader worker processes
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.kind in ("cityscapes", "folder") and self.root is None:
            raise ConfigError(f"root: required for kind {self.kind!r}")
        if self.kind == "cityscapes" and self.train_split is None:
            raise ConfigError("train_split: Cityscapes needs a split name (train, val, test)")
        if min(self.crop_size) < 1:
            raise ConfigError(f"crop_size: must be positive (h, w), got {list(self.crop_size)}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range: need 0 < min <= max, got {list(self.scale_range)}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")
        if self.kind == "synthetic" and self.val_split is not None and self.synthetic.val_frames == 0:
            raise ConfigError("synthetic.val_frames: must be >= 1 unless val_split is null")
