"""`colorizer colorize --engine ray`: the same three steps as the local engine, on a Ray cluster
with Ray Data, the field's engine for batch inference of a torch model over files.

Inputs are listed on the driver (the same `planned_inputs` as the local engine: what is skipped or
refused is decided in one place) -> `prepare` on CPU tasks, which read each photo from its storage and
pass on only its encoded bytes and the small model-size L plane (full decoded planes would fill the
object store) -> a pool of model actors (`map_batches` with a callable class: the model loads once
per actor, on a GPU where the cluster has them) -> `finish` on CPU tasks, which decode again, join the
full-resolution L and write the output whole. Every failure is a row with its reason: one photo's
exception never fails the dataset, which is what Ray does with an exception by default.

The driver feeds the inputs in waves of at most `WAVE_ROWS` photos (or `WAVE_BYTES` of archive
members, which only the driver can read out of their archive), so a listing of millions of photos or
a multi-GB archive never sits in the driver's memory whole.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from colorizer.colorize import storage
from colorizer.colorize.inference import ModelRunner, description_of, input_size, predict_in_halves, prediction_error
from colorizer.colorize.inputs import count_inputs, planned_inputs, remove_temp_leftovers
from colorizer.colorize.report import REPORT_NAME, Summary, append_history, log_summary, write_report
from colorizer.colorize.storage import Location
from colorizer.colorize.worker import Job, Outcome, Prediction, Prepared, finish, prepare
from colorizer.config import ColorizeOptions, UserError
from colorizer.files import progress
from colorizer.training.checkpoints import read_model_info

log = logging.getLogger(__name__)
WAVE_ROWS = 4096
WAVE_BYTES = 512 << 20
# The decode and write tasks wait on their storage (an object store's latency) about as much as
# they compute: half a CPU each runs two per core. It also keeps Ray from fusing the decode step
# into the model actors (it fuses maps whose resources match), where it would hold up the model.
TASK_CPUS = 0.5
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")


def colorize_with_ray(src: Location, dst: Location, model_dir: Path, options: ColorizeOptions) -> Summary:
    ray = connect(options.address)
    size = input_size(model_dir, options)
    description = description_of(read_model_info(Path(model_dir)))
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    actors = options.actors or (max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1)
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors * options.cpus_per_actor + TASK_CPUS > cpus:  # the tasks would wait forever for a CPU
        raise UserError(
            f"--actors {actors} x --cpus-per-actor {options.cpus_per_actor:g} leave no CPU for the decode and "
            f"write tasks on this Ray cluster ({cpus:g} CPUs): use fewer actors or fewer CPUs per actor"
        )
    log.debug(
        "colorize on Ray: %d model actors, %s CPUs and %s GPUs each", actors, options.cpus_per_actor, gpus_per_actor
    )

    remove_temp_leftovers(dst)
    summary = Summary(progress(None, desc="colorize (ray)", total=count_inputs(src)))
    started = time.perf_counter()
    try:
        for wave in _waves(src, dst, options, summary):
            dataset = (
                # blocks of a model batch each: one decode task per block, not one per photo
                ray.data.from_items(wave, override_num_blocks=-(-len(wave) // options.batch_size))
                .map(_prepare_row, fn_kwargs={"size": size, "max_pixels": options.max_pixels}, num_cpus=TASK_CPUS)
                .map_batches(
                    _ModelActor,
                    fn_constructor_kwargs={"model_dir": str(Path(model_dir).absolute()), "options": options},
                    batch_size=options.batch_size,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=options.cpus_per_actor,
                    num_gpus=gpus_per_actor,
                )
                .map(
                    _finish_row,
                    fn_kwargs={
                        "quality": options.quality,
                        "max_pixels": options.max_pixels,
                        "description": description,
                    },
                    num_cpus=TASK_CPUS,
                )
            )
            for row in dataset.iter_rows():
                outcome = Outcome(row["status"], row["reason"], row["width"], row["height"], row["seconds"])
                summary.record_row(row["index"], _name(row["relative"]), outcome)
            log.debug("Ray Data's figures for this wave:\n%s", dataset.stats())
    finally:
        summary.bar.close()
        write_report(storage.join(dst, REPORT_NAME), summary, options.report_seconds)
        if options.history:
            append_history(dst, summary, "ray", time.perf_counter() - started)
    log_summary(summary, dst, time.perf_counter() - started, engine=f" (ray, {actors} actors)")
    return summary


def connect(address: str | None):
    """Ray, connected: to `address` (auto, HOST:PORT), else RAY_ADDRESS, else a new local Ray; an
    already-connected driver (a notebook, a test) is used as it is."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'colorizer[ray]' (or pip install 'ray[data]')") from None
    if not ray.is_initialized():
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        # the storage credentials and endpoints this driver was given reach its tasks and actors too
        # (a cluster's workers don't inherit the driver's environment)
        storage_env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}
        try:
            ray.init(
                address=address,
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env={"env_vars": storage_env} if storage_env else None,
            )
        except ConnectionError as e:
            raise UserError(f"--address {address}: no Ray cluster there ({e})") from None
    context = ray.data.DataContext.get_current()  # imports ray.data, which sets up its own logging
    context.enable_progress_bars = False  # ours counts photos, across waves
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on each dataset run; errors still show
    return ray


