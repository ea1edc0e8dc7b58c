"""Training engine: ``train(cfg, out_dir)`` (the ``sfnet-train`` command line is ``sfnet_core.cli.train_command``).

One code path for a laptop CPU, one GPU, and many GPUs / nodes under ``torchrun`` (DDP with a
deterministic per-iteration data order, rank-0 logging and checkpoints). The recipe is the
paper's: SGD (momentum 0.9, weight decay 5e-4), lr 0.01 with poly decay (power 0.9) after an
optional linear warm-up, OHEM cross-entropy plus auxiliary deep-supervision losses.

The first weights come from ``--resume`` (``DIR/last.pt``), else ``model.init_from`` (a project
checkpoint: fine-tuning, ``sfnet_core.training.init_from``), else ``model.pretrained_backbone``
(ImageNet weights for the encoder), else the seeded random initialisation.

Resuming (``--resume``) restores model, optimiser, scheduler, GradScaler, iteration, best mIoU
and RNG states from ``DIR/last.pt``; because every batch is a pure function of (seed,
iteration), an interrupted run continues bit-for-bit like an uninterrupted one (on CPU).

Outputs under ``DIR``: ``config.yaml`` (resolved recipe), ``last.pt`` (with train_state),
``best.pt`` (best validation mIoU; the final weights when ``data.val_split`` is null),
``train.log``, ``tensorboard/`` (scalars and images), ``metrics.json`` (last validation) and,
under DDP, ``rank_digests.json``.

Failing early and cleanly: the recipe (every number finite), the data (datasets open, the first
sample of each split reads, the crop fits the images, a batch fits the memory) and the start
weights are checked before anything is created in ``DIR``; what the library logs meanwhile is
kept and written to ``train.log`` once the folder exists. A run that stops before any checkpoint
exists in ``DIR`` removes everything it created (``sfnet_core.training.run_folder``); once one
exists, the folder stays as it is. A non-finite loss stops the run before the optimiser step, and
no checkpoint is ever written from weights holding NaN or infinity, so ``last.pt`` keeps the
last good state.
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
from sfnet_core.data.class_uniform import CentroidIndex, epoch_plan, load_or_build_index
from sfnet_core.data.datasets import SegmentationDataset
from sfnet_core.data.factory import build_datasets, check_crop_fits, largest_image_size
from sfnet_core.devices import autocast, resolve_precision
from sfnet_core.errors import ConfigError, SFNetError
from sfnet_core.evaluation.report_text import percent
from sfnet_core.evaluation.scoring import evaluate_dataset
from sfnet_core.io_utils import atomic_write
from sfnet_core.models import build_model
from sfnet_core.training.config import TrainConfig, check_input_files
from sfnet_core.training.distributed import (
    DistInfo,
    IterationBatchSampler,
    SeededDataset,
    all_gather_object,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    derive_seed,
    get_rng_state,
    init_distributed,
    seed_everything,
    set_rng_state,
    tensor_digest,
)
from sfnet_core.training.init_from import init_from_checkpoint
from sfnet_core.training.losses import SegmentationLoss
from sfnet_core.training.run_folder import RunFolder, remove_stale_staging
from sfnet_core.yaml_config import check_finite, to_dict

if TYPE_CHECKING:  # imported when the run starts (rank 0): TensorBoard costs about a second
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("sfnet_core.training.engine")

# Besides every runtime.log_interval iterations, a progress line (iteration/total, ETA) is logged
# after the first iteration of a run and whenever this many seconds passed without one (slow
# machines, big crops, a log_interval longer than the run): a running job is never silent for long.
PROGRESS_SECONDS = 10.0


# ----------------------------------------------------------------------------- schedule
def lr_factor(iteration: int, cfg_schedule) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based): linear warm-up, then poly decay.

    The poly curve is the paper's ``(1 - iter / total_iter) ** 0.9`` over the whole run, so a
    warm-up only changes the first ``warmup_iters`` steps.
    """
    s = cfg_schedule
    poly = (1.0 - min(iteration, s.iterations) / s.iterations) ** s.poly_power
    if iteration < s.warmup_iters:
        alpha = iteration / s.warmup_iters
        return poly * (s.warmup_factor * (1 - alpha) + alpha)
    return poly


