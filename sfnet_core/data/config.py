"""Data section of the training recipe (``data:`` in ``training/configs/*.yaml``) and the
factory that turns it into train / val datasets.

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

from torch.utils.data import Dataset

from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import ConfigError, DataError


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


def build_datasets(cfg: DataConfig, mean, std) -> tuple[Dataset, Dataset | None, ClassTable]:
    """``(train_dataset, val_dataset, classes)`` for ``cfg``.

    Train samples go through ``TrainTransform`` (random scale, crop, flip, optional jitter), val
    samples through ``EvalTransform`` (full image, normalised); both yield ``(image (3, H, W)
    float32, label (H, W) int64)``. ``val_dataset`` is None when ``cfg.val_split`` is null.
    """
    from sfnet_core.data.datasets import CityscapesDataset, FolderDataset, SyntheticDataset
    from sfnet_core.data.transforms import EvalTransform, TrainTransform

    if cfg.kind == "cityscapes":
        classes = ClassTable.cityscapes()
    elif cfg.kind == "folder":
        assert cfg.root is not None
        path = cfg.classes or cfg.root / "classes.yaml"
        if not Path(path).is_file():
            raise DataError(f"{path}: class table not found (set data.classes to a class YAML)")
        classes = ClassTable.from_yaml(path)
    else:
        classes = SyntheticDataset(1, 8, 8).classes
    train_tf = TrainTransform(cfg.crop_size, cfg.scale_range, cfg.flip, cfg.photometric, mean, std,
                              ignore_index=classes.ignore_index)
    eval_tf = EvalTransform(mean, std)

    if cfg.kind == "cityscapes":
        assert cfg.root is not None and cfg.train_split is not None
        train = CityscapesDataset(cfg.root, cfg.train_split, train_tf)
        val = CityscapesDataset(cfg.root, cfg.val_split, eval_tf) if cfg.val_split else None
        return train, val, classes
    if cfg.kind == "folder":
        assert cfg.root is not None
        train = FolderDataset(cfg.root, cfg.train_split, classes, train_tf)
        val = FolderDataset(cfg.root, cfg.val_split, classes, eval_tf) if cfg.val_split else None
        return train, val, classes

    syn = cfg.synthetic
    if syn.cache_dir is None:
        train = SyntheticDataset(syn.train_frames, syn.height, syn.width, syn.seed, 0, train_tf)
        val = (SyntheticDataset(syn.val_frames, syn.height, syn.width, syn.seed, syn.train_frames, eval_tf)
               if cfg.val_split else None)
        return train, val, classes
    root = _synthetic_cache(syn)
    train = FolderDataset(root, "train", classes, train_tf)
    val = FolderDataset(root, "val", classes, eval_tf) if cfg.val_split and syn.val_frames else None
    return train, val, classes


def _synthetic_cache(syn: SyntheticConfig) -> Path:
    """Write the synthetic frames to ``syn.cache_dir`` unless an identical set is there."""
    from sfnet_core.data.synthetic import MARKER, dataset_stamp, write_folder_dataset

    assert syn.cache_dir is not None
    root = Path(syn.cache_dir)
    splits = {"train": syn.train_frames, "val": syn.val_frames}
    stamp = dataset_stamp(syn.seed, splits, syn.height, syn.width)
    marker = root / MARKER
    if marker.is_file() and marker.read_text() == stamp and (root / "images" / "train").is_dir():
        return root
    # Under DDP every rank builds its datasets: the atomic write keeps readers consistent, but
    # fill the cache once beforehand (python -m sfnet_core.data.synthetic) to avoid duplicate work.
    write_folder_dataset(root, syn.train_frames + syn.val_frames, syn.height, syn.width, seed=syn.seed,
                         splits=splits)
    return root
