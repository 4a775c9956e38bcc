"""What a colorize run reports, whichever engine ran it: one row per input (the report, rewritten by
each run), one line per run (the history, appended), and the line that ends the run."""

from __future__ import annotations

import csv
import datetime
import io
import logging
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field

from colorizer.colorize import storage
from colorizer.colorize.storage import Location
from colorizer.colorize.worker import Job, Outcome
from colorizer.config import UserError

log = logging.getLogger(__name__)

REPORT_NAME = "colorize_report.csv"
REPORT_COLUMNS = ["path", "status", "reason", "width", "height", "seconds"]
# one line per run into a DST, appended (the report holds the last run's rows: a rerun's `skipped`)
HISTORY_NAME = "colorize_history.csv"
HISTORY_COLUMNS = ["finished_utc", "engine", "done", "skipped", "failed", "seconds"]


class Row(typing.NamedTuple):
    """One input's outcome, as its line in the report."""

    path: str  # relative to SRC (an archive's member name)
    status: str  # done, skipped or failed
    reason: str
    width: int | None
    height: int | None
    seconds: float


@dataclass
class Summary:
    """One row per input, by input number, and the progress bar that counts them. Iterating gives
    the `Row`s in input order, as the report lists them."""

    bar: typing.Any
    rows: dict[int, tuple[str, Outcome]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Row]:
        for _, (relative, o) in sorted(self.rows.items()):
            yield Row(relative, o.status, o.reason, o.width, o.height, o.seconds)

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, job: Job, outcome: Outcome, seconds_before: float = 0.0) -> None:
        outcome.seconds += seconds_before
        self.record_row(job.index, job.relative, outcome)

    def record_row(self, index: int, relative: str, outcome: Outcome) -> None:
        self.rows[index] = (relative, outcome)
        self.bar.update(1)

    def count(self, status: str) -> int:
        return sum(outcome.status == status for _, outcome in self.rows.values())


def log_summary(summary: Summary, dst: Location, seconds: float, engine: str = "") -> None:
    """The line that ends a run (both engines)."""
    done, skipped, failed = summary.count("done"), summary.count("skipped"), summary.count("failed")
    log.info(
        "colorize%s: %d done, %d skipped, %d failed in %.1f s (%.2f images/s); report: %s",
        *(engine, done, skipped, failed, seconds, done / max(seconds, 1e-9), storage.join(dst, REPORT_NAME)),
    )


def append_history(dst: Location, summary: Summary, engine: str, seconds: float) -> None:
    """Add this run's line to DST's history of runs (an interrupted run's too): what every earlier
    run did, which the report, rewritten by each run, no longer says."""
    path = storage.join(dst, HISTORY_NAME)
    earlier = storage.read_bytes(path) if storage.exists(path) else ",".join(HISTORY_COLUMNS).encode() + b"\n"
    finished = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    counts = [summary.count(status) for status in ("done", "skipped", "failed")]
    line = ",".join(map(str, [finished, engine, *counts, round(seconds, 1)])) + "\n"
    try:
        storage.write_bytes(path, earlier + line.encode())
    except Exception as e:  # a full disk, say: the report and the outputs are what matter, and they are written
        log.warning("%s: could not append this run (%s)", path, getattr(e, "strerror", None) or e)


def write_report(path: Location, summary: Summary, seconds: bool = True) -> None:
    """One row per input. With the csv module, not pandas: a file name that is not valid UTF-8 (Python
    keeps its bytes as surrogates) goes back out as the same bytes, where an Arrow string can't hold it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS if seconds else REPORT_COLUMNS[:-1])
    for _, (relative, o) in sorted(summary.rows.items()):
        size = ["" if o.width is None else o.width, "" if o.height is None else o.height]
        writer.writerow([relative, o.status, o.reason, *size] + ([round(o.seconds, 4)] if seconds else []))
    try:
        storage.write_bytes(path, text.getvalue().encode("utf-8", "surrogateescape"))
    except Exception as e:  # a full disk, or an object store that refuses (the cloud SDKs' own errors)
        why = getattr(e, "strerror", None) or e
        raise UserError(
            f"{path}: could not write the report ({why}); every output written is complete: "
            "make room and rerun to finish"
        ) from None
