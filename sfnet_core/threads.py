"""One ``threads`` setting: how many CPU threads the network runs on, in the node and every tool.

Torch-free at import: the console scripts (``sfnet_core.cli.entry``) and the node's ``main``
call ``prepare_process`` before torch is imported, because the OpenMP runtime (libgomp, which
PyTorch's CPU kernels use) reads its wait policy once, when torch loads it.

* ``available_cores()`` - the cores this process may run on (its affinity mask, as ``taskset``,
  cgroup cpusets and container runtimes set it), not the machine's count.
* ``prepare_process()`` - bounded spinning for OpenMP (``GOMP_SPINCOUNT=100000``) unless the
  user chose a wait behaviour; call before torch is imported.
* ``resolve_threads(requested)`` - ``0`` / ``None`` -> ``available_cores()``; a larger explicit
  value is kept, with a warning text.
* ``apply_threads(requested, warn)`` - applies the count to torch (intra-op threads, one
  inter-op thread) and returns it: the number the ONNX Runtime and OpenVINO backends use.
* ``follow_threads(count)`` - the same count in the calling thread: torch's count is a per-thread
  OpenMP setting for every thread that already ran torch code (the node's inference thread
  outlives a re-configure), so such a thread must set it again itself.

Why bounded spinning (issue 18, docs/performance.md#threads): by default libgomp lets a thread
that finished its share of a parallel region spin for a long time before sleeping. When another
CPU-hungry process shares the cores, the spinning thread burns the time slice the thread still
working (or the other process) needed, at every one of the hundreds of parallel regions of a
forward pass: the per-frame time collapsed (5-11x in bench/threads.py). Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) is the most robust beside a hog, but on a quiet machine every
region then pays a wake-up: the torch fp32 Segmenter at 512x1024 ran 1.37x slower. A spin of
100,000 iterations (tens of microseconds) kept the quiet speed (1.03x) and removed most of the
collapse (1.2-1.7x of the best row beside a hog); machines known to be shared can set
``OMP_WAIT_POLICY=PASSIVE`` themselves (a user's own variable is kept).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, MutableMapping

__all__ = ["BOUNDED_SPINCOUNT", "WAIT_POLICY_VARIABLES", "apply_threads", "available_cores", "follow_threads",
           "prepare_process", "resolve_threads"]

#: The variables by which a user chooses the OpenMP wait behaviour; any of them set = theirs.
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: libgomp's spin before an idle thread sleeps: quiet-machine speed kept, contention bounded.
BOUNDED_SPINCOUNT = 100_000


def available_cores() -> int:
    """The number of CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has no affinity call), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows: no affinity masks
        return max(1, os.cpu_count() or 1)


def prepare_process(environ: MutableMapping[str, str] | None = None) -> bool:
    """Bound how long OpenMP's idle threads spin before they sleep (``GOMP_SPINCOUNT``, see the
    module docstring) unless the user set a wait variable; returns whether it set it. Only
    effective before torch (and so libgomp) is loaded: the entry points call it first. Child
    processes inherit the choice."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in WAIT_POLICY_VARIABLES):
        return False
    environ["GOMP_SPINCOUNT"] = str(BOUNDED_SPINCOUNT)
    return True


def resolve_threads(requested: int | None) -> tuple[int, str | None]:
    """The thread count for ``requested`` (``0`` or ``None``: the available cores) and a warning
    text when an explicit count exceeds them (allowed: a user may know better, e.g. SMT siblings
    hidden from the mask, but threads beyond the cores only wait for each other)."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 0):
        raise ValueError(f"threads: expected an integer >= 0 (0 = the available cores), got {requested!r}")
    cores = available_cores()
    if not requested:
        return cores, None
    if requested > cores:
        return requested, (f"threads {requested} is more than the {cores} core(s) this process may run on: "
                           "threads beyond the cores wait for each other (expect it to be slower)")
    return requested, None


def apply_threads(requested: int | None, warn: Callable[[str], None] | None = None) -> int:
    """Give torch ``resolve_threads(requested)`` intra-op threads and one inter-op thread; return
    the count (what ``Segmenter.from_checkpoint(threads=...)`` passes to ONNX Runtime / OpenVINO,
    whose pools are separate from torch's). ``warn`` receives the over-subscription warning."""
    import torch  # lazy: this module must stay importable before torch (see the module docstring)

    count, warning = resolve_threads(requested)
    if warning and warn is not None:
        warn(warning)
    torch.set_num_threads(count)
    # The inter-op pool runs only torch.jit.fork-style tasks, none here: one thread is enough, and
    # fewer threads is fewer contenders. Settable once, before any inter-op work; after that
    # (RuntimeError) what is there stays.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return count


def follow_threads(count: int) -> None:
    """Give the calling thread ``count`` torch intra-op threads if it has another count (cheap:
    call it before each batch). ``torch.set_num_threads`` sets OpenMP's per-thread value of the
    caller; a thread that ran torch code before keeps its own value (a new thread takes the last
    one set anywhere)."""
    import torch  # lazy: as in apply_threads (called once torch is loaded anyway)

    if count >= 1 and torch.get_num_threads() != count:
        torch.set_num_threads(count)
