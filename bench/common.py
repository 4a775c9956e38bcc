"""Timing helpers shared by the benchmarks: warm up, then time whole calls, and report the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# the design document's image size, the batch of the training and inference rows, and its PatchGAN
SIZE, BATCH = 256, 8
DISCRIMINATOR_WIDTHS = [64, 128, 256, 512]


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


def write_jpegs(folder: Path, count: int, width: int = 1024, height: int = 768) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        grey = (127 + 100 * np.sin(x / (40 + i) + y / 60) + rng.normal(0, 8, (height, width))).clip(0, 255)
        Image.fromarray(grey.astype(np.uint8)).save(folder / f"scan_{i:03d}.jpg", quality=90)
