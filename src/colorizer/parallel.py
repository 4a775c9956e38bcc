"""Worker pools, started safely: the one place a pool of workers is made.

Process pools use the `spawn` start method: forking a process that already runs threads (torch's,
MLflow's, a test runner's) can copy a lock that is held at that instant and hang the child (seen
here). Workers also die with their parent (Linux prctl), so a `kill -9` of a job leaves no orphans
blocked on a pipe forever (seen here too, with fork and with forkserver, whose server outlives it).
Thread pools are for work that mostly runs in C with the GIL released, beside a main thread that
needs the cores more: their threads run at a lower priority (Linux gives each thread its own).
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_PR_SET_PDEATHSIG = 1


def _start_worker(nice: int, module: str | None, name: str | None) -> None:
    """Runs first in each worker process: die with the parent, lower the priority, and only then import
    and run the initializer (passed by name, so that even its imports run at the lower priority)."""
    if sys.platform.startswith("linux"):
        # (the signal comes when the *thread* that started this process ends: see `start_workers`)
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


class WorkerPool(ProcessPoolExecutor):
    """A `spawn` process pool; `ready` is set once its workers are up."""

    def __init__(self, workers: int, **kwargs):
        super().__init__(workers, mp_context=multiprocessing.get_context("spawn"), **kwargs)
        self.ready = threading.Event()

    def start_workers(self) -> None:
        """Launch every worker now (milliseconds: they import and initialise in parallel with the caller)
        and set `ready` once they are up. Launched from this thread, not a helper: the prctl above kills
        a worker when the thread that started it ends."""
        started = [self.submit(_ready) for _ in range(self._max_workers)]
        threading.Thread(target=self._await, args=(started,), name="await-workers", daemon=True).start()

    def _await(self, started: list[Future]) -> None:
        try:
            for future in started:
                future.result()
        except (CancelledError, BrokenProcessPool):
            pass  # shut down before its workers were up, or one died: the caller's own tasks will say so
        finally:
            self.ready.set()


def process_pool(
    workers: int, initializer: Callable[[], None] | None = None, nice: int = 0, start_now: bool = False
) -> WorkerPool:
    """A `spawn` pool whose workers run at `nice`, each initialised by `initializer` (a module-level
    function). `start_now`: launch every worker at once (a pool otherwise starts one per task
    submitted), so that their start-up overlaps what the caller does next; `pool.ready` is set once they
    are up (at once without `start_now`)."""
    where = (initializer.__module__, initializer.__qualname__) if initializer else (None, None)
    pool = WorkerPool(workers, initializer=_start_worker, initargs=(nice, *where))
    if start_now:
        pool.start_workers()
    else:
        pool.ready.set()
    return pool


class RestartingPool(Executor):
    """A process pool that replaces itself when one of its workers dies (killed for memory, a decoder
    that crashes): the tasks then in flight fail with BrokenProcessPool, later ones go to a new pool."""

    def __init__(self, start: Callable[[], WorkerPool]):
        self._start = start
        self._pool = start()
        self.restarts = 0

    @property
    def ready(self) -> threading.Event:
        return self._pool.ready

    def submit(self, fn, /, *args, **kwargs) -> Future:
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            self.restarts += 1
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def thread_pool(workers: int, initializer: Callable[[], None] | None = None, nice: int = 0) -> ThreadPoolExecutor:
    """A pool of threads in this process, each at `nice` below it (on Linux; elsewhere a thread can't
    have its own priority and they keep the process's), each initialised by `initializer`."""

    def start_thread() -> None:
        if nice and sys.platform.startswith("linux"):
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19))
        if initializer:
            initializer()

    return ThreadPoolExecutor(workers, thread_name_prefix="worker", initializer=start_thread)
