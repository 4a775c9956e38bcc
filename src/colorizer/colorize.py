"""Bulk colorization: `colorizer colorize SRC DST` over folders and archives, at full resolution.

Workers (threads beside a model on the CPU, processes beside a GPU) decode photos and shrink their
L to the model's size (`prepare`), the main process runs the generator on batches, and workers join
the upsampled a*b* with the ORIGINAL full-resolution L and write the result atomically (`finish`).
Outputs that already exist are skipped, so a killed run resumes where it stopped; a report row is
written for every input.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import typing
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from colorizer.checkpoints import PRETRAINED_DIR, load_generator
from colorizer.colorize_worker import Job, Outcome, finish, init_worker, init_worker_thread, prepare, warm_up
from colorizer.config import ColorizeOptions, UserError
from colorizer.devices import autocast, autocast_dtype, pick_device
from colorizer.files import atomic_path, atomic_write_bytes, is_temp_name, progress
from colorizer.images import FORMAT_SUFFIXES, SUFFIX_FORMATS, DecodedImage
from colorizer.lab import denormalize_ab
from colorizer.parallel import RestartingPool, process_pool, thread_pool
from colorizer.sources import ARCHIVE_SUFFIXES, ArchiveLimits, Rejected, archive_candidates

REPORT_NAME = "colorize_report.csv"
LOCK_NAME = ".colorizer.lock"
REPORT_COLUMNS = ["path", "status", "reason", "width", "height", "seconds"]
# Workers run at the lowest priority. Where torch has a thread on every core, a worker that preempts
# one of them stalls every parallel op of the model; at nice 19 the workers run mostly in the model's
# serial moments and while it waits for them, then on all cores. (Not SCHED_IDLE: that would starve
# them outright on a machine that other jobs keep busy.)
WORKER_NICE = 19
# Until worker processes are up, this process does their work, but joins and writes only photos up to
# this size: a huge scan's full-size planes (~40 bytes a pixel) go to a worker, which gives that memory
# back afterwards (this process keeps what it frees: see allocator).
INLINE_MAX_PIXELS = 4_000_000
WORKER_KINDS = typing.get_args(ColorizeOptions.model_fields["worker_kind"].annotation)
ARCHIVE_LIMITS = ArchiveLimits(
    max_members=1_000_000, max_member_bytes=1_000_000_000, max_total_bytes=1_000_000_000_000, max_ratio=200.0
)


@dataclass
class Summary:
    rows: dict[int, tuple[str, Outcome]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(outcome.status == status for _, outcome in self.rows.values())


class InlineExecutor(Executor):
    """`--workers 0`: everything in this process (debugging, or where starting processes is not allowed)."""

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 (handed to the caller through the future)
            future.set_exception(e)
        return future


INLINE = InlineExecutor()


# ---- inputs -----------------------------------------------------------------------------------------


def output_target(dst: Path, relative: str, fmt_option: str | None) -> tuple[Path, str] | None:
    """Where an input's output goes and in which format; None if its name is not an image's."""
    suffix = Path(relative).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        return None
    target = dst / relative
    if fmt_option:
        target = target.with_suffix(FORMAT_SUFFIXES[fmt_option])
    resolved_dst = dst.resolve()
    if os.path.commonpath([resolved_dst, target.resolve()]) != str(resolved_dst):
        return None  # never write outside DST (a name that climbs out is refused upstream too)
    return target, fmt_option or SUFFIX_FORMATS[suffix]


def count_inputs(src: Path) -> int | None:
    """How many inputs the progress bar expects, from a listing alone; None for a tar archive, which
    could only be counted by reading it through once more."""
    if src.is_dir():
        return sum(1 for p in src.rglob("*") if p.suffix.lower() in SUFFIX_FORMATS and not p.is_dir())
    if not src.name.lower().endswith(ARCHIVE_SUFFIXES):
        return 1
    if src.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(src) as archive:
                return sum(1 for info in archive.infolist() if Path(info.filename).suffix.lower() in SUFFIX_FORMATS)
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def enumerate_inputs(src: Path, dst: Path, fmt_option: str | None) -> Iterator[tuple[str, Job | Outcome]]:
    """(relative path, job or already-failed row) for every image-named file in SRC, in sorted order.
    Jobs are numbered later, by `colorize`, together with the failed rows."""
    if src.is_file() and not src.name.lower().endswith(ARCHIVE_SUFFIXES):  # one photo: DST/<its name>
        placed = output_target(dst, src.name, fmt_option)
        if placed:
            yield src.name, Job(0, src.name, str(placed[0]), placed[1], source_file=str(src))
        return
    if src.is_file():
        for item in archive_candidates(src, ARCHIVE_LIMITS):
            member = item.path.split("!", 1)[1] if "!" in item.path else item.path
            if isinstance(item, Rejected):
                yield member, Outcome("failed", f"{item.reason} {item.detail}".strip())
                continue
            placed = output_target(dst, member, fmt_option)
            if placed:
                yield member, Job(0, member, str(placed[0]), placed[1], data=item.read())
        return
    for path in sorted(src.rglob("*")):  # check_paths made sure that DST is not inside SRC
        if path.is_dir() or path.suffix.lower() not in SUFFIX_FORMATS:
            continue
        relative = path.relative_to(src).as_posix()
        if path.is_symlink():
            yield relative, Outcome("failed", "link: symbolic links are not followed")
            continue
        placed = output_target(dst, relative, fmt_option)
        if placed:
            yield relative, Job(0, relative, str(placed[0]), placed[1], source_file=str(path))


def check_paths(src: Path, dst: Path) -> None:
    if not src.exists():
        raise UserError(f"{src}: no such folder or archive")
    src_real, dst_real = src.resolve(), dst.resolve()
    overwrites_itself = src.is_file() and (dst_real / src.name) == src_real  # one photo into its own folder
    if overwrites_itself or (src.is_dir() and (src_real.is_relative_to(dst_real) or dst_real.is_relative_to(src_real))):
        # SRC inside DST would read back outputs as inputs; DST inside SRC, the next run would.
        raise UserError(f"SRC {src} and DST {dst} overlap: choose a DST outside SRC (and SRC outside DST)")
    if src.is_file() and not src.name.lower().endswith(ARCHIVE_SUFFIXES) and src.suffix.lower() not in SUFFIX_FORMATS:
        raise UserError(f"{src}: SRC must be a folder, a .zip/.tar/.tar.gz archive or an image file")
    try:
        dst.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst / ".colorizer-write-test") as probe:
            probe.write_bytes(b"")
        (dst / ".colorizer-write-test").unlink()
    except OSError as e:
        raise UserError(f"{dst}: cannot write here ({e.strerror or e})") from None


def remove_temp_leftovers(dst: Path) -> int:
    """Half-written temp files of a run that was killed (their final names were never taken)."""
    removed = 0
    for path in dst.rglob("*"):
        if path.is_file() and is_temp_name(path.name):
            path.unlink()
            removed += 1
    return removed


# ---- the model, in the main process -----------------------------------------------------------------


class ModelRunner:
    """The trained generator on the chosen device, predicting a*b* (Lab units) for batches of L."""

    def __init__(self, model_dir: Path, options: ColorizeOptions):
        generator, info = load_generator(model_dir)
        self.size = options.size or info["image_size"]
        multiple = 2 ** len(generator.down)
        if self.size % multiple:
            raise UserError(f"--size {self.size}: must be a multiple of {multiple} for this model")
        self.device = pick_device(options.device, "--device")
        self.generator = generator.to(self.device, memory_format=torch.channels_last)
        self.amp_dtype = autocast_dtype(options.precision, self.device)
        self.description = f"colorized by colorizer; model sha256 {info['model_sha256']}"

    @torch.inference_mode()
    def predict(self, L_batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(L_batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            ab = self.generator(x)
        return denormalize_ab(ab.float().cpu().numpy())


def predict_in_halves(predict, batch: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Predict a batch; if the model fails (out of memory, say), retry each half, down to single images."""
    try:
        return list(predict(np.stack(batch)))
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        if len(batch) == 1:
            return [e]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        middle = len(batch) // 2
        return predict_in_halves(predict, batch[:middle]) + predict_in_halves(predict, batch[middle:])


