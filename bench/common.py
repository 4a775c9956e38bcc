"""Timing helpers shared by the benchmarks: warm up, then time whole calls, and report the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3, min_seconds: float = 0.0
) -> float:
    """Median seconds per call after `warmup` calls; repeats until `min_seconds` have passed too."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """The machine's limit: a large square matmul in `dtype` (2 n^3 flops per call)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = time_calls(lambda: torch.mm(a, b), device, warmup=2, repeats=5, min_seconds=1.0)
    return 2 * n**3 / seconds / 1e9
