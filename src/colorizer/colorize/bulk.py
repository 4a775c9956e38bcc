"""Bulk colorization: `colorizer colorize SRC DST` over folders and archives, at full resolution.

The loop, in three steps chained as generators (`_colorize`): workers (threads beside a model on the
CPU, processes beside a GPU) decode each photo and shrink its L to the model's size (`prepare`); this
process runs the generator on batches (`predict_batches`); workers join the upsampled a*b* with the
ORIGINAL full-resolution L and write the result atomically (`finish`). Each worker step is an
`OrderedMap`, so only a window of photos is in memory at once. Outputs that already exist are
skipped, so a killed run resumes where it stopped; the report has a row for every input.

What is read and where it goes: `colorize_inputs`; the model: `inference`; a photo's work: `colorize_worker`.
"""

from __future__ import annotations

import logging
import os
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from functools import cache, partial
from pathlib import Path

import torch

from colorizer.colorize import storage
from colorizer.colorize.inference import ModelRunner, description_of, input_size, predict_in_halves, prediction_error
from colorizer.colorize.inputs import check_paths, count_inputs, dst_lock, planned_inputs, remove_temp_leftovers
from colorizer.colorize.report import REPORT_NAME, Summary, append_history, log_summary, write_report
from colorizer.colorize.storage import Location
from colorizer.colorize.worker import (
    Job,
    Outcome,
    Prediction,
    Prepared,
    finish,
    init_worker,
    init_worker_thread,
    prepare,
    warm_up,
)
from colorizer.config import ColorizeOptions, UserError
from colorizer.devices import pick_device
from colorizer.files import progress
from colorizer.parallel import INLINE, OrderedMap, RestartingPool, batched, process_pool, thread_pool
from colorizer.training.checkpoints import PRETRAINED_DIR, read_model_info

log = logging.getLogger(__name__)
# Workers run at the lowest priority. Where torch has a thread on every core, a worker that preempts
# one of them stalls every parallel op of the model; at nice 19 the workers run mostly in the model's
# serial moments and while it waits for them, then on all cores. (Not SCHED_IDLE: that would starve
# them outright on a machine that other jobs keep busy.)
WORKER_NICE = 19
WORKER_KINDS = typing.get_args(ColorizeOptions.model_fields["worker_kind"].annotation)
PreparedItem = tuple[Job, Prepared | Outcome | Exception]  # a job and what `prepare` made of it


def colorize(
    src: Location | str, dst: Location | str, model_dir: Path = PRETRAINED_DIR, options: ColorizeOptions | None = None
) -> Summary:
    """Colorize every photo under SRC (a folder, an archive or one photo) into DST; model_dir defaults
    to the shipped model."""
    options = options or ColorizeOptions()
    src, dst = storage.location(src), storage.location(dst)
    check_paths(src, dst)
    report = storage.join(dst, REPORT_NAME)
    if isinstance(report, Path) and report.exists() and not report.is_file():
        raise UserError(f"{report}: is a folder, where colorize writes its report; move it away and rerun")
    with dst_lock(dst):
        if options.engine == "ray":
            from colorizer.colorize.ray_engine import colorize_with_ray  # an extra: imported only when asked for

            return colorize_with_ray(src, dst, model_dir, options)
        workers = options.workers if options.workers is not None else default_workers()
        pool = start_workers(workers, options.worker_kind, pick_device(options.device, "--device"))  # before the model
        stopped = False
        try:
            return _colorize(src, dst, model_dir, options, pool, workers)
        except KeyboardInterrupt:
            stopped = True
            raise
        finally:  # stopped: the report is written; a worker blocked in a read (a hung mount) is not waited for
            pool.shutdown(wait=not stopped, cancel_futures=True)


def dry_run(
    src: Location | str, dst: Location | str, options: ColorizeOptions | None = None
) -> Iterator[tuple[str, str, str]]:
    """What `colorize` would do, without loading the model or writing anything: (action, input, detail)
    per input, action one of `colorize` (detail: the output), `skip` (it exists) or `fail` (refused
    while listing: a link, an unsafe archive member). A photo that can't be decoded shows as `colorize`
    here and fails in the run."""
    options = options or ColorizeOptions()
    src, dst = storage.location(src), storage.location(dst)
    check_paths(src, dst, probe=False)
    for _, relative, item in planned_inputs(src, dst, options):
        if isinstance(item, Job):
            yield "colorize", relative, item.target
        else:
            yield ("skip" if item.status == "skipped" else "fail"), relative, item.reason


