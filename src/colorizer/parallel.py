"""Worker processes, started safely: the one place a process pool is made.

Pools use the `spawn` start method: forking a process that already runs threads (torch's,
MLflow's, a test runner's) can copy a lock that is held at that instant and hang the child (seen
here). Workers also die with their parent (Linux prctl), so a `kill -9` of a job leaves no orphans
blocked on a pipe forever (seen here too, with fork and with forkserver, whose server outlives it).
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def _start_worker(nice: int, module: str | None, name: str | None) -> None:
    """Runs first in each worker: die with the parent, lower the priority, and only then import and run
    the initializer (passed by name, so that even its imports run at the lower priority)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if nice:
        os.nice(nice)
    # One thread per worker (the pool is the parallelism). Set before numpy is imported: its OpenBLAS
    # otherwise starts a thread per core that busy-waits, ~0.2 s of CPU per worker at start-up.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    if module and name:
        getattr(importlib.import_module(module), name)()


def _ready() -> None:
    """A no-op task: submitting one per worker starts them all now."""


def process_pool(
    workers: int, initializer: Callable[[], None] | None = None, nice: int = 0, start_now: bool = False
) -> ProcessPoolExecutor:
    """A `spawn` pool whose workers run at `nice`. `start_now`: launch every worker at once (a pool
    otherwise starts one per task submitted), so that their start-up overlaps what the caller does next."""
    context = multiprocessing.get_context("spawn")
    where = (initializer.__module__, initializer.__qualname__) if initializer else (None, None)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(nice, *where))
    if start_now:
        for _ in range(workers):
            pool.submit(_ready)
    return pool
