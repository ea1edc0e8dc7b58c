"""Training engine: ``train(cfg, out_dir)`` (the ``sfnet-train`` command line is ``sfnet_core.cli.train``).

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
"""
from __future__ import annotations

import gc
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from sfnet_core.devices import autocast, resolve_precision
from sfnet_core.errors import ConfigError, SFNetError
from sfnet_core.io_utils import atomic_write
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
from sfnet_core.yaml_config import to_dict

log = logging.getLogger("sfnet_core.training.engine")


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
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(out_dir: Path | None) -> Callable[[], None]:
    """Rank 0: console + ``out_dir/train.log``; other ranks stay quiet except warnings.

    The handlers sit on the ``sfnet_core`` logger, so what the library says during the run
    (backbone and ``init_from`` loading reports, the class-uniform index, checkpoint writes)
    lands in ``train.log`` too. Returns the function that undoes it.
    """
    root = logging.getLogger("sfnet_core")
    previous = (root.level, root.propagate)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if out_dir is not None:
        handlers.append(logging.FileHandler(out_dir / "train.log", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if out_dir is not None else logging.WARNING)
    root.propagate = False

    def undo() -> None:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(previous[0])
        root.propagate = previous[1]

    return undo


# ----------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    out_dir: Path
    iteration: int  # iterations completed
    miou: float | None  # last validation mIoU (0..1)
    best_miou: float | None
    metrics: dict | None  # last validation report (SegmentationMetrics.to_dict())


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _colour_panel(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, mean, std,
                  palette: np.ndarray) -> np.ndarray:
    """(3,H,W) normalised image, (H,W) prediction and ground truth -> (H, 3W, 3) uint8 strip."""
    img = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    img = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    p = palette[pred.detach().cpu().numpy().astype(np.uint8)]
    t = palette[target.detach().cpu().numpy().clip(0, 255).astype(np.uint8)]
    return np.concatenate([img, p, t], axis=1)


# ----------------------------------------------------------------------------- engine
def train(cfg: TrainConfig, out_dir: str | Path, max_iters: int | None = None, resume: bool = False,
          show_progress: bool | None = None) -> TrainResult:
    """Run (or continue) the recipe ``cfg`` writing to ``out_dir``; returns the last metrics.

    ``max_iters`` stops after that many iterations in total (counting resumed ones) while keeping
    the learning-rate schedule of the full ``schedule.iterations`` run, so ``--max-iters k`` then
    ``--resume`` equals one uninterrupted run.
    """
    out = Path(out_dir)
    if not resume and (out / "last.pt").exists():
        # checked on every rank (before joining the group) so that all of them stop alike
        raise ConfigError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if not (resume and (out / "last.pt").exists()):
        check_input_files(cfg)  # a resumed run takes its weights from last.pt
    info = init_distributed(cfg.runtime.device)
    undo_logging: Callable[[], None] | None = None
    trainer: _Trainer | None = None
    finished = False
    try:
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        barrier(info)
        undo_logging = _setup_logging(out if info.is_main else None)
        trainer = _Trainer(cfg, out, info, show_progress, resume)
        result = trainer.run(max_iters, resume)
        finished = True
        return result
    finally:
        # Teardown order (issue #9): the DDP wrapper (whose Reducer holds the process group),
        # the data loader and the model go first, while the group still exists; then every
        # rank meets at a barrier (success only) so none leaves while a peer still talks to it;
        # then the group is destroyed.
        trainer = None
        gc.collect()
        if undo_logging is not None:
            undo_logging()
        cleanup_distributed(info, synchronize=finished)


class _Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, info: DistInfo, show_progress: bool | None,
                 resume: bool = False) -> None:
        from sfnet_core.data.factory import build_datasets
        from sfnet_core.models import build_model
        from sfnet_core.training.losses import SegmentationLoss

        self.cfg, self.out, self.info = cfg, out, info
        self.device = info.device
        self.precision = resolve_precision(cfg.runtime.precision, self.device, "runtime.precision")
        if cfg.schedule.batch_size % info.world_size:
            raise ConfigError(
                f"schedule.batch_size: {cfg.schedule.batch_size} is not divisible by the "
                f"{info.world_size} ranks"
            )
        self.batch_per_rank = cfg.schedule.batch_size // info.world_size
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.show_progress = (cfg.runtime.progress and sys.stderr.isatty()) if show_progress is None else show_progress
        mean, std = tuple(cfg.model.mean), tuple(cfg.model.std)
        self.train_set, self.val_set, self.classes = build_datasets(cfg.data, mean, std)
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
            from sfnet_core.training.init_from import init_from_checkpoint

            init_from_checkpoint(model, cfg.model.init_from, cfg.model.name, self.classes, cfg.model.aux,
                                 cfg.model.options, mean, std)
        elif cfg.model.init_from and info.is_main:
            log.info("model.init_from %s not read: --resume continues from %s", cfg.model.init_from, out / "last.pt")
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
        self.best_miou: float | None = None
        self.writer = None

    def _class_uniform_index(self):
        """The per-class centroid index of the training set: rank 0 builds (or loads) it, then the others load it."""
        from sfnet_core.data.class_uniform import load_or_build_index

        cu = self.cfg.data.class_uniform
        result = None
        if self.info.is_main:
            result = load_or_build_index(self.train_set, self.classes.num_classes, cu.tile, cu.cache_dir)
        barrier(self.info)
        if not self.info.is_main:
            result = load_or_build_index(self.train_set, self.classes.num_classes, cu.tile, cu.cache_dir)
        index, path, built = result
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
        from sfnet_core.checkpoint import save_checkpoint

        if not self.info.is_main:
            return
        save_checkpoint(
            self.out / name, self.model, self.cfg.model.name, self.classes,
            model_options={"aux": self.cfg.model.aux, **self.cfg.model.options},
            normalization={"mean": list(self.cfg.model.mean), "std": list(self.cfg.model.std)},
            train_state=self._train_state() if with_state else None,
        )

    def _restore(self) -> bool:
        from sfnet_core.checkpoint import load_checkpoint

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
        log.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    # ------------------------------------------------------------------ evaluation
    def _validate(self) -> dict:
        from sfnet_core.evaluation.evaluate import evaluate_dataset

        cfg = self.cfg.runtime
        broadcast_buffers(self.model, self.info)
        window = None
        if cfg.eval_mode == "slide":
            window = tuple(cfg.eval_window or self.cfg.data.crop_size)
        n = len(self.val_set)
        indices = list(range(min(n, cfg.eval_max_images) if cfg.eval_max_images else n))
        self.model.eval()
        try:
            with autocast(self.device, self.precision):
                cm = evaluate_dataset(
                    self.model, self.val_set, self.classes.num_classes, self.classes.ignore_index,
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
            from torch.utils.tensorboard import SummaryWriter

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
            from functools import partial

            from sfnet_core.data.class_uniform import epoch_plan

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
        from tqdm import tqdm

        cfg, rt = self.cfg, self.cfg.runtime
        palette = self.classes.palette()
        bar = tqdm(total=stop, initial=self.iteration, disable=not (self.info.is_main and self.show_progress),
                   dynamic_ncols=True, unit="it", desc="train", file=sys.stderr)
        self.ddp.train()
        metrics = None
        try:
            window_start, window_iters, loss_sum = time.perf_counter(), 0, 0.0
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
                if not torch.isfinite(loss):
                    raise SFNetError(f"iteration {it}: the loss is {loss.item()} (diverged); "
                                     "lower optim.lr or check the data")
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

                if self.info.is_main and (self.iteration % rt.log_interval == 0 or self.iteration == stop):
                    elapsed = time.perf_counter() - window_start
                    speed = window_iters / elapsed if elapsed > 0 else float("nan")
                    eta = (stop - self.iteration) / speed if speed > 0 else float("nan")
                    log.info("iter %d/%d loss %.4f (main %.4f aux %.4f) lr %.3e %.2f it/s eta %s",
                             self.iteration, cfg.schedule.iterations, loss_sum / window_iters, parts["main"],
                             parts["aux"], lr, speed, _fmt_eta(eta))
                    self.writer.add_scalar("train/loss", loss_sum / window_iters, self.iteration)
                    self.writer.add_scalar("train/loss_main", parts["main"], self.iteration)
                    self.writer.add_scalar("train/loss_aux", parts["aux"], self.iteration)
                    self.writer.add_scalar("train/lr", lr, self.iteration)
                    self.writer.add_scalar("train/iters_per_s", speed, self.iteration)
                    window_start, window_iters, loss_sum = time.perf_counter(), 0, 0.0
                if self.info.is_main and rt.image_interval and self.iteration % rt.image_interval == 0:
                    panel = _colour_panel(images[0], logits[0].argmax(0), targets[0], cfg.model.mean,
                                          cfg.model.std, palette)
                    self.writer.add_image("train/input_prediction_groundtruth", panel, self.iteration,
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

    def _record_validation(self, metrics: dict) -> None:
        miou = float(metrics["miou"])
        improved = self.best_miou is None or miou > self.best_miou
        if improved:
            self.best_miou = miou
        if not self.info.is_main:
            return
        log.info("validation at iter %d: mIoU %.4f pixel acc %.4f (best %.4f)", self.iteration, miou,
                 metrics["pixel_accuracy"], self.best_miou)
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
        mine = {
            "rank": self.info.rank,
            "params": tensor_digest(dict(self.model.named_parameters())),
            "state": tensor_digest(self.model.state_dict()),
        }
        digests = all_gather_object(mine, self.info)
        if self.info.is_main:
            with atomic_write(self.out / "rank_digests.json") as tmp:
                tmp.write_text(json.dumps(digests, indent=2))
            if len({d["params"] for d in digests}) != 1:  # type: ignore[index]
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
