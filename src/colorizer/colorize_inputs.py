"""What `colorizer colorize` reads and where it writes: the inputs under SRC (folders, archives
streamed member by member, one photo), each one's output path inside DST, and the checks that keep a
run from reading its own outputs, writing outside DST, or sharing DST with another run."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from colorizer.colorize_worker import Job, Outcome
from colorizer.config import ArchiveConfig, UserError
from colorizer.files import atomic_path, is_temp_name
from colorizer.images import FORMAT_SUFFIXES, SUFFIX_FORMATS
from colorizer.sources import ARCHIVE_SUFFIXES, Rejected, archive_candidates

LOCK_NAME = ".colorizer.lock"
# Scan archives are large by nature: limits far above fetch's, still refusing zip bombs and huge members.
ARCHIVE_LIMITS = ArchiveConfig(
    max_members=1_000_000, max_member_bytes=1_000_000_000, max_total_bytes=1_000_000_000_000, max_ratio=200.0
)


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


def check_paths(src: Path, dst: Path, probe: bool = True) -> None:
    """SRC exists and is something colorize reads, SRC and DST don't overlap, and (`probe`) DST can be
    written: made if need be, and a file written and removed there."""
    if not src.exists():
        raise UserError(f"{src}: no such folder or archive")
    src_real, dst_real = src.resolve(), dst.resolve()
    overwrites_itself = src.is_file() and (dst_real / src.name) == src_real  # one photo into its own folder
    if overwrites_itself or (src.is_dir() and (src_real.is_relative_to(dst_real) or dst_real.is_relative_to(src_real))):
        # SRC inside DST would read back outputs as inputs; DST inside SRC, the next run would.
        raise UserError(f"SRC {src} and DST {dst} overlap: choose a DST outside SRC (and SRC outside DST)")
    if src.is_file() and not src.name.lower().endswith(ARCHIVE_SUFFIXES) and src.suffix.lower() not in SUFFIX_FORMATS:
        raise UserError(f"{src}: SRC must be a folder, a .zip/.tar/.tar.gz archive or an image file")
    if not probe:
        return
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