# ---- the run ----------------------------------------------------------------------------------------


def colorize(src: Path, dst: Path, model_dir: Path = PRETRAINED_DIR, options: ColorizeOptions | None = None) -> Summary:
    """Colorize every photo under SRC (a folder, an archive or one photo) into DST; model_dir defaults
    to the shipped model."""
    options = options or ColorizeOptions()
    src, dst = Path(src), Path(dst)
    check_paths(src, dst)
    with dst_lock(dst):
        workers = options.workers if options.workers is not None else default_workers()
        pool = start_workers(workers, options.worker_kind, pick_device(options.device, "--device"))  # before the model
        try:
            return _colorize(src, dst, model_dir, options, pool, workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def dst_lock(dst: Path) -> Iterator[None]:
    """One run at a time per DST: a second one would delete the first's temp files as leftovers and
    overwrite its report. The OS drops the lock when a run dies, so a killed run never blocks the next."""
    lock = FileLock(dst / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{dst}: another colorize run is writing here; wait for it or choose another DST") from None
    try:
        yield
    finally:
        # Removed so that DST holds only outputs and the report. A second run that opened the file
        # just before this unlink could lock the orphan beside a third: a window of microseconds,
        # between runs that were started together into the same DST.
        (dst / LOCK_NAME).unlink(missing_ok=True)
        lock.release()


def _colorize(src: Path, dst: Path, model_dir: Path, options: ColorizeOptions, pool: Executor, workers: int) -> Summary:
    runner = ModelRunner(model_dir, options)
    remove_temp_leftovers(dst)
    summary = Summary()
    started = time.perf_counter()
    bar = progress(None, desc="colorize", total=count_inputs(src))

    def jobs() -> Iterator[Job]:
        """The inputs as they are listed, failed and skipped ones recorded on the way: an archive's
        members are read one at a time as the pipeline takes them, so a multi-GB archive never sits
        in memory whole."""
        for index, (relative, item) in enumerate(enumerate_inputs(src, dst, options.format)):
            if isinstance(item, Outcome):
                summary.rows[index] = (relative, item)
                bar.update(1)
            elif Path(item.target).exists() and not options.overwrite:
                summary.rows[index] = (relative, Outcome("skipped", "output exists"))
                bar.update(1)
            else:
                yield replace(item, index=index)

    try:
        _Pipeline(runner, pool, options, summary, bar, workers).run(jobs())
        pool.shutdown(wait=False)  # every photo is written: the workers exit while the report is written
    finally:
        bar.close()
        write_report(dst / REPORT_NAME, summary, options.report_seconds)
    seconds = time.perf_counter() - started
    done, skipped, failed = summary.count("done"), summary.count("skipped"), summary.count("failed")
    print(
        f"colorize: {done} done, {skipped} skipped, {failed} failed in {seconds:.1f} s "
        f"({done / max(seconds, 1e-9):.2f} images/s); report: {dst / REPORT_NAME}",
        file=sys.stderr,
    )
    return summary


def start_workers(workers: int, kind: str, device: torch.device) -> Executor:
    """The decoders and writers beside the model, at the lowest priority.
    auto: threads when the model runs on the CPU (it keeps every core busy and they only fill its
    pauses, so they need no scaling past the GIL and gain from having no start-up and nothing to copy
    between processes: +4% end to end on 2 cores, in 6 side-by-side runs); processes with a GPU,
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


class _Pipeline:
    """prepare (workers) -> batches through the model (here) -> finish (workers), with bounded queues
    so that only a few full-resolution images are ever in memory at once."""

    def __init__(
        self,
        runner: ModelRunner,
        pool: Executor,
        options: ColorizeOptions,
        summary: Summary,
        bar,
        workers: int,
    ):
        self.runner, self.options, self.summary, self.bar = runner, options, summary, bar
        self.pool = pool
        self.prepared: deque[tuple[Job, Future]] = deque()
        self.finishing: deque[tuple[Job, Future, float]] = deque()
        self.batch: list[tuple[Job, np.ndarray, Outcome, DecodedImage | None]] = []
        self.window = options.batch_size + 2 * max(workers, 1)

    def run(self, jobs: Iterable[Job]) -> None:
        try:
            for job in jobs:
                future = self._executor().submit(prepare, job, self.runner.size, self.options.max_pixels)
                self.prepared.append((job, future))
                while len(self.prepared) > self.window:
                    self._take_prepared()
            while self.prepared:
                self._take_prepared()
            if self.batch:
                self._run_model()
            self._collect(keep=0)
        except KeyboardInterrupt:
            self._settle_writes_in_flight()
            raise

    def _settle_writes_in_flight(self) -> None:
        """Ctrl-C or SIGTERM: writes that have started finish and are recorded, so that every photo
        on disk is in the report; the rest are cancelled (a rerun does them)."""
        for _, future in self.prepared:
            future.cancel()
        while self.finishing:
            job, future, seconds_before = self.finishing.popleft()
            if future.cancel():
                continue
            try:
                outcome = future.result(timeout=120)
            except Exception:  # noqa: BLE001 (not written: the rerun redoes it)
                continue
            outcome.seconds += seconds_before
            self._record(job, outcome)

    def _executor(self) -> Executor:
        """The workers once they are up; until worker processes are (~0.3 s of imports and warm-up)
        this process does their work itself, so that neither it nor the model waits: all `prepare`s
        (a large JPEG is decoded at a reduced scale there) and the `finish` of photos of up to
        INLINE_MAX_PIXELS."""
        ready = getattr(self.pool, "ready", None)
        return self.pool if ready is None or ready.is_set() else INLINE

    def _take_prepared(self) -> None:
        job, future = self.prepared.popleft()
        try:
            L_small, outcome, decoded = future.result()
        except Exception as e:
            L_small, outcome = None, worker_failure(e)
        if L_small is None:
            self._record(job, outcome)
            return
        self.batch.append((job, L_small, outcome, decoded))
        if len(self.batch) >= self.options.batch_size:
            self._run_model()

    def _run_model(self) -> None:
        started = time.perf_counter()
        results = predict_in_halves(self.runner.predict, [L for _, L, _, _ in self.batch])
        share = (time.perf_counter() - started) / len(self.batch)
        for (job, _, prepared, decoded), result in zip(self.batch, results, strict=True):
            if isinstance(result, Exception):
                self._record(
                    job, Outcome("failed", f"model error: {str(result)[:200]}", prepared.width, prepared.height)
                )
                continue
            executor = self._executor() if prepared.width * prepared.height <= INLINE_MAX_PIXELS else self.pool
            future = executor.submit(
                finish, job, result, self.options.quality, self.options.max_pixels, self.runner.description, decoded
            )
            self.finishing.append((job, future, prepared.seconds + share))
        self.batch.clear()
        self._collect(keep=self.window)

    def _collect(self, keep: int) -> None:
        """Record finished writes; wait for the oldest while more than `keep` are in flight."""
        while self.finishing and (self.finishing[0][1].done() or len(self.finishing) > keep):
            job, future, seconds_before = self.finishing[0]  # taken off only once recorded: an interrupt
            try:  # while waiting leaves it for _settle_writes_in_flight
                outcome = future.result()
            except Exception as e:
                outcome = worker_failure(e)
            self.finishing.popleft()
            outcome.seconds += seconds_before
            self._record(job, outcome)

    def _record(self, job: Job, outcome: Outcome) -> None:
        self.summary.rows[job.index] = (job.relative, outcome)
        self.bar.update(1)


def worker_failure(error: Exception) -> Outcome:
    if isinstance(error, BrokenProcessPool):  # the pool restarts itself for the photos after these
        return Outcome("failed", "a worker process died with this photo in flight (out of memory?); rerun to retry")
    return Outcome("failed", f"worker error: {type(error).__name__}: {error}")


def write_report(path: Path, summary: Summary, seconds: bool = True) -> None:
    """One row per input. With the csv module, not pandas: a file name that is not valid UTF-8 (Python
    keeps its bytes as surrogates) goes back out as the same bytes, where an Arrow string can't hold it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS if seconds else REPORT_COLUMNS[:-1])
    for _, (relative, o) in sorted(summary.rows.items()):
        size = ["" if o.width is None else o.width, "" if o.height is None else o.height]
        writer.writerow([relative, o.status, o.reason, *size] + ([round(o.seconds, 4)] if seconds else []))
    try:
        atomic_write_bytes(path, text.getvalue().encode("utf-8", "surrogateescape"))
    except OSError as e:
        raise UserError(
            f"{path}: could not write the report ({e.strerror or e}); every output written is complete: "
            "make room and rerun to finish"
        ) from None
