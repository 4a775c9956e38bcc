"""The per-photo half of bulk colorization, run in worker processes: decode and shrink L for the
model (`prepare`), then join the predicted a*b* with the full-size L and write (`finish`).

Kept free of torch and pandas so that a spawned worker starts in a fraction of a second.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from colorizer.images import RejectedImage, decode, save_colorized
from colorizer.lab import L_from_grey, L_from_rgb, lab_planes_to_rgb, normalize_L, to_uint8


@dataclass(frozen=True)
class Job:
    """One input; picklable, so workers can read and write it themselves."""

    index: int
    relative: str  # report path: relative to SRC, or the archive member name
    target: str  # output file
    fmt: str  # output format
    source_file: str | None = None
    data: bytes | None = None  # archive members arrive as bytes

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.source_file).read_bytes()


@dataclass
class Outcome:
    status: str
    reason: str = ""
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0


def init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the workers; each is one thread


def init_writer() -> None:
    """Writers yield to the model (lowest nice, not SCHED_IDLE: that would starve them outright on a
    machine that other jobs keep busy)."""
    init_worker()
    os.nice(19)


def prepare(job: Job, size: int, max_pixels: int) -> tuple[np.ndarray | None, Outcome]:
    """Decode and return the model's input: L at size x size, normalised, as (1, S, S) float32."""
    started = time.perf_counter()
    try:
        decoded = decode(job.read(), max_pixels, at_least=size)  # JPEGs decode at a reduced scale: faster
    except RejectedImage as e:
        return None, Outcome("failed", str(e)[:300])
    except OSError as e:
        return None, Outcome("failed", f"unreadable: {e}")
    small = cv2.resize(decoded.rgb, (size, size), interpolation=cv2.INTER_AREA)
    L_small = normalize_L(L_from_rgb(small))[None].astype(np.float32)
    width, height = decoded.display_size
    return L_small, Outcome("pending", width=width, height=height, seconds=time.perf_counter() - started)


def finish(job: Job, ab_small: np.ndarray, quality: int, max_pixels: int, description: str) -> Outcome:
    """Join the predicted (2, S, S) a*b* (Lab units) with the photo's own full-size L and write it."""
    started = time.perf_counter()
    try:
        decoded = decode(job.read(), max_pixels)
        height, width = decoded.rgb.shape[:2]
        L = L_from_grey(decoded.rgb[..., 0]) if decoded.is_grey else L_from_rgb(decoded.rgb)
        a, b = (
            cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width)
            for plane in ab_small
        )
        rgb = to_uint8(lab_planes_to_rgb(L, a, b))
        save_colorized(Path(job.target), rgb, job.fmt, quality, decoded, description)
    except (RejectedImage, OSError, ValueError) as e:  # e.g. the disk filled up: the file is not written
        return Outcome("failed", f"write failed: {e}"[:300])
    return Outcome("done", width=width, height=height, seconds=time.perf_counter() - started)
