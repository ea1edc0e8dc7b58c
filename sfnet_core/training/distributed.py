"""DDP plumbing for ``torchrun`` and a data order that is a pure function of (seed, iteration).

``torchrun`` (single node or multi-node) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without
them everything runs as a single process. NCCL is used on CUDA, gloo on CPU.

The batch order is derived from ``DistributedSampler`` (one shuffled permutation per epoch via
``set_epoch``) and every sample carries its own augmentation seed, so resuming at iteration ``i``
replays exactly the batches an uninterrupted run would have seen, with any number of workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sfnet_core.devices import resolve_device
from sfnet_core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, "runtime.device", local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def cleanup_distributed(info: DistInfo | None = None, synchronize: bool = False) -> None:
    """Leave the process group: on success (``synchronize``) all ranks first meet at a barrier.

    The barrier makes every rank finish its last collective before any rank tears down, so no
    rank exits while a peer still sends to it. It is skipped on error paths, where a peer may be
    gone and a barrier would only wait for the gloo/NCCL timeout.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if synchronize and info is not None and info.enabled:
            barrier(info)
    finally:
        dist.destroy_process_group()


def is_torchrun_worker() -> bool:
    """True in a process started by ``torchrun`` for a job of more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def exit_torchrun_worker(status: int) -> None:
    """End a ``torchrun`` worker with ``status`` without running interpreter finalisation.

    Why: in the PyTorch releases we use, ``DistributedDataParallel`` keeps references to the
    default process group that ``destroy_process_group`` cannot drop (measured on torch 2.14:
    after it, gloo's ``pt_gloo_runloop`` / ``gloo_tcp_loop`` threads are still running). Native
    threads that outlive ``destroy_process_group`` race CPython's finalisation: a thread that
    releases a Python-owned object after finalisation has begun is unwound by
    ``PyThread_exit_thread`` inside a ``noexcept`` C++ frame, which ends in ``std::terminate``
    ("terminate called without an active exception", SIGABRT), the intermittent failure of
    issue #9 (pytorch/pytorch#190489 describes the mechanism). By the time this is called every
    output is written and closed (``train`` returned), so the only work finalisation would still
    do is that race: flush the standard streams and leave with ``os._exit``.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken pipe: nothing left to save
            stream.flush()
    os._exit(status)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Plain BatchNorm under DDP updates its running statistics from each rank's local batch; DDP
    re-broadcasts rank 0's buffers at the start of every forward anyway, so doing it before
    validation and at the end only makes evaluation and the final state agree across ranks.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def all_gather_object(obj: T, info: DistInfo) -> list[T]:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes: equal digests = bitwise-equal tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        t = t.reshape(-1)  # 0-d tensors cannot be viewed as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (SeedSequence), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) generator states, checkpoint-safe (tensors and lists only)."""
    py = random.getstate()
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple form (the default)
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of ``get_rng_state`` (tensors may come back on a GPU via ``map_location``)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


SampleKey = tuple  # (index, seed) or (index, seed, (x, y)): one sample of a batch


class IterationBatchSampler(Sampler[list[SampleKey]]):
    """Per-rank batches for iterations ``start .. stop-1`` as lists of ``(index, sample_seed[, centroid])``.

    Epoch ``e`` is ``DistributedSampler(shuffle=True, drop_last=True, seed).set_epoch(e)`` over the
    epoch's positions; iteration ``i`` takes batch ``i % batches_per_epoch`` of epoch
    ``i // batches_per_epoch``. The sample seed depends on (seed, epoch, rank, position) only, so
    the stream is independent of where a run was (re)started and of the number of data-loading
    workers.

    ``plan`` (class-uniform sampling, ``sfnet_core.data.class_uniform.epoch_plan``) maps an epoch
    to ``(images (N,), centroids (N, 2))``; position ``p`` then stands for image ``images[p]``
    with a crop covering ``centroids[p]`` (none when it is ``(-1, -1)``). The plan is a pure
    function of (seed, epoch) too, so resuming stays exact.
    """

    def __init__(self, dataset_len: int, batch_size: int, world_size: int, rank: int, seed: int,
                 start: int, stop: int, plan: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        per_rank = dataset_len // world_size
        if per_rank < batch_size:
            raise ConfigError(
                f"data: the training split has {dataset_len} samples, fewer than one batch "
                f"({batch_size} per rank x {world_size} ranks)"
            )
        self.dataset_len, self.batch_size = dataset_len, batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.start, self.stop = start, stop
        self.batches_per_epoch = per_rank // batch_size
        self.plan = plan

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _epoch_indices(self, epoch: int) -> list[int]:
        sampler: DistributedSampler[int] = DistributedSampler(
            # type: ignore: the stubs want a Dataset; the sampler only takes len(), and a range has one
            range(self.dataset_len), num_replicas=self.world_size, rank=self.rank,  # type: ignore[arg-type]
            shuffle=True, seed=self.seed, drop_last=True,
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, indices = -1, []
        planned: tuple[np.ndarray, np.ndarray] | None = None  # (images, centroids) of this epoch
        for it in range(self.start, self.stop):
            e, b = divmod(it, self.batches_per_epoch)
            if e != epoch:
                epoch, indices = e, self._epoch_indices(e)
                if self.plan is not None:
                    planned = self.plan(e)
                    if len(planned[0]) != self.dataset_len:
                        raise ValueError(f"epoch plan has {len(planned[0])} entries, expected {self.dataset_len}")
            chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
            first = b * self.batch_size
            batch: list[SampleKey] = []
            for j, pos in enumerate(chunk):
                seed = derive_seed(self.seed, e, self.rank, first + j)
                if planned is None:
                    batch.append((pos, seed))
                    continue
                images, centroids = planned
                if centroids[pos][0] < 0:
                    batch.append((int(images[pos]), seed))
                else:
                    batch.append((int(images[pos]), seed, (int(centroids[pos][0]), int(centroids[pos][1]))))
            yield batch


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` runs its random transform under that seed;
    ``ds[(index, seed, (x, y))]`` asks the dataset for a crop covering point (x, y) (``sample``).

    The transforms draw from the global python / numpy / torch generators; seeding them per
    sample (and restoring the caller's state afterwards) makes augmentation reproducible.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours have one

    def __getitem__(self, key: SampleKey):
        index, seed = key[0], key[1]
        centroid = key[2] if len(key) > 2 else None
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU only: leave the CUDA generators alone
            try:
                if centroid is None:
                    return self.dataset[index]
                # type: ignore: only class-uniform runs pass a centroid, and their datasets have sample()
                return self.dataset.sample(index, centroid)  # type: ignore[attr-defined]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