# ----------------------------------------------------------------------------- logging
class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _Held(logging.Handler):
    """Keeps the records logged before the run folder exists, for ``train.log``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _RunLogging:
    """Rank 0: console + ``train.log``; other ranks stay quiet except warnings.

    The handlers sit on the ``sfnet_core`` logger, so what the library says during the run
    (backbone and ``init_from`` loading reports, the class-uniform index, checkpoint writes)
    lands in ``train.log`` too. Until ``to_file`` is called (the run folder exists) the records
    are held in memory, so a run refused during its checks creates no file at all.
    """

    def __init__(self, main: bool) -> None:
        self.root = logging.getLogger("sfnet_core")
        self.previous = (self.root.level, self.root.propagate)
        self.fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        self.held = _Held() if main else None
        self.file: logging.FileHandler | None = None
        self.handlers: list[logging.Handler] = [_TqdmHandler()] + ([self.held] if self.held else [])
        for h in self.handlers:
            h.setFormatter(self.fmt)
            self.root.addHandler(h)
        self.root.setLevel(logging.INFO if main else logging.WARNING)
        self.root.propagate = False

    def to_file(self, path: Path) -> None:
        """Write the held records to ``path`` and log there from now on."""
        assert self.held is not None
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(self.fmt)
        for record in self.held.records:
            handler.handle(record)
        self.root.removeHandler(self.held)
        self.handlers.remove(self.held)
        self.held = None
        self.root.addHandler(handler)
        self.handlers.append(handler)
        self.file = handler

    def file_only(self, message: str) -> None:
        """An ERROR line in ``train.log`` only (the console gets the command's own error line)."""
        if self.file is not None:
            self.file.handle(self.root.makeRecord(self.root.name, logging.ERROR, __file__, 0, message, (), None))

    def undo(self) -> None:
        for h in self.handlers:
            self.root.removeHandler(h)
            h.close()
        self.root.setLevel(self.previous[0])
        self.root.propagate = self.previous[1]


# ----------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    out_dir: Path
    iteration: int  # iterations completed
    miou: float | None  # last validation mIoU (0..1)
    best_miou: float | None
    metrics: dict | None  # last validation report (SegmentationMetrics.to_dict())


def _colour_panel(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, mean, std,
                  palette: np.ndarray) -> np.ndarray:
    """(3,H,W) normalised image, (H,W) prediction and ground truth -> (H, 3W, 3) uint8 strip."""
    img = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    rgb = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    p = palette[pred.detach().cpu().numpy().astype(np.uint8)]
    t = palette[target.detach().cpu().numpy().clip(0, 255).astype(np.uint8)]
    return np.concatenate([rgb, p, t], axis=1)


# ----------------------------------------------------------------------------- engine
def train(cfg: TrainConfig, out_dir: str | Path, max_iters: int | None = None, resume: bool = False,
          show_progress: bool | None = None) -> TrainResult:
    """Run (or continue) the recipe ``cfg`` writing to ``out_dir``; returns the last metrics.

    ``max_iters`` stops after that many iterations in total (counting resumed ones) while keeping
    the learning-rate schedule of the full ``schedule.iterations`` run, so ``--max-iters k`` then
    ``--resume`` equals one uninterrupted run.
    """
    out = Path(out_dir)
    # a recipe built in Python never went through the YAML loader's check
    check_finite(cfg, "recipe")
    if not resume and (out / "last.pt").exists():
        # checked on every rank (before joining the group) so that all of them stop alike
        raise ConfigError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if not (resume and (out / "last.pt").exists()):
        check_input_files(cfg)  # a resumed run takes its weights from last.pt
    info = init_distributed(cfg.runtime.device)
    logs: _RunLogging | None = None
    trainer: _Trainer | None = None
    folder = RunFolder(out) if info.is_main else None
    finished = False
    try:
        logs = _RunLogging(info.is_main)
        # data, crop, memory and start weights are checked here, before anything is written
        trainer = _Trainer(cfg, out, info, show_progress, resume)
        if folder is not None and logs is not None:
            folder.create()
            logs.to_file(out / "train.log")
            remove_stale_staging(out)
        barrier(info)
        result = trainer.run(max_iters, resume)
        finished = True
        return result
    except SFNetError as exc:
        if logs is not None:
            logs.file_only(f"stopped: {exc}")  # a kept run folder says why it ends there
        raise
    finally:
        # Teardown order (issue #9): the DDP wrapper (whose Reducer holds the process group),
        # the data loader and the model go first, while the group still exists; then every
        # rank meets at a barrier (success only) so none leaves while a peer still talks to it;
        # then the group is destroyed.
        trainer = None
        gc.collect()
        if logs is not None:
            logs.undo()  # closes train.log before a failed run's files are removed
        if folder is not None and not finished:
            # no checkpoint yet: nothing worth keeping, and the corrected run may use the folder
            folder.remove_created()
        cleanup_distributed(info, synchronize=finished)


class _Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, info: DistInfo, show_progress: bool | None,
                 resume: bool = False) -> None:
        self.cfg, self.out, self.info = cfg, out, info
        self.device = info.device
        self.precision = resolve_precision(cfg.runtime.precision, self.device, "runtime.precision")
        if cfg.schedule.batch_size % info.world_size:
            raise ConfigError(
                f"schedule.batch_size: {cfg.schedule.batch_size} is not divisible by the "
                f"{info.world_size} ranks"
            )
        self.batch_per_rank = cfg.schedule.batch_size // info.world_size
        synced = info.enabled and cfg.runtime.sync_bn and self.device.type == "cuda"
        if self.batch_per_rank < 2 and not synced:
            # BatchNorm after the pyramid pooling's 1x1 bin sees one value per channel: torch
            # refuses to train on it ("Expected more than 1 value per channel").
            raise ConfigError(
                f"schedule.batch_size: {cfg.schedule.batch_size} over {info.world_size} rank(s) is "
                f"{self.batch_per_rank} image per rank; BatchNorm needs at least 2 per rank "
                "(raise schedule.batch_size, or use SyncBatchNorm on several GPUs)")
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.show_progress = (cfg.runtime.progress and sys.stderr.isatty()) if show_progress is None else show_progress
        mean, std = tuple(cfg.model.mean), tuple(cfg.model.std)
        train_set, self.val_set, self.classes = build_datasets(cfg.data, mean, std)
        assert train_set is not None  # build_datasets(train=True) always opens the training split
        self.train_set: SegmentationDataset = train_set
        self._check_crop()
        self.centroids = self._class_uniform_index() if cfg.data.class_uniform.pct > 0 else None

        # Where the first weights come from: --resume (last.pt) > model.init_from > pretrained_backbone.
        resuming = resume and (out / "last.pt").exists()
        backbone = cfg.model.pretrained_backbone
        if resuming or cfg.model.init_from:
            if backbone and info.is_main:
                log.info("model.pretrained_backbone %s not read: the weights come from %s", backbone,
                         f"{out / 'last.pt'} (--resume)" if resuming else f"model.init_from {cfg.model.init_from}")
            backbone = None
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        seed_everything(cfg.runtime.seed)
        model = build_model(
            cfg.model.name, self.classes.num_classes, aux=cfg.model.aux,
            pretrained_backbone=backbone, **cfg.model.options,
        )
        if cfg.model.init_from and not resuming:
            init_from_checkpoint(model, cfg.model.init_from, cfg.model.name, self.classes, cfg.model.aux,
                                 cfg.model.options, mean, std)
        elif cfg.model.init_from and info.is_main:
            log.info("model.init_from %s not read: --resume continues from %s", cfg.model.init_from, out / "last.pt")
        self._check_memory(1 + len(getattr(model, "aux_heads", ())))
        self._check_samples()
        model = model.to(self.device)
        if cfg.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if info.enabled and cfg.runtime.sync_bn and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # On CPU (gloo) BatchNorm stays per-rank: SyncBatchNorm's kernels are CUDA-only. Rank 0's
        # running statistics are what DDP broadcasts and what the checkpoint stores.
        self.model = model
        self.ddp = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if info.enabled else model
        )
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, cfg.schedule)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.criterion = SegmentationLoss(cfg.loss, ignore_index=self.classes.ignore_index)
        self.iteration = 0
        self.saved_iteration: int | None = None  # what last.pt holds (None: no last.pt)
        self.best_miou: float | None = None
        self.writer: SummaryWriter | None = None  # rank 0, from the start of the run

    def _check_crop(self) -> None:
        """Before anything is written: the crop fits the training images."""
        note = check_crop_fits(self.cfg.data, largest_image_size(self.train_set))
        if note and self.info.is_main:
            log.warning("%s", note)

    def _check_samples(self) -> None:
        """Before anything is written: the first sample of each split reads (DataError naming the file)."""
        for dataset in (self.train_set, self.val_set):
            if dataset is not None and len(dataset):
                if hasattr(dataset, "load"):
                    dataset.load(0)  # the decoded, checked pair, without the transform's randomness
                else:
                    dataset[0]

    def _check_memory(self, heads: int) -> None:
        """Refuse a batch that cannot fit: a lower bound of one training step's memory (input,
        labels, and every head's full-resolution logits with their gradients; the network's
        own activations come on top) against what the device has free."""
        if self.device.type == "cuda":
            free, where = torch.cuda.mem_get_info(self.device)[0], f"free on {self.device}"
            ranks = 1
        else:
            available = _mem_available()
            if available is None:
                return
            free = available
            ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.info.world_size))
            where = "available (MemAvailable in /proc/meminfo)" + (f" for {ranks} ranks" if ranks > 1 else "")
        check_step_memory(self.cfg.data.crop_size, self.batch_per_rank, self.cfg.schedule.batch_size, heads,
                          self.classes.num_classes, free, where, ranks)

    def _class_uniform_index(self) -> CentroidIndex:
        """The per-class centroid index of the training set: rank 0 builds (or loads) it, then the others load it."""
        cu = self.cfg.data.class_uniform
        first = load_or_build_index(self.train_set, self.classes.num_classes, cu.tile, cu.cache_dir) \
            if self.info.is_main else None
        barrier(self.info)
        index, path, built = first if first is not None else \
            load_or_build_index(self.train_set, self.classes.num_classes, cu.tile, cu.cache_dir)
        if self.info.is_main:
            counts = index.counts()
            absent = [self.classes.names[c] for c in range(self.classes.num_classes) if counts[c] == 0]
            log.info("class-uniform sampling: %.0f%% of the crops on one of %d classes (%s index %s)%s",
                     100 * cu.pct, len(index.classes_present), "new" if built else "cached", path,
                     f"; never labelled, not sampled: {', '.join(absent)}" if absent else "")
        return index

    # ------------------------------------------------------------------ state
    def _train_state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
            "world_size": self.info.world_size,
            "config": to_dict(self.cfg),
        }

    def _save(self, name: str, with_state: bool) -> None:
        # every rank checks (their parameters are identical), so all of them stop alike
        bad, total = _non_finite_tensors(self.model.state_dict(), self.optimizer.state_dict()["state"])
        if bad:
            raise SFNetError(
                f"iteration {self.iteration}: {len(bad)} of {total} weight and optimiser tensors hold NaN or "
                f"infinity (e.g. {bad[0]}): training diverged; {name} was not written, {self._kept()}; "
                "lower optim.lr or check the data")
        if not self.info.is_main:
            if name == "last.pt" and with_state:
                self.saved_iteration = self.iteration
            return
        save_checkpoint(
            self.out / name, self.model, self.cfg.model.name, self.classes,
            model_options={"aux": self.cfg.model.aux, **self.cfg.model.options},
            normalization={"mean": list(self.cfg.model.mean), "std": list(self.cfg.model.std)},
            train_state=self._train_state() if with_state else None,
        )
        if name == "last.pt" and with_state:
            self.saved_iteration = self.iteration

    def _kept(self) -> str:
        if self.saved_iteration is None:
            return "there is no last.pt"
        return f"last.pt keeps iteration {self.saved_iteration}"

    def _restore(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            log.warning("--resume: %s does not exist yet, starting from iteration 0", path)
            return False
        ck = load_checkpoint(path, expected_num_classes=self.classes.num_classes, map_location=self.device)
        if ck.model_name != self.cfg.model.name:
            raise ConfigError(f"{path}: was trained as {ck.model_name!r} but the recipe says "
                              f"model.name {self.cfg.model.name!r}")
        state = ck.train_state
        if not state:
            raise ConfigError(f"{path}: has no train_state to resume from (is it a best.pt copy?)")
        if state.get("world_size") != self.info.world_size:
            # The data order is a function of the world size; changing it continues correctly
            # but not bit-identically.
            log.warning("resuming a %s-rank run on %d ranks: the data order changes",
                        state.get("world_size"), self.info.world_size)
        changed = _changed_keys(state.get("config", {}), to_dict(self.cfg), skip=("runtime",))
        if changed:
            log.warning("resuming with a recipe that differs from the interrupted run in: %s", ", ".join(changed))
        self.model.load_state_dict(ck.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and self.scaler.is_enabled():  # empty when saved by an fp32/bf16 run
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_miou = state.get("best_miou")
        set_rng_state(state["rng"])
        self.saved_iteration = self.iteration
        log.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    # ------------------------------------------------------------------ evaluation
    def _validate(self) -> dict:
        cfg = self.cfg.runtime
        broadcast_buffers(self.model, self.info)
        val_set = self.val_set
        assert val_set is not None  # validation runs only with a validation split
        window = None
        if cfg.eval_mode == "slide":
            window = cfg.eval_window or self.cfg.data.crop_size
        n = len(val_set)
        indices = list(range(min(n, cfg.eval_max_images) if cfg.eval_max_images else n))
        self.model.eval()
        try:
            with autocast(self.device, self.precision):
                cm = evaluate_dataset(
                    self.model, val_set, self.classes.num_classes, self.classes.ignore_index,
                    self.device, window=window,
                    indices=indices[self.info.rank::self.info.world_size],
                )
        finally:
            self.model.train()
        cm.all_reduce()
        return cm.report(self.classes.names)

    # ------------------------------------------------------------------ loop
    def run(self, max_iters: int | None, resume: bool) -> TrainResult:
        cfg = self.cfg
        total = cfg.schedule.iterations
        stop = total if max_iters is None else min(max_iters, total)
        if resume:
            self._restore()
        if self.info.is_main:
            with atomic_write(self.out / "config.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard (~1 s), rank 0 only

            # purge_step drops events a crashed run logged after the checkpoint we resume from
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.iteration or None)
            log.info("device %s, precision %s, %d rank(s), batch %d per rank, %d train / %d val samples, "
                     "iterations %d -> %d of %d", self.device, self.precision, self.info.world_size,
                     self.batch_per_rank, len(self.train_set), len(self.val_set or ()), self.iteration, stop, total)
            if self.val_set is None:
                log.warning("data.val_split is null: no validation, no mIoU; best.pt will hold the final "
                            "weights (evaluate them with sfnet-eval on held-out data)")
        metrics: dict | None = None
        try:
            if self.iteration < stop:
                metrics = self._loop(stop)
            self._finish()
        finally:
            if self.writer is not None:
                self.writer.close()
        return TrainResult(self.out, self.iteration, metrics["miou"] if metrics else None, self.best_miou, metrics)

    def _loader(self, stop: int) -> DataLoader:
        plan = None
        if self.centroids is not None:
            plan = partial(epoch_plan, self.centroids, self.cfg.data.class_uniform.pct, self.cfg.runtime.seed)
        sampler = IterationBatchSampler(
            len(self.train_set), self.batch_per_rank, self.info.world_size, self.info.rank,
            self.cfg.runtime.seed, self.iteration, stop, plan=plan,
        )
        workers = self.cfg.data.workers
        return DataLoader(
            SeededDataset(self.train_set), batch_sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )

    def _loop(self, stop: int) -> dict | None:
        cfg, rt = self.cfg, self.cfg.runtime
        writer = self.writer  # rank 0 only
        palette = self.classes.palette()
        bar = tqdm(total=stop, initial=self.iteration, disable=not (self.info.is_main and self.show_progress),
                   dynamic_ncols=True, unit="it", desc="train", file=sys.stderr)
        self.ddp.train()
        metrics = None
        try:
            window_start, window_iters, loss_sum = time.perf_counter(), 0, 0.0
            first, last_line = self.iteration + 1, time.perf_counter()
            for images, targets in self._loader(stop):
                it = self.iteration
                # Model-side randomness (dropout) as a function of the iteration as well, so it
                # survives a resume without depending on how much RNG the data pipeline consumed.
                torch.manual_seed(derive_seed(rt.seed, it, self.info.rank, 1))
                images = images.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
                if rt.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.precision):
                    logits, aux_logits = self.ddp(images)
                    loss, parts = self.criterion(logits, aux_logits, targets)
                self._check_loss(loss, parts, it + 1)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.iteration = it + 1
                loss_value = float(loss.detach())
                loss_sum += loss_value
                window_iters += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)

                regular = self.iteration % rt.log_interval == 0 or self.iteration == stop
                # early lines (first iteration, then every PROGRESS_SECONDS) so a slow run is not
                # silent; they go to the log only, TensorBoard keeps its regular steps
                early = self.iteration == first or time.perf_counter() - last_line >= PROGRESS_SECONDS
                if self.info.is_main and (regular or early):
                    last_line = time.perf_counter()
                    elapsed = last_line - window_start
                    speed = window_iters / elapsed if elapsed > 0 else float("nan")
                    eta = (stop - self.iteration) / speed if speed > 0 else float("nan")
                    log.info("iter %d/%d loss %.4f (main %.4f aux %.4f) lr %.3e %.2f it/s eta %s",
                             self.iteration, stop, loss_sum / window_iters, parts["main"],
                             parts["aux"], lr, speed, _fmt_eta(eta))
                if writer is not None and regular:
                    writer.add_scalar("train/loss", loss_sum / window_iters, self.iteration)
                    writer.add_scalar("train/loss_main", parts["main"], self.iteration)
                    writer.add_scalar("train/loss_aux", parts["aux"], self.iteration)
                    writer.add_scalar("train/lr", lr, self.iteration)
                    writer.add_scalar("train/iters_per_s", speed, self.iteration)
                    window_start, window_iters, loss_sum = time.perf_counter(), 0, 0.0
                if writer is not None and rt.image_interval and self.iteration % rt.image_interval == 0:
                    panel = _colour_panel(images[0], logits[0].argmax(0), targets[0], cfg.model.mean,
                                          cfg.model.std, palette)
                    writer.add_image("train/input_prediction_groundtruth", panel, self.iteration,
                                          dataformats="HWC")

                at_end = self.iteration == stop
                if self.val_set is not None and (
                    at_end or (rt.eval_interval and self.iteration % rt.eval_interval == 0)
                ):
                    metrics = self._validate()
                    self._record_validation(metrics)
                if at_end or self.iteration % rt.checkpoint_interval == 0:
                    self._save("last.pt", with_state=True)
                    if at_end and self.val_set is None:
                        # No validation split, so nothing to choose the best weights by: best.pt
                        # holds the last ones, so sfnet-eval / sfnet-export find it as always.
                        self._save("best.pt", with_state=False)
                    barrier(self.info)
        finally:
            bar.close()  # also on errors: tqdm's monitor thread must not outlive the run
        return metrics

    def _check_loss(self, loss: torch.Tensor, parts: dict[str, float], iteration: int) -> None:
        """Stop before the optimiser step when the loss is NaN or infinite (on any rank: under
        DDP the ranks agree first, so none is left waiting in the gradient all-reduce)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.info.enabled:
            torch.distributed.all_reduce(bad)
        if not bad.item():
            return
        value = float(loss.detach())
        if math.isfinite(value):
            what = "the loss of another rank is not finite"
        else:
            terms = [f"{name} loss {v}" for name, v in parts.items() if not math.isfinite(v)]
            what = f"the loss is {value} ({', '.join(terms) or 'its finite terms overflowed'})"
        raise SFNetError(
            f"iteration {iteration}: {what}: training diverged; stopped before the update, {self._kept()}; "
            "lower optim.lr or check the data")

    def _record_validation(self, metrics: dict) -> None:
        miou = float(metrics["miou"])
        improved = self.best_miou is None or miou > self.best_miou
        if improved:
            self.best_miou = miou
        if not self.info.is_main:
            return
        log.info("validation at iter %d: mIoU %s, pixel accuracy %s (best mIoU %s)", self.iteration, percent(miou),
                 percent(metrics["pixel_accuracy"]), percent(self.best_miou))
        if self.writer is not None:
            self.writer.add_scalar("val/miou", miou, self.iteration)
            self.writer.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], self.iteration)
        with atomic_write(self.out / "metrics.json") as tmp:
            tmp.write_text(json.dumps({"iteration": self.iteration, **_jsonable(metrics)}, indent=2))
        if improved:
            self._save("best.pt", with_state=False)

    def _finish(self) -> None:
        """Under DDP: prove that every rank ends with the same weights (rank_digests.json)."""
        if not self.info.enabled or not self.cfg.runtime.rank_digest:
            return
        broadcast_buffers(self.model, self.info)
        mine: dict[str, Any] = {
            "rank": self.info.rank,
            "params": tensor_digest(dict(self.model.named_parameters())),
            "state": tensor_digest(self.model.state_dict()),
        }
        digests = all_gather_object(mine, self.info)
        if self.info.is_main:
            with atomic_write(self.out / "rank_digests.json") as tmp:
                tmp.write_text(json.dumps(digests, indent=2))
            if len({d["params"] for d in digests}) != 1:
                raise SFNetError(f"DDP ranks diverged: parameter digests differ across ranks: {digests}")
            log.info("all %d ranks hold identical parameters (sha256 %s)", self.info.world_size, mine["params"][:16])


def _changed_keys(old: Any, new: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else [prefix.rstrip(".") or "<root>"]
    out = []
    for key in sorted(set(old) | set(new)):
        if key in skip:
            continue
        out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
    return out


def _non_finite_tensors(*trees: Any) -> tuple[list[str], int]:
    """Names of the floating-point tensors holding NaN or infinity in nested dicts, and the
    number of tensors looked at."""
    bad: list[str] = []
    total = 0

    def walk(node: Any, name: str) -> None:
        nonlocal total
        if isinstance(node, torch.Tensor):
            total += 1
            if node.is_floating_point() and not bool(torch.isfinite(node).all()):
                bad.append(name)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}.{key}" if name else str(key))

    for i, tree in enumerate(trees):
        walk(tree, "" if i == 0 else "optimizer")
    return bad, total


def step_memory_lower_bound(crop_size: tuple[int, int], batch_per_rank: int, heads: int, num_classes: int) -> int:
    """Bytes one training step needs at least on one rank: the input (float32) and labels (int64),
    and each head's logits at full resolution (the loss upsamples them to the label) with their
    gradients. The network's own activations come on top, so the real need is larger."""
    ch, cw = crop_size
    return batch_per_rank * ch * cw * (3 * 4 + 8 + heads * num_classes * 4 * 2)


def check_step_memory(crop_size: tuple[int, int], batch_per_rank: int, batch_size: int, heads: int,
                      num_classes: int, free: int, where: str, ranks: int = 1) -> None:
    """ConfigError saying the estimate and the fix when ``step_memory_lower_bound`` (x ``ranks``
    sharing the memory) exceeds ``free`` bytes."""
    needed = step_memory_lower_bound(crop_size, batch_per_rank, heads, num_classes) * ranks
    if needed > free:
        ch, cw = crop_size
        raise ConfigError(
            f"data.crop_size: {ch}x{cw} crops, {batch_per_rank} per rank (schedule.batch_size {batch_size}), "
            f"need at least {needed / 1e9:.1f} GB for one training step (the full-resolution logits of "
            f"{heads} head(s) x {num_classes} classes and their gradients alone), more than the "
            f"{free / 1e9:.1f} GB {where}; lower data.crop_size or schedule.batch_size")


def _mem_available() -> int | None:
    """Bytes of MemAvailable in /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj
