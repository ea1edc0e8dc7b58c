"""The training recipe as a typed dataclass tree (``training/configs/*.yaml`` override the defaults).

Defaults are the paper's Cityscapes recipe (Li et al., ECCV 2020, Sec. 4): SGD, momentum 0.9,
weight decay 5e-4, lr 0.01 with "poly" decay (power 0.9), batch 16, 50K iterations.

YAML shape (every section optional)::

    model:    {name, aux, pretrained_backbone, init_from, options, mean, std}
    data:     DataConfig (sfnet_core.data.config)
    loss:     LossConfig (OHEM and deep supervision, sfnet_core.training.losses)
    optim:    {lr, momentum, weight_decay, nesterov}
    schedule: {iterations, batch_size, poly_power, warmup_iters, warmup_factor}
    runtime:  {seed, device, precision, sync_bn, channels_last, threads, progress, log_interval,
               image_interval, checkpoint_interval, eval_interval, eval_mode, eval_window,
               eval_max_images, rank_digest}

Paths: a relative path written in a recipe file (``model.pretrained_backbone``, ``model.init_from``,
``data.root``, ``data.classes``, ``data.synthetic.cache_dir``, ``data.class_uniform.cache_dir``) is
taken relative to the folder of that recipe file, whatever the working directory; a relative
path given as a command-line override (``data.root=...``) is taken relative to the working
directory, like any other command-line path. Both are stored absolute in ``<out>/config.yaml``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sfnet_core.data.config import DataConfig
from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.device_spec import check_device_spec
from sfnet_core.errors import ConfigError
from sfnet_core.yaml_config import apply_overrides, from_dict, load_yaml


@dataclass
class LossConfig:
    ohem: bool = True
    ohem_thresh: float = 0.7      # keep pixels whose true-class probability is <= this ...
    ohem_min_kept: int = 100000   # ... and at least this many of the hardest (per batch)
    aux_weight: float = 0.4       # weight of each auxiliary (deep supervision) head

    def __post_init__(self) -> None:
        if not 0.0 < self.ohem_thresh <= 1.0:
            raise ConfigError(f"ohem_thresh: must be in (0, 1], got {self.ohem_thresh}")
        if self.ohem_min_kept < 0:
            raise ConfigError(f"ohem_min_kept: must be >= 0, got {self.ohem_min_kept}")
        if self.aux_weight < 0:
            raise ConfigError(f"aux_weight: must be >= 0, got {self.aux_weight}")


@dataclass
class ModelConfig:
    """Which network to build (``sfnet_core.models.build_model``) and its input normalisation."""

    name: str = "sfnet_resnet18"
    aux: bool = True  # deep supervision heads (weighted by loss.aux_weight)
    pretrained_backbone: str | None = None  # ImageNet weights file for the backbone
    # A project checkpoint (trained here, or a released SFNet file converted with sfnet-import)
    # whose weights start this run: every tensor that fits is loaded, the classifiers are
    # re-initialised when the class table differs. Wins over pretrained_backbone; --resume wins
    # over both (sfnet_core.training.init_from).
    init_from: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra build_model keyword arguments
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on 0..1 RGB; stored in the checkpoint
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"model.std: every value must be > 0, got {list(self.std)}")


@dataclass
class OptimConfig:
    """SGD hyper-parameters."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")


@dataclass
class ScheduleConfig:
    """Length of the run and the learning-rate curve (linear warm-up, then poly decay)."""

    iterations: int = 50000
    batch_size: int = 16  # total over all ranks (the paper's 16 = 8 GPUs x 2)
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # lr multiplier at iteration 0 of the warm-up

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"schedule.iterations: must be >= 1, got {self.iterations}")
        if self.batch_size < 1:
            raise ConfigError(f"schedule.batch_size: must be >= 1, got {self.batch_size}")
        if self.poly_power < 0:
            raise ConfigError(f"schedule.poly_power: must be >= 0, got {self.poly_power}")
        if not 0 <= self.warmup_iters < self.iterations:
            raise ConfigError(
                f"schedule.warmup_iters: must be in 0..iterations-1 ({self.iterations - 1}), got {self.warmup_iters}"
            )
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"schedule.warmup_factor: must be in (0, 1], got {self.warmup_factor}")


@dataclass
class RuntimeConfig:
    """Devices, precision, logging and checkpoint cadence (none of it changes the maths on CPU)."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CUDA only)
    channels_last: bool = False
    # CPU intra-op threads per rank (0 = PyTorch's default). On a shared or small machine 1 is
    # often fastest: idle OpenMP workers spin-wait and steal cycles from the busy ones.
    threads: int = 0
    progress: bool = True  # tqdm bar on rank 0 (also disabled when stderr is not a TTY)
    log_interval: int = 20  # iterations between log lines / TensorBoard scalars
    image_interval: int = 500  # iterations between TensorBoard images (0 = never)
    checkpoint_interval: int = 1000  # iterations between last.pt writes
    eval_interval: int = 5000  # iterations between validations (0 = only at the end)
    eval_mode: Literal["whole", "slide"] = "whole"
    eval_window: tuple[int, int] | None = None  # sliding-window size; None = data crop size
    eval_max_images: int = 0  # validate on the first N images only (0 = all)
    rank_digest: bool = True  # check at the end that all DDP ranks hold identical weights

    def __post_init__(self) -> None:
        for name in ("log_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"runtime.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("image_interval", "eval_interval", "eval_max_images", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"runtime.{name}: must be >= 0, got {getattr(self, name)}")
        check_device_spec(self.device, "runtime.device")


@dataclass
class TrainConfig:
    """The whole recipe; ``to_dict`` of it is saved as ``<out>/config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# Every key of the recipe that holds a path (dotted); see the module docstring for how they resolve.
PATH_KEYS = ("model.pretrained_backbone", "model.init_from", "data.root", "data.classes",
             "data.synthetic.cache_dir", "data.class_uniform.cache_dir")

# Keys that were renamed: a recipe still using one gets told what replaced it.
_RENAMED = {("data", "photometric"): "data.color_jitter (0.25 = the released code's jitter; 0 = off)"}


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe YAML, apply ``a.b=value`` overrides, and validate (ConfigError names file + key).

    Relative paths written in the file resolve against the file's folder, those given as
    overrides against the working directory (``PATH_KEYS``); ``~`` is expanded in both.
    """
    data = load_yaml(path)
    source = str(path)
    for (section, key), replacement in _RENAMED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{source}: {section}.{key}: this key was replaced by {replacement}")
    _resolve_paths(data, Path(path).absolute().parent, source)  # a symlinked recipe: its own folder
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{path} (with overrides {' '.join(overrides)})"
        overridden = {item.partition("=")[0] for item in overrides}
        _resolve_paths(data, Path.cwd(), source, only=overridden)
    return from_dict(TrainConfig, data, source=source)


def _resolve_paths(data: dict[str, Any], base: Path, source: str, only: set[str] | None = None) -> None:
    """Make the ``PATH_KEYS`` present in ``data`` absolute against ``base`` (in place)."""
    for dotted in PATH_KEYS:
        if only is not None and dotted not in only:
            continue
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue  # absent, null, or a wrong type that from_dict reports with file and key
        value = node[leaf]
        if not value.strip():
            raise ConfigError(f"{source}: {dotted}: empty path (use null for none)")
        # an absolute value stays as it is; normpath folds "../" without following symlinks
        node[leaf] = os.path.normpath(base / Path(value).expanduser())


def check_input_files(cfg: TrainConfig) -> None:
    """Fail fast, before any rank starts, when a file the recipe names does not exist.

    One line naming the key and the file, and where such files come from (docs/training.md).
    """
    checks = (("model.init_from", cfg.model.init_from,
               "a checkpoint of this project (sfnet-train's best.pt / last.pt, or a released SFNet "
               "file converted with sfnet-import)"),
              ("model.pretrained_backbone", None if cfg.model.init_from else cfg.model.pretrained_backbone,
               "download the ImageNet file named in the recipe (docs/training.md, 'ImageNet backbones') "
               "or set model.pretrained_backbone=null to train from scratch"))
    for key, value, hint in checks:
        if value is not None and not Path(value).is_file():
            what = "is a folder" if Path(value).is_dir() else "file not found"
            raise ConfigError(f"{key}: {value}: {what}; {hint}")
