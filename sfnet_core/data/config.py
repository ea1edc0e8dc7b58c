"""Data section of the training recipe (``data:`` in ``training/configs/*.yaml``); the datasets
it describes are built by ``sfnet_core.data.factory.build_datasets``.

Defaults are the paper's Cityscapes recipe (Sec. 4: random scale 0.75-2.0, 1024x1024 crops,
horizontal flip). The authors' released recipe adds colour jitter 0.25, Gaussian blur and
class-uniform sampling (``training/configs/cityscapes_sfnet_r18_released.yaml``). For the
synthetic scenes pick a crop that fits the frames, e.g.::

    data:
      kind: synthetic
      crop_size: [128, 256]
      synthetic: {train_frames: 2000, val_frames: 100, height: 128, width: 256}

Relative paths (``root``, ``classes``, ``synthetic.cache_dir``, ``class_uniform.cache_dir``) are
resolved by ``sfnet_core.training.config.load_train_config`` against the recipe file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sfnet_core.data.synthetic_scenes.arguments import MIN_SIZE
from sfnet_core.errors import ConfigError


@dataclass
class SyntheticConfig:
    """Procedural scenes (``sfnet_core.data.synthetic_scenes``); val frames never repeat train scenes."""

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
        if self.height < MIN_SIZE or self.width < MIN_SIZE:
            raise ConfigError(f"synthetic.height/width: must be >= {MIN_SIZE}, got {self.height}x{self.width}")
        if self.seed < 0:
            raise ConfigError(f"synthetic.seed: must be >= 0, got {self.seed}")


@dataclass
class ClassUniformConfig:
    """Class-uniform sampling (the authors' released ``--class_uniform_pct`` / ``--class_uniform_tile``).

    Every epoch, a fraction ``pct`` of the crops is placed on a class chosen uniformly among the
    classes of the training set, so rare classes (train, bus, rider...) are seen as often as
    road; the rest are ordinary random crops. The per-class centroid index is built once from
    the labels and cached (``sfnet_core.data.class_uniform``).
    """

    pct: float = 0.0                       # 0 = off; the released Cityscapes recipe uses 0.5
    tile: int = 1024                       # labels are split into tiles; one centroid per class per tile
    cache_dir: Path | None = None          # None: $XDG_CACHE_HOME or ~/.cache, under sfnet_ros/class_uniform

    def __post_init__(self) -> None:
        if not 0.0 <= self.pct <= 1.0:
            raise ConfigError(f"pct: must be in [0, 1], got {self.pct}")
        if self.tile < 1:
            raise ConfigError(f"tile: must be >= 1, got {self.tile}")


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
    # Colour jitter of the released code (torchvision's ColorJitter semantics): brightness,
    # contrast and saturation factors in [1 - j, 1 + j], hue shift in [-j, j], applied in a
    # random order. 0 = off; the released recipe uses 0.25.
    color_jitter: float = 0.0
    blur: bool = False                    # Gaussian blur, sigma in [0.15, 1.3], on every crop (released --gblur)
    class_uniform: ClassUniformConfig = field(default_factory=ClassUniformConfig)
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
        if not 0.0 <= self.color_jitter <= 0.5:
            raise ConfigError(f"color_jitter: must be in [0, 0.5] (0 = off), got {self.color_jitter}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")
        if self.kind == "synthetic" and self.val_split is not None and self.synthetic.val_frames == 0:
            raise ConfigError("synthetic.val_frames: must be >= 1 unless val_split is null")