def _colorize(
    src: Location, dst: Location, model_dir: Path, options: ColorizeOptions, pool: Executor, workers: int
) -> Summary:
    remove_temp_leftovers(dst)
    summary = Summary(progress(None, desc="colorize", total=count_inputs(src)))
    window = options.batch_size + 2 * max(workers, 1)  # photos in flight per step: bounded memory
    size = input_size(model_dir, options)
    prepare_one = partial(prepare, size=size, max_pixels=options.max_pixels)
    started = time.perf_counter()
    prepared = OrderedMap(pool, prepare_one, jobs_to_do(src, dst, options, summary), window).start()

    @cache
    def model() -> ModelRunner:
        """Loaded when the first photo to colorize is decoded (the photos after it decode meanwhile):
        a rerun that finds every output written never loads it."""
        runner = ModelRunner(model_dir, options.size, options.device, options.precision)
        log.debug(
            "colorize: model at %d px on %s (autocast %s), %d %s workers",
            *(runner.size, runner.device, runner.amp_dtype, workers, type(pool).__name__),
        )
        return runner

    description = description_of(read_model_info(model_dir))
    write_one = partial(finish, quality=options.quality, max_pixels=options.max_pixels, description=description)
    written = OrderedMap(pool, write_one, predict_batches(model, prepared, options.batch_size, summary), window)
    try:
        for prediction, outcome in written:
            summary.record(prediction.job, as_outcome(outcome), prediction.seconds)
        pool.shutdown(wait=False)  # every photo is written: the workers exit while the report is written
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: writes under way finish and are reported, the rest wait for a rerun
        prepared.cancel()
        for prediction, outcome in written.settle():
            summary.record(prediction.job, outcome, prediction.seconds)
        raise
    finally:
        summary.bar.close()
        write_report(storage.join(dst, REPORT_NAME), summary, options.report_seconds)
        if options.history:
            append_history(dst, summary, "local", time.perf_counter() - started)
    log_summary(summary, dst, time.perf_counter() - started)
    return summary


def jobs_to_do(src: Location, dst: Location, options: ColorizeOptions, summary: Summary) -> Iterator[Job]:
    """The inputs as they are listed, numbered in that order; the ones refused while listing and
    those whose output exists are recorded on the way. An archive's members are read one at a time
    as the pipeline takes them, so a multi-GB archive never sits in memory whole."""
    for index, relative, item in planned_inputs(src, dst, options):
        if isinstance(item, Job):
            yield item
        else:
            summary.record_row(index, relative, item)


def predict_batches(
    model: Callable[[], ModelRunner], prepared: Iterable[PreparedItem], batch_size: int, summary: Summary
) -> Iterator[Prediction]:
    """Batches of prepared photos through the model (`model()` gives it, loading it the first time:
    a damaged one stops the run here, before any photo is written); the ones that failed on the way
    are recorded."""
    for batch in batched(photos_ready(prepared, summary), batch_size):
        runner = model()
        started = time.perf_counter()
        results = predict_in_halves(runner.predict, [photo.L_small for _, photo in batch])
        share = (time.perf_counter() - started) / len(batch)
        for (job, photo), ab in zip(batch, results, strict=True):
            if error := prediction_error(ab):
                summary.record(job, Outcome("failed", error, photo.width, photo.height))
            else:
                yield Prediction(job, ab, photo.decoded, photo.seconds + share)


def photos_ready(prepared: Iterable[PreparedItem], summary: Summary) -> Iterator[tuple[Job, Prepared]]:
    for job, result in prepared:
        if isinstance(result, Prepared):
            yield job, result
        else:
            summary.record(job, as_outcome(result))


def start_workers(workers: int, kind: str, device: torch.device) -> Executor:
    """The decoders and writers beside the model, at the lowest priority.
    auto: threads when the model runs on the CPU (it keeps every core busy and they only fill its
    pauses, so they need no scaling past the GIL and gain from having no start-up and nothing to copy
    between processes: faster end to end on 2 cores in side-by-side `make bench` runs); processes with a GPU,
    where they have the cores to themselves (and started before the model loads, to overlap it).
    processes: also isolates a decoder that crashes (the photos in flight fail, the run goes on)."""
    if kind not in WORKER_KINDS:
        raise UserError(f"worker kind {kind!r}: must be one of {', '.join(WORKER_KINDS)}")
    if workers == 0:
        return INLINE
    if kind == "threads" or (kind == "auto" and device.type == "cpu"):
        pool = thread_pool(workers, init_worker_thread, nice=WORKER_NICE)
        pool.submit(warm_up)  # one thread warms up while the others decode the first photos
        return pool
    return RestartingPool(lambda: process_pool(workers, init_worker, nice=WORKER_NICE, start_now=True))


def default_workers() -> int:
    """One per core but one (the model's feeder), and at least 2: on a 2-core machine two workers
    overlapped the model better than one (measured with `make bench`)."""
    return max(2, (os.cpu_count() or 1) - 1)


def as_outcome(result: Outcome | Exception) -> Outcome:
    """A worker's outcome, or the row for the exception it raised instead."""
    if isinstance(result, Outcome):
        return result
    if isinstance(result, BrokenProcessPool):  # the pool restarts itself for the photos after these
        return Outcome("failed", "a worker process died with this photo in flight (out of memory?); rerun to retry")
    return Outcome("failed", f"worker error: {type(result).__name__}: {result}")
