"""Run a fleet: one task per bag, on this machine's workers or on a Ray cluster, resumable.

Each bag is one task (``evaluate_task``): the same function runs in this process (one worker),
in a pool of worker processes (a worker per GPU, or per CPU core with the threads split between
them) and as a Ray task with its resources declared. A finished bag's result is written at once,
atomically, to the run's partial folder; a run killed half way and started again with the same
bags, models and settings skips the bags already there. A bag that cannot be read or evaluated
is recorded with its reason and does not stop the others.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sfnet_core.errors import SFNetError
from sfnet_core.io_utils import file_sha256
from sfnet_ros.conversions import ImageConversionError
from sfnet_ros.tools.bag_io import BagError, BagReader, read_label_classes
from sfnet_ros.tools.fleet.results import BagResult, ResultError
from sfnet_ros.tools.fleet.sources import Camera, bag_identity


@dataclass(frozen=True)
class FleetOptions:
    """What every task needs: the models, how to run them, what to keep."""

    checkpoint: str
    cameras: tuple[Camera, ...]
    baseline: str | None = None  # A/B: the model on the cars today; ``checkpoint`` is the candidate
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # per worker; 0: this process's cores divided among the workers
    batch_size: int = 4
    keep: int = 8  # strips kept per bag and kind
    label_classes: str | None = None  # a class table whose id_map maps the bags' label values

    @property
    def models(self) -> list[str]:
        return [self.baseline, self.checkpoint] if self.baseline else [self.checkpoint]


def settings_digest(options: FleetOptions) -> str:
    """What a bag's numbers depend on: the model files' contents and every setting but threads."""
    h = hashlib.sha256()
    for model in options.models:
        h.update(file_sha256(model).encode())
    if options.label_classes:
        h.update(file_sha256(options.label_classes).encode())
    described = asdict(options)
    for key in ("checkpoint", "baseline", "threads", "label_classes"):
        described.pop(key)
    h.update(json.dumps(described, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class Task:
    bag: Path
    name: str  # as shown in the report
    identity: str
    frames: int  # image messages of the fleet's cameras (for the progress bar)


@dataclass
class Outcome:
    task: Task
    result: BagResult | None = None
    error: str | None = None


@dataclass
class FleetRun:
    results: list[BagResult] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    reused: int = 0  # bags taken from an earlier, interrupted run
    wall_s: float = 0.0
    workers: int = 1
    executor: str = "local"


# ----------------------------------------------------------------------------- one task
_MODELS: dict[tuple, list[Any]] = {}  # per process: the loaded models, reused by every bag


def _segmenters(options: FleetOptions, threads: int) -> list[Any]:
    key = (tuple(options.models), options.backend, options.device, options.precision, threads)
    if key not in _MODELS:
        from sfnet_core.inference import Segmenter  # lazy: torch
        from sfnet_core.threads import apply_threads

        # torch's own threads too (Segmenter's ``threads`` sets ONNX Runtime's and OpenVINO's): two
        # workers of a 2-core machine with torch's default 2 threads each ran at half the speed of one
        count = apply_threads(threads or None)
        loaded = [Segmenter.from_checkpoint(path, device=options.device, precision=options.precision,
                                            warmup=False, backend=options.backend, threads=count)
                  for path in options.models]
        if len(loaded) == 2 and list(loaded[0].classes.names) != list(loaded[1].classes.names):
            raise SFNetError(f"--baseline {options.baseline} and --checkpoint {options.checkpoint} have different "
                             "class tables; an A/B comparison needs the same classes")
        _MODELS.clear()
        _MODELS[key] = loaded
    return _MODELS[key]


def model_class_names(path: str) -> list[str]:
    """The class names of a model file (.onnx metadata, or the checkpoint's table)."""
    if path.endswith(".onnx"):
        from sfnet_core.onnx.metadata import read_onnx_info  # lazy: onnx

        return list(read_onnx_info(path).classes.names)
    from sfnet_core.checkpoint import load_checkpoint  # lazy: torch

    return list(load_checkpoint(path).classes.names)


def _label_lut(options: FleetOptions, class_names: Sequence[str]) -> Any:
    return read_label_classes(options.label_classes, class_names)[1] if options.label_classes else None


def evaluate_task(task: Task, options: FleetOptions, settings: str, threads: int,
                  progress: Callable[[int], None] | None = None) -> Outcome:
    """Evaluate one bag; a bag-level failure is an Outcome with its reason, never an exception
    (the fleet goes on). Errors of the models themselves (a bad checkpoint) are raised."""
    from sfnet_ros.tools.fleet.evaluate import evaluate_bag

    segmenters = _segmenters(options, threads)
    lut = _label_lut(options, segmenters[0].classes.names)
    try:
        result = evaluate_bag(task.bag, task.name, task.identity, settings, options.cameras, segmenters,
                              batch_size=options.batch_size, keep=options.keep, label_lut=lut, progress=progress)
    except (BagError, ImageConversionError, OSError) as exc:
        return Outcome(task, error=str(exc) or exc.__class__.__name__)
    result.info["models"] = [{"path": str(p), "name": s.model_name or Path(p).stem, "backend": s.backend.summary()}
                             for p, s in zip(options.models, segmenters)]
    result.info["device"] = str(segmenters[0].device)
    classes = segmenters[0].classes
    result.info["classes"] = [{"id": i, "name": n, "color": [int(v) for v in c]}
                              for i, (n, c) in enumerate(zip(classes.names, classes.palette()))]
    result.info["ignore_index"] = int(classes.ignore_index)
    return Outcome(task, result=result)


# ----------------------------------------------------------------------------- planning
def plan(bags: Sequence[Path], names: Sequence[str], cameras: Sequence[Camera]) -> tuple[list[Task], list[dict]]:
    """A task per readable bag (frames counted for the progress bar); the others with reasons."""
    tasks, failed = [], []
    for bag, name in zip(bags, names):
        try:
            with BagReader(bag) as reader:
                frames = 0
                for camera in cameras:
                    info = reader.check_topic(camera.image_topic, what=f"camera {camera.name!r}: image topic")
                    frames += info.count
            tasks.append(Task(bag, name, bag_identity(bag), frames))
        except (BagError, OSError) as exc:
            failed.append({"bag": name, "reason": str(exc)})
    return tasks, failed


def partial_path(folder: Path, task: Task, settings: str) -> Path:
    return folder / f"{task.identity}-{settings}.npz"


# ----------------------------------------------------------------------------- executors
def _worker_init(queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool; no traceback per worker
    _WORKER["queue"] = queue


_WORKER: dict[str, Any] = {}


def _worker_task(args: tuple[Task, FleetOptions, str, int]) -> Outcome:
    task, options, settings, threads = args
    queue = _WORKER.get("queue")
    return evaluate_task(task, options, settings, threads, progress=queue.put if queue is not None else None)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[tuple[Any, Any]]:
    """A spawn-context process pool (fork after torch or DDS threads start is unsafe) and a queue
    its workers report frames done on; terminated on any exit, so Ctrl-C leaves no worker behind."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pool = context.Pool(workers, initializer=_worker_init, initargs=(queue,))
    try:
        yield pool, queue
    finally:
        pool.terminate()
        pool.join()
        queue.close()


def _local_outcomes(tasks: list[Task], options: FleetOptions, settings: str, workers: int, threads: int,
                    progress: Callable[[int], None]) -> Iterator[Outcome]:
    if workers <= 1:
        for task in tasks:
            yield evaluate_task(task, options, settings, threads, progress)
        return
    with _pool(workers) as (pool, queue):
        stop = threading.Event()

        def relay() -> None:  # frames done in the workers -> the progress bar
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    progress(queue.get(timeout=0.2))

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            yield from pool.imap_unordered(_worker_task, [(t, options, settings, threads) for t in tasks])
        finally:
            stop.set()
            reader.join(2)


def _ray_outcomes(tasks: list[Task], options: FleetOptions, settings: str, address: str, cpus: float,
                  gpus: float, threads: int, progress: Callable[[int], None]) -> Iterator[Outcome]:
    """One Ray task per bag with ``cpus`` / ``gpus`` declared; results come back to this process
    (which writes them), so the cluster's nodes need the bags and models at the same paths but no
    shared place to write. ``address``: ``local`` starts a Ray instance on this machine for the run."""
    try:
        import ray
    except ImportError:
        raise SFNetError("--ray needs the ray package (pip install 'ray==2.60.0')") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address == "local":
            kwargs["num_cpus"] = max(1, os.cpu_count() or 1)
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SFNetError(f"--ray {address}: cannot connect ({exc})") from None
    try:
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(evaluate_task)
        pending = {remote.remote(task, options, settings, threads): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                outcome = Outcome(task, error=f"the Ray task failed: {str(exc).splitlines()[0]}")
            progress(task.frames)
            yield outcome
    finally:
        if started:
            ray.shutdown()


def run_fleet(tasks: list[Task], options: FleetOptions, settings: str, partials: Path, workers: int = 1,
              ray_address: str | None = None, ray_cpus: float = 1.0, ray_gpus: float = 0.0,
              progress: Callable[[int], None] = lambda n: None) -> FleetRun:
    """Evaluate every task whose result is not yet in ``partials``; load those that are."""
    run = FleetRun(workers=workers, executor="ray" if ray_address else "local")
    todo = []
    for task in tasks:
        path = partial_path(partials, task, settings)
        if path.exists():
            try:
                run.results.append(BagResult.load(path))
                run.reused += 1
                progress(task.frames)
                continue
            except ResultError:
                pass  # damaged (e.g. a disk that filled up): evaluated again and replaced
        todo.append(task)
    threads = options.threads or max(1, len(os.sched_getaffinity(0)) // max(1, workers))
    started = time.perf_counter()
    if ray_address:
        outcomes = _ray_outcomes(todo, options, settings, ray_address, ray_cpus, ray_gpus,
                                 options.threads or max(1, int(ray_cpus)), progress)
    else:
        outcomes = _local_outcomes(todo, options, settings, min(workers, max(1, len(todo))), threads, progress)
    for outcome in outcomes:
        if outcome.result is None:
            run.failed.append({"bag": outcome.task.name, "reason": outcome.error or "failed"})
            continue
        outcome.result.save(partial_path(partials, outcome.task, settings))
        run.results.append(outcome.result)
    run.wall_s = time.perf_counter() - started
    order = {task.identity: i for i, task in enumerate(tasks)}
    run.results.sort(key=lambda r: order.get(r.identity, len(order)))
    return run
