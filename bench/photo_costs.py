"""Colorize's per-photo work outside the model, step by step, in core-milliseconds (one thread, the
median of 20 calls each), for a 1024x768 grey JPEG and a colour one.
Timed as a colorize worker runs, with OpenCV on one thread (its own threads' time would not count in
this thread's clock: a 6 ms conversion read as 4).

usage: python -m bench.photo_costs [SIZE]   (SIZE: the model's input size, default 256)
"""

from colorizer.runtime import setup_process

if __name__ == "__main__":  # run alone; `make bench` imports it after its own set-up
    setup_process()  # before torch loads, as the entry points do

import contextlib
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from colorizer.colorize.worker import (
    CARRY_MAX_BYTES,
    Job,
    Prediction,
    finish,
    full_L,
    init_worker_thread,
    model_input,
    prepare,
    recombine,
    warm_up,
)
from colorizer.data.images import decode, encode_colorized
from colorizer.data.synthetic import colourful
from colorizer.files import atomic_write_bytes


def core_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.thread_time()  # CPU time of this thread: core-ms, not wall time
        fn()
        times.append(time.thread_time() - started)
    return 1000 * statistics.median(times)


def upsample_across(planes: np.ndarray, width: int) -> list[np.ndarray]:
    """a*b*'s first upsampling pass, as `recombine` makes it (the second runs inside the conversion)."""
    return [cv2.resize(p, (width, p.shape[0]), interpolation=cv2.INTER_LINEAR) for p in planes]


def costs(jpeg: bytes, size: int, out_dir: Path) -> dict[str, float]:
    decoded_small = decode(jpeg, 10**9, at_least=size, full_size_up_to=CARRY_MAX_BYTES)
    full = decode(jpeg, 10**9)
    width = full.rgb.shape[1]
    ab_small = np.random.default_rng(0).uniform(-30, 30, (2, size, size)).astype(np.float32)
    rgb = recombine(full, ab_small)
    encoded = encode_colorized(rgb, "JPEG", 95, full, "bench")
    steps = {
        "prepare: decode for the model": lambda: decode(jpeg, 10**9, at_least=size, full_size_up_to=CARRY_MAX_BYTES),
        "prepare: L at model size": lambda: model_input(decoded_small, size),
        "finish: decode full size (only over CARRY_MAX_BYTES)": lambda: decode(jpeg, 10**9),
        "finish: full-size L (whole plane)": lambda: full_L(full),
        "finish: upsample a*b* across (S x width)": lambda: upsample_across(ab_small, width),
        "finish: recombine (upsample a*b*, L, Lab -> sRGB bytes)": lambda: recombine(full, ab_small),
        "finish: JPEG encode q95 + EXIF": lambda: encode_colorized(rgb, "JPEG", 95, full, "bench"),
        "finish: write + fsync + rename": lambda: atomic_write_bytes(out_dir / "out.jpg", encoded),
    }
    source = out_dir / "in.jpg"
    source.write_bytes(jpeg)
    job = Job(0, "in.jpg", str(out_dir / "out.jpg"), "JPEG", source_file=str(source))
    prepared = prepare(job, size, 10**9)
    steps["worker: prepare (read, decode, L at model size)"] = lambda: prepare(job, size, 10**9)
    steps["worker: finish (its own L, a*b*, RGB, encode, write)"] = lambda: finish(
        Prediction(job, ab_small, prepared.decoded, 0.0), 95, 10**9, "bench"
    )
    figures = {name: round(core_ms(fn), 2) for name, fn in steps.items()}
    encode = steps["finish: JPEG encode q95 + EXIF"]

    def photo() -> None:
        finish(Prediction(job, ab_small, prepare(job, size, 10**9).decoded, 0.0), 95, 10**9, "bench")

    figures["Python's speed beside a worker's JPEG encode"] = round(python_speed_beside(encode), 2)
    figures["Python's speed beside a worker's prepare + finish"] = round(python_speed_beside(photo), 2)
    return figures


def python_speed_beside(work, rounds: int = 5, seconds: float = 0.3) -> float:
    """How fast this thread runs pure Python while another thread does `work` over and over, against
    alone (the median of `rounds` alternations: this machine's speed drifts). colorize's model
    thread needs the GIL between its ops, so a worker step that holds it while it computes slows the
    model (Pillow encoding a JPEG into a BytesIO read ~0.75; into a memfd ~0.9-0.97). Needs a second
    core: on one, the two threads share it whatever the GIL does."""

    def spin() -> int:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count

    stop = threading.Event()

    def repeat() -> None:
        while not stop.is_set():
            work()

    ratios = []
    for _ in range(rounds):
        alone = spin()
        stop.clear()
        worker = threading.Thread(target=repeat)
        worker.start()
        try:
            ratios.append(spin() / alone)
        finally:
            stop.set()
            worker.join()
    return statistics.median(ratios)


@contextlib.contextmanager
def as_a_worker():
    """OpenCV on one thread, as in a colorize worker (process-wide: restored after)."""
    threads = cv2.getNumThreads()
    init_worker_thread()
    warm_up()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def worker_core_ms(src: Path, out_dir: Path, size: int, passes: int = 2) -> float:
    """The workers' core-ms per photo for the JPEGs in `src` (prepare + finish, one thread, as colorize
    runs them, the model's output stood in by random a*b*): the median over the photos, each read
    and written once per pass to an output of its own (repeating one photo in a loop would time it
    with its data in the cache and its output file already there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with as_a_worker():
        return _worker_core_ms(src, out_dir, size, passes)


def _worker_core_ms(src: Path, out_dir: Path, size: int, passes: int) -> float:
    ab_small = np.random.default_rng(0).uniform(-30, 30, (2, size, size)).astype(np.float32)
    per_photo = []
    for run in range(passes):
        for source in sorted(src.iterdir()):
            job = Job(0, source.name, str(out_dir / f"{run}_{source.name}"), "JPEG", source_file=str(source))
            started = time.thread_time()
            prepared = prepare(job, size, 10**9)
            finish(Prediction(job, ab_small, prepared.decoded, 0.0), 95, 10**9, "bench")
            per_photo.append(1000 * (time.thread_time() - started))
    return statistics.median(per_photo)


def main(size: int) -> dict:
    photo = colourful(1024, 768, seed=1)
    jpegs = {}
    for kind, image in (("grey", Image.fromarray(photo).convert("L")), ("colour", Image.fromarray(photo))):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        jpegs[kind] = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp, as_a_worker():
        return {kind: costs(data, size, Path(tmp)) for kind, data in jpegs.items()}


if __name__ == "__main__":
    figures = main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
    for kind, steps in figures.items():
        print(f"# {kind} 1024x768 JPEG, core-ms per photo")
        for name, ms in steps.items():
            print(f"  {name:<58} {ms:7.2f}")
        print("  (the last two: another thread's pure Python against alone; 1 = never held up by the GIL)")
    print(json.dumps(figures))
