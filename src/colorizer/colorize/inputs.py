"""What `colorizer colorize` reads and where it writes: the inputs under SRC (folders, archives
streamed member by member, one photo), each one's output path inside DST, and the checks that keep a
run from reading its own outputs, writing outside DST, or sharing DST with another run."""

from __future__ import annotations

import os
import posixpath
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from filelock import FileLock, Timeout

from colorizer.colorize import storage
from colorizer.colorize.storage import Location
from colorizer.colorize.worker import Job, Outcome
from colorizer.config import ArchiveConfig, ColorizeOptions, UserError
from colorizer.data.images import FORMAT_SUFFIXES, SUFFIX_FORMATS
from colorizer.data.sources import ARCHIVE_SUFFIXES, Rejected, archive_candidates, unsafe_member_reason
from colorizer.files import is_temp_name

LOCK_NAME = ".colorizer.lock"
# Scan archives are large by nature: limits far above fetch's, still refusing zip bombs and huge members.
ARCHIVE_LIMITS = ArchiveConfig(
    max_members=1_000_000, max_member_bytes=1_000_000_000, max_total_bytes=1_000_000_000_000, max_ratio=200.0
)


# an input whose output path would leave DST (a link inside DST that leads out): never written there
OUTSIDE_DST = "output outside DST: a symbolic link in DST leads out of it"


def output_target(dst: Location, relative: str, fmt_option: str | None) -> tuple[Location, str, str] | None:
    """Where an input's output goes (its location, and its path relative to DST) and in which
    format; None if its name is not an image's."""
    suffix = PurePosixPath(relative).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        return None
    if fmt_option:
        relative = str(PurePosixPath(relative).with_suffix(FORMAT_SUFFIXES[fmt_option]))
    if unsafe_member_reason(relative):
        return None  # never write outside DST (a name that climbs out is refused upstream too)
    target = storage.join(dst, relative)
    if isinstance(dst, Path):
        resolved_dst = dst.resolve()
        if os.path.commonpath([resolved_dst, Path(target).resolve()]) != str(resolved_dst):
            return None  # e.g. through a link inside DST
    return target, fmt_option or SUFFIX_FORMATS[suffix], relative


def source_kind(src: Location) -> str:
    """`folder`, `archive` or `photo`."""
    if storage.archive_file(src) or storage.name_of(src).lower().endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return "folder" if storage.is_folder(src) else "photo"


def count_inputs(src: Location) -> int | None:
    """How many inputs the progress bar expects, from a listing alone; None for a tar archive, which
    could only be counted by reading it through once more."""
    kind = source_kind(src)
    if kind == "folder":
        return sum(1 for relative, _, _ in storage.files_under(src) if _is_image_name(relative))
    if kind == "photo":
        return 1
    if _is_zip(src):
        try:
            with storage.open_for_reading(src) as f, zipfile.ZipFile(f) as archive:
                return sum(1 for info in archive.infolist() if _is_image_name(info.filename))
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def enumerate_inputs(src: Location, dst: Location, fmt_option: str | None) -> Iterator[tuple[str, str, Job | Outcome]]:
    """(relative path, output's path relative to DST, job or already-failed row) for every
    image-named file in SRC, in sorted order (an archive's: in its order). Jobs are numbered later,
    by `colorize`, together with the failed rows."""
    kind = source_kind(src)
    if kind == "photo":  # one photo: DST/<its name>
        name = storage.name_of(src)
        placed = output_target(dst, name, fmt_option)
        if placed:
            yield name, placed[2], Job(0, name, placed[0], placed[1], source_file=src)
        elif _is_image_name(name):
            yield name, "", Outcome("failed", OUTSIDE_DST)
        return
    if kind == "archive":
        with storage.open_for_reading(src) as opened:
            for item in archive_candidates(str(src), ARCHIVE_LIMITS, opened, is_zip=_is_zip(src)):
                member = item.path.split("!", 1)[1] if "!" in item.path else item.path
                if isinstance(item, Rejected):
                    yield member, "", Outcome("failed", f"{item.reason} {item.detail}".strip())
                    continue
                placed = output_target(dst, member, fmt_option)
                if placed:
                    yield member, placed[2], Job(0, member, placed[0], placed[1], data=item.read())
                elif _is_image_name(member):
                    yield member, "", Outcome("failed", OUTSIDE_DST)
        return
    for relative, where, is_link in storage.files_under(src):  # check_paths made sure DST is not inside SRC
        if not _is_image_name(relative):
            continue
        if is_link:
            yield relative, "", Outcome("failed", "link: symbolic links are not followed")
            continue
        placed = output_target(dst, relative, fmt_option)
        if placed:
            yield relative, placed[2], Job(0, relative, placed[0], placed[1], source_file=where)
        else:
            yield relative, "", Outcome("failed", OUTSIDE_DST)


