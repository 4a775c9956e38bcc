"""The per-photo half of bulk colorization, run in worker threads or processes: decode and shrink L
for the model (`prepare`), then join the predicted a*b* with the full-size L and write (`finish`).

Kept free of torch and pandas so that a spawned worker process starts in a fraction of a second.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from colorizer import fast
from colorizer.colorize import storage
from colorizer.colorize.lab_kernels import L_from_rgb, lab_planes_to_rgb8, lab_rows_to_rgb8, linear_taps
from colorizer.data.images import DecodedImage, RejectedImage, decode, encode_colorized
from colorizer.data.lab import L_from_grey, lab_planes_to_rgb, normalize_L, rgb_to_lab, to_uint8
from colorizer.runtime import keep_freed_memory


@dataclass(frozen=True)
class Job:
    """One input; picklable, so workers can read and write it themselves."""

    index: int
    relative: str  # report path: relative to SRC, or the archive member name
    target: storage.Location  # output file: a local path or a URL
    fmt: str  # output format
    source_file: storage.Location | None = None
    data: bytes | None = None  # archive members arrive as bytes

    def read(self) -> bytes:
        return self.data if self.data is not None else storage.read_bytes(self.source_file)


@dataclass
class Outcome:
    status: str
    reason: str = ""
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0


def init_worker() -> None:
    """A worker process: warms up at once, while the main process loads the model."""
    # Each photo's planes reuse the last one's pages; up to 64 MB, so that a huge scan's planes still
    # go back to the system (many workers would otherwise each keep the largest photo's memory).
    keep_freed_memory(64 << 20)
    init_worker_thread()
    warm_up()


def init_worker_thread() -> None:
    """A worker thread (and each worker process's one thread). Worker threads leave `warm_up` to a task
    of its own, so that the others decode the first photos meanwhile (only `finish` needs it)."""
    cv2.setNumThreads(1)  # parallelism comes from the workers; each is one thread


def warm_up() -> None:
    """Pay the first-call costs once per process (numba loading its numpy support and the join's loop
    from its cache, or compiling it on a machine's first run; Pillow loading its JPEG plugin) before
    the first photo needs them; a colour photo's L loop is small to load when one comes. Thread-safe:
    a `finish` that comes first waits here instead."""
    global _warmed_up
    if _warmed_up:
        return
    with _WARM_UP_LOCK:
        if not _warmed_up:
            buffer = io.BytesIO()
            Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
            L = full_L(decode(buffer.getvalue(), max_pixels=256), (8, 8))
            zeros = np.zeros_like(L)
            rgb = (
                lab_planes_to_rgb8(L, zeros, zeros) if fast.enabled() else to_uint8(lab_planes_to_rgb(L, zeros, zeros))
            )
            Image.fromarray(rgb).save(io.BytesIO(), format="JPEG", quality=95)
            _warmed_up = True


_WARM_UP_LOCK = threading.Lock()
_warmed_up = False


# A photo whose pixels take up to this many bytes (a 4 MP grey scan, a 1.3 MP colour photo) is
# decoded once, at full size, and travels from `prepare` through the main process to `finish`
# (0.8 MB for a 1024x768 grey scan, 2.4 MB in colour) instead of being decoded again (a decode is a
# large part of a photo's work: `python -m bench.photo_costs`). Larger photos are decoded at a
# reduced scale for the model and again in `finish`, so that the few dozen in flight never hold
# more than this each.
CARRY_MAX_BYTES = 4_000_000


@dataclass
class Prepared:
    """A photo ready for the model."""

    L_small: np.ndarray  # (1, S, S) float32, normalised
    width: int
    height: int
    seconds: float
    decoded: DecodedImage | None  # the photo itself when it is small enough to hand on (CARRY_MAX_BYTES)


@dataclass(frozen=True)
class Prediction:
    """A photo on its way from the model to its writer."""

    job: Job
    ab_small: np.ndarray  # (2, S, S) a*b* in Lab units
    decoded: DecodedImage | None  # as `prepare` handed it on, or None: decoded again by `finish`
    seconds: float  # its share of the work so far: prepare and the model


def prepare(job: Job, size: int, max_pixels: int) -> Prepared | Outcome:
    """Decode and make the model's input, L at size x size; a failed row if the photo can't be read."""
    started = time.perf_counter()
    try:
        decoded = decode(job.read(), max_pixels, at_least=size, full_size_up_to=CARRY_MAX_BYTES)
    except RejectedImage as e:
        return Outcome("failed", str(e)[:300])
    except OSError as e:
        return Outcome("failed", f"unreadable: {e}")
    L_small = model_input(decoded, size)
    width, height = decoded.display_size
    full_size = decoded.rgb.shape[1::-1] == (width, height)
    carried = decoded if full_size and decoded.nbytes <= CARRY_MAX_BYTES else None
    return Prepared(L_small, width, height, time.perf_counter() - started, carried)


def full_L(decoded: DecodedImage, size: tuple[int, int] | None = None) -> np.ndarray:
    """L* of the photo, optionally area-resized to `size` (width, height) first. A grey photo is one
    plane through a table (R = G = B, so resizing the grey plane gives the same L as resizing RGB)."""
    pixels = _pixels(decoded)
    if size is not None:
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return _L_of(pixels)


def _pixels(decoded: DecodedImage) -> np.ndarray:
    return decoded.grey if decoded.is_grey else decoded.rgb


def _L_of(pixels: np.ndarray) -> np.ndarray:
    """L* of a grey plane (H, W) or of RGB pixels (H, W, 3), uint8."""
    if pixels.ndim == 2:
        return L_from_grey(pixels)
    return L_from_rgb(pixels) if fast.enabled() else rgb_to_lab(pixels)[..., 0]


def finish(prediction: Prediction, quality: int, max_pixels: int, description: str) -> Outcome:
    """Join the predicted a*b* with the photo's own full-size L and write it."""
    started = time.perf_counter()
    warm_up()
    job = prediction.job
    try:
        decoded = prediction.decoded or decode(job.read(), max_pixels)
        height, width = decoded.rgb.shape[:2]
        rgb = recombine(decoded, prediction.ab_small)
        # encoded in memory, then written whole: Pillow's JPEG writer takes a short write on a full
        # disk for success, and a truncated file would be renamed into place and later skipped as done
        storage.write_bytes(job.target, encode_colorized(rgb, job.fmt, quality, decoded, description))
    except (RejectedImage, OSError, ValueError) as e:  # e.g. the disk filled up: the file is not written
        return Outcome("failed", f"write failed: {e}"[:300])
    return Outcome("done", width=width, height=height, seconds=time.perf_counter() - started)


# The full-size float planes (L, and a colour photo's linear RGB) are made a strip of rows at a time,
# each ~64k pixels (within a core's L2 cache), instead of whole planes streamed through memory: with
# OpenCV's float Lab and RGB planes, a `finish` takes less time (one thread,
# `python -m bench.photo_costs`), and less memory traffic beside the model.
STRIP_PIXELS = 1 << 16


def recombine(decoded: DecodedImage, ab_small: np.ndarray) -> np.ndarray:
    """The colorized photo at full size: its own L with the predicted (2, S, S) a*b* upsampled."""
    height, width = decoded.rgb.shape[:2]
    if not fast.enabled():  # a*b* upsampled whole, then OpenCV's Lab -> sRGB and a rounding pass
        a, b = (cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in ab_small)
        return to_uint8(lab_planes_to_rgb(_L_of(_pixels(decoded)), a, b))
    # the fast path: a*b* bilinearly upsampled in two passes: across by OpenCV (S x width: small), then down inside
    # the conversion's loop, a strip at a time, so that no full-size float plane of a*b* is ever made
    a_rows, b_rows = (cv2.resize(plane, (width, plane.shape[0]), interpolation=cv2.INTER_LINEAR) for plane in ab_small)
    pixels = _pixels(decoded)
    rgb = np.empty((height, width, 3), np.uint8)
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = slice(top, top + rows)
        taps = linear_taps(ab_small.shape[1], height, strip)
        lab_rows_to_rgb8(_L_of(pixels[strip]), a_rows, b_rows, taps, out=rgb[strip])
    return rgb


def model_input(decoded: DecodedImage, size: int) -> np.ndarray:
    """The model's input for a photo: L at size x size, normalised, as (1, S, S) float32."""
    return normalize_L(full_L(decoded, (size, size)))[None].astype(np.float32)
