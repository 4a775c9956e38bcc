"""Worker processes, started safely: the one place a process pool is made.

Pools use the `spawn` start method: forking a process that already runs threads (torch's,
MLflow's, a test runner's) can copy a lock that is held at that instant and hang the child (seen
here). Workers also die with their parent (Linux prctl), so a `kill -9` of a job leaves no orphans
blocked on a pipe forever (seen here too, with fork and with forkserver, whose server outlives it).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def _die_with_parent_then(initializer: Callable[[], None] | None) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if initializer is not None:
        initializer()


def process_pool(workers: int, initializer: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with_parent_then, initargs=(initializer,))