def planned_inputs(src: Location, dst: Location, options: ColorizeOptions) -> Iterator[tuple[int, str, Job | Outcome]]:
    """(number, relative path, job to do or row already decided) per input, in listing order: the one
    place that decides what is refused while listing and what is skipped because its output exists
    (known from one listing of DST, not a request per photo: on an object store that is the cost)."""
    existing = set() if options.overwrite else {posixpath.normpath(name) for name in storage.relative_files(dst)}
    claimed: dict[str, str] = {}  # output -> the input it belongs to: one output, one input
    for index, (relative, output, item) in enumerate(enumerate_inputs(src, dst, options.format)):
        output = posixpath.normpath(output) if output else output  # ./b.jpg and d//e.jpg name b.jpg, d/e.jpg
        if isinstance(item, Outcome):
            yield index, relative, item
        elif output in claimed:  # the first in listing order keeps it, on every run alike
            yield index, relative, Outcome("failed", f"same output as {claimed[output]} ({output}): rename one")
        else:
            claimed[output] = relative
            if output in existing:
                yield index, relative, Outcome("skipped", "output exists")
            else:
                yield index, relative, replace(item, index=index)


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUFFIX_FORMATS


def _is_zip(src: Location) -> bool:
    return str(src).startswith("zip::") or storage.name_of(src).lower().endswith(".zip")


def check_paths(src: Location, dst: Location, probe: bool = True) -> None:
    """SRC exists and is something colorize reads, SRC and DST don't overlap, and (`probe`) DST can be
    written: made if need be, and a file written and removed there."""
    try:
        if not storage.exists(src):
            raise UserError(f"{src}: no such folder or archive")
        kind = source_kind(src)
    except UserError:
        raise
    except Exception as e:  # a storage that refuses: no credentials (the cloud SDKs' errors share no base class)
        raise UserError(f"{src}: cannot read it ({type(e).__name__}: {e})") from None
    overwrites_itself = kind == "photo" and storage.same_or_inside(storage.join(dst, storage.name_of(src)), src)
    if overwrites_itself or (
        kind == "folder" and (storage.same_or_inside(src, dst) or storage.same_or_inside(dst, src))
    ):
        # SRC inside DST would read back outputs as inputs; DST inside SRC, the next run would.
        raise UserError(f"SRC {src} and DST {dst} overlap: choose a DST outside SRC (and SRC outside DST)")
    if kind == "photo" and isinstance(src, Path) and src.exists() and not src.is_file():
        # a FIFO or a device would block the reader until someone writes to it, past any SIGTERM
        raise UserError(f"{src}: not a regular file (a FIFO, device or socket): SRC must be a file, folder or archive")
    if kind == "photo" and not _is_image_name(storage.name_of(src)):
        raise UserError(f"{src}: SRC must be a folder, a .zip/.tar/.tar.gz archive or an image file")
    if not probe:
        return
    try:
        if isinstance(dst, Path):
            dst.mkdir(parents=True, exist_ok=True)
        test = storage.join(dst, ".colorizer-write-test")
        storage.write_bytes(test, b"")
        storage.remove(test)
    except OSError as e:
        raise UserError(f"{dst}: cannot write here ({e.strerror or e})") from None
    except Exception as e:  # a cloud SDK's own errors (missing credentials) are not OSErrors
        raise UserError(f"{dst}: cannot write here ({type(e).__name__}: {e})") from None


def remove_temp_leftovers(dst: Location) -> int:
    """Half-written temp files of a run that was killed (their final names were never taken). An
    object store has none: each output is one request."""
    removed = 0
    if not isinstance(dst, Path):
        return 0
    for path in dst.rglob("*"):
        if path.is_file() and is_temp_name(path.name):
            path.unlink()
            removed += 1
    return removed


@contextmanager
def dst_lock(dst: Location) -> Iterator[None]:
    """One run at a time per DST: a second one would delete the first's temp files as leftovers and
    overwrite its report. The OS drops the lock when a run dies, so a killed run never blocks the next.
    Object stores have no such lock: there, one run per DST is the user's to keep (README)."""
    if not isinstance(dst, Path):
        yield
        return
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
