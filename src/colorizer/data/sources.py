"""Where photos come from: bundled samples, the user's folder, archives in it, and URL lists.

Each source yields `Candidate`s (a display path and a way to read the bytes) or `Rejected`s (a
path and why it was refused before decoding). Archives are read member by member as streams of
regular files, never extracted, and bounded against zip bombs and path tricks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from colorizer.config import ArchiveConfig, DownloadConfig
from colorizer.files import atomic_write_bytes
from colorizer.parallel import OrderedMap, thread_pool

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
URL_LIST_SUFFIX = ".urls"

# Natural colour photos shipped inside installed packages (the offline default). Greyscale,
# synthetic and texture images in the same folders (camera, coins, brick, color.png, ...) are left
# out, and so is motorcycle_right: it is the stereo twin of motorcycle_left and would leak across splits.
BUNDLED_SAMPLES = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/retina.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


@dataclass(frozen=True)
class Candidate:
    path: str  # where it came from, for people: "data/a.zip!photos/x.jpg"
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str
    detail: str = ""


def bundled_samples() -> Iterator[Candidate]:
    """The sample photos of whichever of scikit-image, scikit-learn, matplotlib are installed."""
    for package, relative in BUNDLED_SAMPLES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if path.is_file():
            yield Candidate(f"samples:{package}/{relative}", path.read_bytes)


def corpus_candidates(corpus_dir: Path) -> Iterator[Candidate | Rejected]:
    """The photos `make corpus` selected, in manifest order, shown as corpus:<package>/<path>."""
    from colorizer.data.corpus import read_manifest  # pandas: only when the corpus is a source

    for file in read_manifest(corpus_dir).file:
        path = corpus_dir / file
        if path.is_file():
            yield Candidate(f"corpus:{file}", path.read_bytes)
        else:
            yield Rejected(f"corpus:{file}", "missing", "in the corpus manifest but not on disk (run make corpus)")


def folder_candidates(
    root: Path, limits: ArchiveConfig, download: DownloadConfig, cache_dir: Path
) -> Iterator[Candidate | Rejected]:
    """Every file under `root` (sorted, recursive): images, archive members, URL-list entries."""
    for path in sorted(p for p in root.rglob("*") if not _is_hidden(p.relative_to(root))):
        shown = readable(path.as_posix())
        if path.is_symlink():
            yield Rejected(shown, "link", "symbolic links are not followed")
        elif not path.is_file():
            continue
        elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
            yield from archive_candidates(path, limits)
        elif path.name.lower().endswith(URL_LIST_SUFFIX):
            yield from url_candidates(path, download, cache_dir)
        else:
            yield Candidate(shown, path.read_bytes)


def readable(name: str) -> str:
    """A file name for the manifest: bytes that are not UTF-8 (kept by Python as surrogates, which
    Parquet can't store) are shown as \\xNN escapes; the file itself is still read by its real name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name could escape the folder it is read into, or None."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "unsafe path (absolute)"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "unsafe path (..)"
    return None


def archive_candidates(
    path: Path | str, limits: ArchiveConfig, opened: IO[bytes] | None = None, is_zip: bool | None = None
) -> Iterator[Candidate | Rejected]:
    """The members of a zip or tar archive at `path` (a local file, or, read through the seekable
    `opened`, any storage's: `path` then only names it), streamed one at a time; `is_zip` defaults
    to what its name says."""
    shown = path.as_posix() if isinstance(path, Path) else path
    if is_zip is None:
        is_zip = shown.lower().endswith(".zip")
    try:
        if is_zip:
            yield from _zip_members(shown, opened or path, limits)
        else:
            yield from _tar_members(shown, opened or path, limits)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        yield Rejected(shown, "bad archive", str(e))


def _zip_members(name: str, file: Path | IO[bytes], limits: ArchiveConfig) -> Iterator[Candidate | Rejected]:
    total = 0
    with zipfile.ZipFile(file) as archive:
        for count, info in enumerate(archive.infolist()):
            shown = readable(f"{name}!{info.filename}")
            if count >= limits.max_members:
                yield Rejected(name, "archive limit", f"more than {limits.max_members} members")
                return
            if info.is_dir():
                continue
            file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool recorded no type
            reason = unsafe_member_reason(info.filename)
            if reason is None and file_type not in (0, stat.S_IFREG):
                reason = "link or special file"
            if reason is None:
                reason = _size_reason(info.file_size, info.compress_size, total, limits)
            if reason:
                yield Rejected(shown, reason)
                continue
            total += info.file_size
            try:
                data = _read_bounded(lambda info=info: archive.open(info), limits.max_member_bytes)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                # encrypted (RuntimeError), a method Python can't read such as Deflate64
                # (NotImplementedError), a bad CRC or a damaged stream: this member; the next is
                # found by the central directory, so the run goes on to it
                yield Rejected(shown, "unreadable member", f"{type(e).__name__}: {e}")
                continue
            yield _member(shown, data)


def _tar_members(name: str, file: Path | IO[bytes], limits: ArchiveConfig) -> Iterator[Candidate | Rejected]:
    # Streamed (`for member in archive`), members read with extractfile(): nothing is extracted, so
    # tarfile's extraction filters (and their bypasses fixed after Python 3.11.7) never come into play.
    total = 0
    if isinstance(file, Path):
        packed_bytes, archive = file.stat().st_size, tarfile.open(file, mode="r:*")
    else:
        packed_bytes = file.seek(0, io.SEEK_END)
        file.seek(0)
        archive = tarfile.open(fileobj=file, mode="r:*")
    last = None
    with archive:
        for count, member in enumerate(archive):
            last = member.name
            shown = readable(f"{name}!{member.name}")
            if count >= limits.max_members:
                yield Rejected(name, "archive limit", f"more than {limits.max_members} members")
                return
            if member.isdir():
                continue
            reason = unsafe_member_reason(member.name)
            if reason is None and not member.isreg():
                reason = "link or special file"
            if reason is None:
                reason = _size_reason(member.size, None, total, limits)
            if reason is None and total + member.size > limits.max_ratio * packed_bytes:
                reason = "archive limit"  # the whole archive inflates too much: a bomb
            if reason:
                yield Rejected(shown, reason)
                continue
            total += member.size
            data = _read_bounded(lambda member=member: archive.extractfile(member), limits.max_member_bytes)
            yield _member(shown, data)
        damage = _unread_rest(archive)
    if damage:  # tarfile stops at a damaged header as if the archive ended there
        after = f"after {readable(last)}" if last else "from its start"
        yield Rejected(
            name,
            "bad archive",
            f"damaged {after}: any members after it were not read, and those read may be damaged ({damage})",
        )


def _unread_rest(archive: tarfile.TarFile) -> str | None:
    """Why the stream after tarfile's last member is not the archive's end (zero blocks up to EOF,
    and for gzip a stream whose CRC checks out), or None when it is."""
    try:
        while chunk := archive.fileobj.read(1 << 20):
            if chunk.strip(b"\0"):
                return "data after the last header that could be read"
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _size_reason(size: int, compressed: int | None, total: int, limits: ArchiveConfig) -> str | None:
    if size > limits.max_member_bytes:
        return "archive limit"
    if total + size > limits.max_total_bytes:
        return "archive limit"
    if compressed is not None and size > 1024 and size > limits.max_ratio * max(compressed, 1):
        return "archive limit"
    return None


def _read_bounded(open_stream: Callable, max_bytes: int) -> bytes | None:
    """Read at most max_bytes (+1 to notice a header that lied about the size)."""
    with open_stream() as stream:
        data = stream.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def _member(shown: str, data: bytes | None) -> Candidate | Rejected:
    if data is None:
        return Rejected(shown, "archive limit", "member larger than its header says")
    return Candidate(shown, lambda data=data: data)


def url_candidates(path: Path, settings: DownloadConfig, cache_dir: Path) -> Iterator[Candidate | Rejected]:
    """Download every http(s) URL listed in a `.urls` file, a few at a time, through an on-disk cache."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    urls = [line for line in lines if line and not line.startswith("#")]
    download = partial(_download_cached, settings=settings, cache_dir=cache_dir)
    with thread_pool(settings.workers) as pool:
        for url, result in OrderedMap(pool, download, urls, window=2 * settings.workers):
            shown = f"{path.as_posix()}!{url}"
            data, error = result if not isinstance(result, Exception) else (None, f"{type(result).__name__}: {result}")
            if error:
                yield Rejected(shown, "download failed", error)
            else:
                yield Candidate(shown, lambda data=data: data)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow a redirect to http(s) only: urllib would follow one to ftp:// too."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _download(url: str, settings: DownloadConfig) -> tuple[bytes, str | None]:
    """The body, or the reason it is not a whole image: `timeout_seconds` bounds each wait for data
    and `max_seconds` the whole download (a server that drips a byte a second never times out a
    read); a body shorter than its Content-Length, or a text page (an error page answered 200), is
    not an image."""
    deadline = time.monotonic() + settings.max_seconds
    with _OPENER.open(url, timeout=settings.timeout_seconds) as response:
        kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()  # none said: no judgement
        if kind.startswith("text/"):
            return b"", f"the server sent a {kind} page, not an image"
        declared = response.headers.get("Content-Length", "")
        chunks, size = [], 0
        while chunk := response.read1(1 << 16):  # whatever arrived: the deadline is checked between reads
            chunks.append(chunk)
            size += len(chunk)
            if size > settings.max_bytes:
                return b"", f"larger than {settings.max_bytes} bytes"
            if time.monotonic() > deadline:
                return b"", f"took over {settings.max_seconds:g} s in all ({size} bytes by then)"
    if declared.isdigit() and size != int(declared):
        return b"", f"truncated: {size} of {declared} bytes"
    return b"".join(chunks), None


def _download_cached(url: str, settings: DownloadConfig, cache_dir: Path) -> tuple[bytes | None, str | None]:
    if not url.lower().startswith(("http://", "https://")):
        return None, "not an http(s) URL"
    cached = cache_dir / hashlib.sha256(url.encode()).hexdigest()
    if cached.is_file():
        return cached.read_bytes(), None
    error = "no attempt"
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2**attempt, 5.0))
        try:
            data, error = _download(url, settings)
            if error is None:
                atomic_write_bytes(cached, data)  # only a whole answer is cached
                return data, None
            if error.startswith(("larger than", "the server sent", "took over")):
                return None, error  # the same on retry
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:  # a redirect we refused to follow
                return None, f"HTTP {e.code}: {e.msg}"
            error = f"HTTP {e.code}"
            if 400 <= e.code < 500 and e.code not in (408, 429):
                return None, error  # a client error will not heal on retry
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None, error
