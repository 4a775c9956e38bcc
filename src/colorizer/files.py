"""Atomic writes and progress bars: the one helper for each, used by every stage."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")
# A temp file's name: "." + (the start of) its final name + "." + 8 hex digits + TEMP_MARK + its
# suffix. Only names of exactly this shape are ever swept as leftovers: a user's ".notes.tmp.txt" is not.
TEMP_MARK = ".colorizer-tmp"
_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{8}" + re.escape(TEMP_MARK) + r"(\.[^.]*)?", re.DOTALL)
NAME_MAX = 255  # bytes in one file name (ext4, XFS, APFS, NTFS)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller to write; then flush it to the disk (fsync) and
    rename it into place; on any error remove it.

    A kill, a full disk or a power cut at any moment leaves either the old file or the new one,
    never half of one. The temp name keeps `path`'s suffix (or `suffix`) so writers that pick a
    format by extension work. (The folder itself is not synced after the rename: if power fails
    just then the rename may be lost, leaving the old state, which a rerun redoes.)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    keep_suffix = final.suffix if suffix is None else suffix
    tmp = _new_temp_file(final, keep_suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp_file(final: Path, suffix: str) -> Path:
    """A new, empty temp file beside `final` (created exclusively, with the permissions of any other
    output), named as `is_temp_name` recognises. A final name near the 255-byte limit is shortened
    inside the temp name, so that any name that can exist can be written."""
    while True:
        tail = f".{secrets.token_hex(4)}{TEMP_MARK}{suffix}"
        room = NAME_MAX - 1 - len(os.fsencode(tail))
        head = os.fsdecode(os.fsencode(final.name)[:room])  # bytes, as the file system counts them
        tmp = final.parent / f".{head}{tail}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # less the umask, as open(2) does
        except FileExistsError:
            continue
        return tmp


def _fsync(path: Path) -> None:
    """The file's data on the disk: a full or failing disk raises here (ENOSPC, EIO) rather than
    after the rename, when the kernel writes the cached pages back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """All of `data` written, flushed, synced and its size checked before the rename. Callers encode
    to memory first: some writers (Pillow's JPEG) take a short write on a full disk for success."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            written = os.fstat(f.fileno()).st_size
        if written != len(data):
            raise OSError(errno.EIO, f"wrote {written} of {len(data)} bytes", str(path))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def is_temp_name(name: str) -> bool:
    """True for the names `atomic_path` gives its temp files (leftovers of a killed run), and no other."""
    return _TEMP_NAME.fullmatch(name) is not None


def progress(items: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr (images/s and ETA); quiet when stderr is not a terminal unless
    COLORIZER_PROGRESS=1, and under -q (the colorizer logger above INFO). With items=None it is a bar
    to `update()` by hand."""
    from tqdm import tqdm  # here, not at the top: worker processes import this module and never draw bars

    wanted = logging.getLogger("colorizer").isEnabledFor(logging.INFO)
    show = wanted and (sys.stderr.isatty() or os.environ.get("COLORIZER_PROGRESS") == "1")
    return tqdm(items, desc=desc, total=total, unit=unit, disable=not show, dynamic_ncols=True)
