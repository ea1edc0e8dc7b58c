"""DDP plumbing for ``torchrun`` and a data order that is a pure function of (seed, iteration).

``torchrun`` (single node or multi-node) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without
them everything runs as a single process. NCCL is used on CUDA, gloo on CPU.

The batch order is derived from ``DistributedSampler`` (one shuffled permutation per epoch via
``set_epoch``) and every sample carries its own augmentation seed, so resuming at iteration ``i``
replays exactly the batches an uninterrupted run would have seen, with any number of workers.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sfnet_core.devices import resolve_device
from sfnet_core.errors import ConfigError


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


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def all_gather_object(obj: object, info: DistInfo) -> list[object]:
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
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
    np_state = np.random.get_state()
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


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Per-rank batches for iterations ``start .. stop-1`` as lists of ``(index, sample_seed)``.

    Epoch ``e`` is ``DistributedSampler(shuffle=True, drop_last=True, seed).set_epoch(e)``; iteration
    ``i`` takes batch ``i % batches_per_epoch`` of epoch ``i // batches_per_epoch``. The sample seed
    depends on (seed, epoch, rank, position) only, so the stream is independent of where a run
    was (re)started and of the number of data-loading workers.
    """

    def __init__(self, dataset_len: int, batch_size: int, world_size: int, rank: int, seed: int,
                 start: int, stop: int) -> None:
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

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _epoch_indices(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(
            range(self.dataset_len), num_replicas=self.world_size, rank=self.rank,  # type: ignore[arg-type]
            shuffle=True, seed=self.seed, drop_last=True,
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, indices = -1, []
        for it in range(self.start, self.stop):
            e, b = divmod(it, self.batches_per_epoch)
            if e != epoch:
                epoch, indices = e, self._epoch_indices(e)
            chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
            first = b * self.batch_size
            yield [(idx, derive_seed(self.seed, e, self.rank, first + j)) for j, idx in enumerate(chunk)]


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` runs its random transform under that seed.

    The transforms draw from the global python / numpy / torch generators; seeding them per
    sample (and restoring the caller's state afterwards) makes augmentation reproducible.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU only: leave the CUDA generators alone
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
