"""Train / validation datasets from the recipe's ``data:`` section (``DataConfig``)."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.config import DataConfig, SyntheticConfig
from sfnet_core.errors import DataError

__all__ = ["build_datasets"]


def build_datasets(cfg: DataConfig, mean, std, train: bool = True) -> tuple[Dataset | None, Dataset | None, ClassTable]:
    """``(train_dataset, val_dataset, classes)`` for ``cfg``; with ``train=False`` (evaluation) the
    training split is not opened at all (None), so a folder holding only a val split works.

    Train samples go through ``TrainTransform`` (random scale, crop, flip, optional colour jitter
    and blur; class-uniform crops come from the sampler, see ``sfnet_core.data.class_uniform``), val
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
    train_tf = TrainTransform(cfg.crop_size, cfg.scale_range, cfg.flip, color_jitter=cfg.color_jitter,
                              blur=cfg.blur, mean=mean, std=std, ignore_index=classes.ignore_index)
    eval_tf = EvalTransform(mean, std)

    if cfg.kind == "cityscapes":
        assert cfg.root is not None and cfg.train_split is not None
        train_set = CityscapesDataset(cfg.root, cfg.train_split, train_tf) if train else None
        val = CityscapesDataset(cfg.root, cfg.val_split, eval_tf) if cfg.val_split else None
        return train_set, val, classes
    if cfg.kind == "folder":
        assert cfg.root is not None
        train_set = FolderDataset(cfg.root, cfg.train_split, classes, train_tf) if train else None
        val = FolderDataset(cfg.root, cfg.val_split, classes, eval_tf) if cfg.val_split else None
        return train_set, val, classes

    syn = cfg.synthetic
    if syn.cache_dir is None:
        train_set = SyntheticDataset(syn.train_frames, syn.height, syn.width, syn.seed, 0, train_tf) if train else None
        val = (SyntheticDataset(syn.val_frames, syn.height, syn.width, syn.seed, syn.train_frames, eval_tf)
               if cfg.val_split else None)
        return train_set, val, classes
    root = _synthetic_cache(syn)
    train_set = FolderDataset(root, "train", classes, train_tf) if train else None
    val = FolderDataset(root, "val", classes, eval_tf) if cfg.val_split and syn.val_frames else None
    return train_set, val, classes


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
    # fill the cache once beforehand (sfnet-synthetic) to avoid duplicate work.
    write_folder_dataset(root, syn.train_frames + syn.val_frames, syn.height, syn.width, seed=syn.seed,
                         splits=splits)
    return root
