"""Worker pools, started safely, and the one ordered, bounded map over them (`OrderedMap`, used by
fetch, colorize and the URL downloads).

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
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Generic, TypeVar

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")
R = TypeVar("R")


def _start_worker(nice: int, module: str | None, name: str | None) -> None:
    """Runs first in each worker process: die with the parent, lower the priority, and only then import
    and run the initializer (passed by name, so that even its imports run at the lower priority)."""
    if sys.platform.startswith("linux"):
        # (the signal comes when the *thread* that started this process ends: see `start_workers`)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if nice:
        os.nice(nice)
    # One thread per worker (the pool is the parallelism). Set before numpy is imported: its OpenBLAS
    # otherwise starts a thread per core that busy-waits, a waste of CPU for every worker at start-up.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    if module and name:
        getattr(importlib.import_module(module), name)()


def _started() -> None:
    """A no-op task: submitting one per worker starts them all now."""


class WorkerPool(ProcessPoolExecutor):
    """A `spawn` process pool whose workers die with this process."""

    def __init__(self, workers: int, **kwargs):
        super().__init__(workers, mp_context=multiprocessing.get_context("spawn"), **kwargs)

    def start_workers(self) -> None:
        """Launch every worker now (milliseconds: they import and initialise in parallel with the
        caller). Launched from this thread, not a helper: the prctl above kills a worker when the
        thread that started it ends."""
        for _ in range(self._max_workers):
            self.submit(_started)


def process_pool(
    workers: int, initializer: Callable[[], None] | None = None, nice: int = 0, start_now: bool = False
) -> WorkerPool:
    """A `spawn` pool whose workers run at `nice`, each initialised by `initializer` (a module-level
    function). `start_now`: launch every worker at once (a pool otherwise starts one per task
    submitted), so that their start-up overlaps what the caller does next (loading a model)."""
    where = (initializer.__module__, initializer.__qualname__) if initializer else (None, None)
    pool = WorkerPool(workers, initializer=_start_worker, initargs=(nice, *where))
    if start_now:
        pool.start_workers()
    return pool


class RestartingPool(Executor):
    """A process pool that replaces itself when one of its workers dies (killed for memory, a decoder
    that crashes): the tasks then in flight fail with BrokenProcessPool, later ones go to a new pool."""

    def __init__(self, start: Callable[[], WorkerPool]):
        self._start = start
        self._pool = start()
        self.restarts = 0

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


class InlineExecutor(Executor):
    """Runs each task at once in the calling thread: `--workers 0` (debugging, or where starting
    processes is not allowed), and one-worker runs that gain nothing from a pool."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 (handed to the caller through the future)
            future.set_exception(e)
        return future


INLINE = InlineExecutor()


class OrderedMap(Generic[T, R]):
    """`fn` over `items` on an executor, with results in the items' order and at most `window` tasks
    in flight, so that memory stays bounded however many items come (Executor.map submits them all
    at once). Iterating gives (item, result) pairs in order, each once `window` tasks are queued behind
    it (and at the end, the rest); the result is the exception itself where `fn` raised, so that one
    bad item never ends the run."""

    def __init__(self, executor: Executor, fn: Callable[[T], R], items: Iterable[T], window: int):
        self.executor, self.fn, self.items, self.window = executor, fn, iter(items), max(1, window)
        self.in_flight: deque[tuple[T, Future]] = deque()

    def start(self) -> OrderedMap[T, R]:
        """Submit the first window of tasks now, before anything iterates: they run while the caller
        does something else first (colorize loads its model meanwhile)."""
        for item in itertools.islice(self.items, self.window - len(self.in_flight)):
            self.in_flight.append((item, self.executor.submit(self.fn, item)))
        return self

    def __iter__(self) -> Iterator[tuple[T, R | Exception]]:
        for item in self.items:
            self.in_flight.append((item, self.executor.submit(self.fn, item)))
            # Only a full window is drained: taking results as soon as they are done would hand them on
            # early and leave the workers less queued work while the caller is busy (colorize's model
            # runs a batch). (Side by side on 2 cores the difference was within the noise.)
            while len(self.in_flight) > self.window:
                yield self._take_oldest()
        while self.in_flight:
            yield self._take_oldest()

    def _take_oldest(self) -> tuple[T, R | Exception]:
        item, future = self.in_flight[0]
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 (the caller decides what a failed item means)
            result = e
        self.in_flight.popleft()  # only once it has its result: an interrupt while waiting leaves it to `settle`
        return item, result

    def cancel(self) -> None:
        """Cancel every task that has not started (the ones running finish on their own)."""
        for _, future in self.in_flight:
            future.cancel()

    def settle(self, timeout: float = 120.0) -> Iterator[tuple[T, R]]:
        """After an interrupt: cancel the tasks that have not started and wait for the ones running,
        giving the (item, result) of those that succeeded, so that the caller can record every side
        effect that happened (a photo written) before it stops."""
        while self.in_flight:
            item, future = self.in_flight.popleft()
            if future.cancel():
                continue
            try:
                yield item, future.result(timeout=timeout)
            except Exception:  # noqa: BLE001, S112 (it did not happen: a rerun redoes it)
                continue


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items, the last one shorter (itertools.batched arrives with Python 3.12)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
