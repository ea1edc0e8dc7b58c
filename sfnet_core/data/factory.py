"""Train / validation datasets from the recipe's ``data:`` section (``DataConfig``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.config import DataConfig, SyntheticConfig
from sfnet_core.data.datasets import CityscapesDataset, FolderDataset, SegmentationDataset, SyntheticDataset, read_image
from sfnet_core.data.synthetic_scenes.dataset_writer import MARKER, dataset_stamp, write_folder_dataset
from sfnet_core.data.transforms import EvalTransform, TrainTransform
from sfnet_core.errors import ConfigError, DataError

__all__ = ["build_datasets", "check_crop_fits", "largest_image_size"]


def build_datasets(cfg: DataConfig, mean: Sequence[float], std: Sequence[float],
                   train: bool = True) -> tuple[SegmentationDataset | None, SegmentationDataset | None, ClassTable]:
    """``(train_dataset, val_dataset, classes)`` for ``cfg``; with ``train=False`` (evaluation) the
    training split is not opened at all (None), so a folder holding only a val split works.

    Train samples go through ``TrainTransform`` (random scale, crop, flip, optional colour jitter
    and blur; class-uniform crops come from the sampler, see ``sfnet_core.data.class_uniform``), val
    samples through ``EvalTransform`` (full image, normalised); both yield ``(image (3, H, W)
    float32, label (H, W) int64)``. ``val_dataset`` is None when ``cfg.val_split`` is null.
    """
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

    train_set: SegmentationDataset | None
    val: SegmentationDataset | None
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


# A crop of which the largest training image, at the largest scale of data.scale_range, covers
# less than this fraction is refused: the rest of it is padding (ignore label) in every sample,
# which costs memory and time for nothing and is almost always a crop_size meant for other data.
MIN_IMAGE_FRACTION = 0.25
_SIZE_PROBES = 256  # image headers read to find the largest image (spread over the dataset)


def largest_image_size(dataset: SegmentationDataset | None) -> tuple[int, int] | None:
    """(h, w) of the largest training image (by area): exact for synthetic scenes, else from the
    headers of up to 256 images spread over the dataset; None when it cannot be told."""
    if dataset is None:
        return None
    if isinstance(dataset, SyntheticDataset):
        return dataset.height, dataset.width
    samples = getattr(dataset, "samples", None)
    if not samples:
        return None
    n = len(samples)
    picks = range(n) if n <= _SIZE_PROBES else sorted({round(i * (n - 1) / (_SIZE_PROBES - 1))
                                                        for i in range(_SIZE_PROBES)})
    sizes = [size for size in (_header_size(samples[i][0]) for i in picks) if size is not None]
    return max(sizes, key=lambda hw: hw[0] * hw[1]) if sizes else None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(h, w) from the image file's header (PIL reads no pixels); None if unreadable here (the
    sample's own read reports it)."""
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: decode the image instead
        try:
            return read_image(path).shape[:2]
        except DataError:
            return None
    try:
        with Image.open(path) as image:
            w, h = image.size
            return h, w
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def check_crop_fits(cfg: DataConfig, largest: tuple[int, int] | None) -> str | None:
    """ConfigError when ``cfg.crop_size`` is mostly padding for images of size ``largest`` (h, w).

    Crops larger than the scaled image are padded to ``crop_size`` (image: mean colour, label:
    ignore index), as the released recipe does at scale 0.5 (1024x1024 crops of 512x1024
    frames). That is fine while image content fills a good part of the crop; when even the
    largest image at the largest scale fills less than ``MIN_IMAGE_FRACTION`` of it, the crop
    size is refused. Returns a note for the log when every crop is padded (else None).
    """
    if largest is None:
        return None
    ch, cw = cfg.crop_size
    hi = cfg.scale_range[1]
    h, w = largest
    sh, sw = max(1, round(h * hi)), max(1, round(w * hi))
    fraction = min(ch, sh) * min(cw, sw) / (ch * cw)
    if fraction < MIN_IMAGE_FRACTION:
        fit_h, fit_w = min(ch, sh), min(cw, sw)
        raise ConfigError(
            f"data.crop_size: {ch}x{cw} (h x w) is far larger than the training images: the largest is "
            f"{h}x{w}, {sh}x{sw} at the largest scale {hi:g} of data.scale_range, so at least "
            f"{100 * (1 - fraction):.1f}% of every crop would be padding; use a crop of at most "
            f"{sh}x{sw}, e.g. data.crop_size=[{fit_h},{fit_w}]")
    if ch > sh or cw > sw:
        return (f"data.crop_size {ch}x{cw} is larger than the largest training image at the largest "
                f"scale ({sh}x{sw}): every crop is padded with the ignore label")
    return None