def _check_reachable(address: str | None, seconds: float = 5.0) -> None:
    """A HOST:PORT that nothing answers at is one line at once: Ray itself would retry for minutes."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except (OSError, ValueError) as e:
        raise UserError(f"--address {address}: no Ray cluster answers there ({e})") from None


def _waves(src: Location, dst: Location, options: ColorizeOptions, summary: Summary) -> Iterator[list[dict]]:
    """The jobs as Ray Data rows, a wave at a time; rows decided while listing go to the report."""
    wave: list[dict] = []
    held = 0
    for index, relative, item in planned_inputs(src, dst, options):
        if not isinstance(item, Job):
            summary.record_row(index, relative, item)
            continue
        wave.append(_row(item))
        held += len(item.data or b"")
        if len(wave) >= WAVE_ROWS or held >= WAVE_BYTES:
            yield wave
            wave, held = [], 0
    if wave:
        yield wave


# Rows carry names as bytes: a file name that is not valid UTF-8 (Python keeps its bytes as
# surrogates) can't be an Arrow string, and Ray Data keeps rows in Arrow. Local paths go absolute:
# a cluster's workers don't share the driver's working directory.
def _row(job: Job) -> dict[str, Any]:
    return {
        "index": job.index,
        "relative": _bytes(job.relative),
        "target": _bytes(_absolute(job.target)),
        "target_is_url": isinstance(job.target, str),
        "fmt": job.fmt,
        "source": _bytes(_absolute(job.source_file) if job.source_file else ""),
        "source_is_url": isinstance(job.source_file, str),
        "data": job.data or b"",
        "has_data": job.data is not None,  # an archive member may be empty: b"" is data too
    }


def _job(row: dict[str, Any]) -> Job:
    target, source = _name(row["target"]), _name(row["source"])
    return Job(
        index=int(row["index"]),
        relative=_name(row["relative"]),
        target=target if row["target_is_url"] else Path(target),
        fmt=row["fmt"],
        source_file=(source if row["source_is_url"] else Path(source)) if source else None,
        data=row["data"] if row["has_data"] else None,
    )


def _absolute(where: Location) -> str:
    return where if isinstance(where, str) else str(where.absolute())


def _bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _name(value: bytes) -> str:
    return bytes(value).decode("utf-8", "surrogateescape")


def _prepare_row(row: dict[str, Any], size: int, max_pixels: int) -> dict[str, Any]:
    """A CPU task: read and decode the photo, make the model's input; a failure becomes the row's status."""
    job = _job(row)
    try:
        data = job.read()
        prepared = prepare(Job(job.index, job.relative, job.target, job.fmt, data=data), size, max_pixels)
    except Exception as e:  # a storage error reading it: this photo fails, the run goes on
        data, prepared = b"", Outcome("failed", f"unreadable: {type(e).__name__}: {e}"[:300])
    blank = np.zeros((1, size, size), np.float32)
    if isinstance(prepared, Prepared):
        row.update(data=data, has_data=True, L_small=prepared.L_small, status="", reason="", seconds=prepared.seconds)
        row.update(width=prepared.width, height=prepared.height)
    else:
        row.update(data=b"", L_small=blank, status=prepared.status, reason=prepared.reason, seconds=0.0)
        row.update(width=-1, height=-1)  # not known: Arrow columns of ints, -1 for none
    return row


class _ModelActor:
    """The generator, loaded once per actor, predicting a*b* for the batch's photos that are still
    pending (status ""); the others pass through."""

    def __init__(self, model_dir: str, options: ColorizeOptions):
        import torch

        # Ray starts its workers with OMP_NUM_THREADS=1: torch gets the CPUs this actor was given
        torch.set_num_threads(max(1, int(options.cpus_per_actor)))
        self.runner = ModelRunner(Path(model_dir), options.size, options.device, options.precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["index"])
        size = batch["L_small"].shape[-1]
        ab = np.zeros((count, 2, size, size), np.float32)
        pending = [i for i in range(count) if batch["status"][i] == ""]
        started = time.perf_counter()
        try:
            results = predict_in_halves(self.runner.predict, [batch["L_small"][i] for i in pending]) if pending else []
        except Exception as e:  # not a RuntimeError (those retry in halves): these photos fail, the run goes on
            results = [e] * len(pending)
        share = (time.perf_counter() - started) / max(len(pending), 1)
        status, reason = batch["status"].astype(object), batch["reason"].astype(object)
        for i, result in zip(pending, results, strict=True):
            if error := prediction_error(result):
                status[i], reason[i] = "failed", error
            else:
                ab[i] = result
        batch.update(ab_small=ab, status=status, reason=reason, seconds=batch["seconds"] + share)
        del batch["L_small"]
        return batch


def _finish_row(row: dict[str, Any], quality: int, max_pixels: int, description: str) -> dict[str, Any]:
    """A CPU task: decode the photo again, join its full-size L with the predicted a*b*, write it."""
    job = _job(row)
    width, height = (
        (None if row["width"] < 0 else int(row["width"])),
        (None if row["height"] < 0 else int(row["height"])),
    )
    if row["status"]:
        outcome = Outcome(row["status"], row["reason"], width, height)
    else:
        try:
            outcome = finish(Prediction(job, row["ab_small"], None, 0.0), quality, max_pixels, description)
        except Exception as e:  # a storage error the writer did not expect: a row, never a failed dataset
            outcome = Outcome("failed", f"write failed: {type(e).__name__}: {e}"[:300], width, height)
    return {
        "index": job.index,
        "relative": row["relative"],
        "status": outcome.status,
        "reason": outcome.reason,
        "width": outcome.width,
        "height": outcome.height,
        "seconds": float(row["seconds"]) + outcome.seconds,
    }
