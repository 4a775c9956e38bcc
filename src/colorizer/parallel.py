"""Worker processes, started safely: the one place a process pool is made.

Pools never `fork` the calling process: forking a process that already runs threads (torch's,
MLflow's, a test runner's) can copy a lock that is held at that instant and hang the child (seen
here). They `spawn` fresh interpreters or, with `shared_start_up`, fork from multiprocessing's fork
server: a fresh single-threaded interpreter that has already done the workers' start-up (imports,
warm-up), so that each worker starts in milliseconds instead of paying it again.
Workers die with their parent (Linux prctl), and a fork server we start dies with the process that
started it, so a `kill -9` of a job leaves no orphans blocked on a pipe forever (seen here: a plain
fork server waits for its workers, which wait for the dead job).
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_PR_SET_PDEATHSIG = 1
# The workers' start-up, for the fork server to do as it starts ("niceness module:function"). It is
# handed over in the environment: the server is a fresh interpreter started with ours.
_SERVER_START_UP = "COLORIZER_FORK_SERVER_START_UP"


def _start_worker(niceness: int, module: str | None, name: str | None) -> None:
    """Runs first in each worker (and in the fork server): die with the parent, take the priority
    `niceness`, and only then import and run the initializer (passed by name, so that even its imports
    run at the lower priority). Each step is idempotent, so a worker forked from a fork server that
    has done them already repeats them at almost no cost."""
    if sys.platform.startswith("linux"):
        # Caveat: the signal comes when the *thread* that started this process ends.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if niceness > os.nice(0):  # (raising priority again would need privileges)
        os.nice(niceness - os.nice(0))
    # One thread per worker (the pool is the parallelism). Set before numpy is imported: its OpenBLAS
    # otherwise starts a thread per core that busy-waits, ~0.2 s of CPU per worker at start-up.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    if module and name:
        getattr(importlib.import_module(module), name)()


def _ready() -> None:
    """A no-op task: submitting one per worker starts them all now."""


class WorkerPool(ProcessPoolExecutor):
    """A process pool that can start its workers in the background: `ready` is set once they are up."""

    def __init__(self, workers: int, **kwargs):
        super().__init__(workers, **kwargs)
        self.ready = threading.Event()

    def start_workers(self) -> None:
        """Launch every worker now and return at once. Spawned workers are launched from here (that takes
        milliseconds; from another thread the prctl above would kill them when that thread ends);
        workers from the fork server are asked for from a thread, because the server answers only once
        it has done its own start-up (~0.3 s)."""
        if self._mp_context.get_start_method() == "forkserver":
            threading.Thread(target=self._await_workers, args=(None,), name="start-workers", daemon=True).start()
        else:
            started = [self.submit(_ready) for _ in range(self._max_workers)]
            threading.Thread(target=self._await_workers, args=(started,), name="await-workers", daemon=True).start()

    def _await_workers(self, started: list[Future] | None) -> None:
        try:
            for future in started or [self.submit(_ready) for _ in range(self._max_workers)]:
                future.result()
        except (RuntimeError, CancelledError, BrokenProcessPool):
            pass  # shut down before its workers were up, or one died: the caller's own tasks will say so
        finally:
            self.ready.set()


def process_pool(
    workers: int,
    initializer: Callable[[], None] | None = None,
    nice: int = 0,
    start_now: bool = False,
    shared_start_up: bool = False,
) -> WorkerPool:
    """A pool of `workers` processes at `nice` below this one, each initialised by `initializer` (a
    module-level function).
    `start_now`: launch every worker now, in the background (a pool otherwise starts one per task
    submitted), so that their start-up overlaps what the caller does next; `pool.ready` is set once
    they are up (at once without `start_now`).
    `shared_start_up`: fork the workers from a fork server that has done their start-up once (where the
    platform has one; a server that this process already runs is reused). For pools made often, like
    one per `colorize` call, whose workers each import numpy, OpenCV and Pillow and build OpenCV's Lab
    tables: ~0.3 s of CPU per worker otherwise."""
    niceness = min(os.nice(0) + nice, 19)
    initargs = (niceness, initializer.__module__, initializer.__qualname__) if initializer else (niceness, None, None)
    if shared_start_up and "forkserver" in multiprocessing.get_all_start_methods():
        _ensure_fork_server(initargs)
        context = multiprocessing.get_context("forkserver")
    else:
        context = multiprocessing.get_context("spawn")
    pool = WorkerPool(workers, mp_context=context, initializer=_start_worker, initargs=initargs)
    if start_now:
        pool.start_workers()
    else:
        pool.ready.set()
    return pool


def _ensure_fork_server(start_up: tuple[int, str | None, str | None]) -> None:
    """Start multiprocessing's fork server (one per process) unless it runs already. The server imports
    this module first (`set_forkserver_preload`), which finds `start_up` in its environment and does it."""
    niceness, module, name = start_up
    multiprocessing.forkserver.set_forkserver_preload([__name__])
    previous = os.environ.get(_SERVER_START_UP)
    os.environ[_SERVER_START_UP] = f"{niceness} {module or ''}:{name or ''}"
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if previous is None:
            del os.environ[_SERVER_START_UP]
        else:
            os.environ[_SERVER_START_UP] = previous


if _SERVER_START_UP in os.environ:  # in the fork server, as it starts: see `_ensure_fork_server`
    _niceness, _initializer = os.environ.pop(_SERVER_START_UP).split(" ")
    _start_worker(int(_niceness), *(part or None for part in _initializer.split(":")))
