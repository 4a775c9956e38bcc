"""Where `colorizer colorize` reads and writes: a local path, or an fsspec URL (`s3://`, `gs://`,
`az://`, and chained ones such as `zip::s3://bucket/scans.zip`). fsspec is the ecosystem's one
interface to every storage (DVC, pandas and Ray Data use it too); the protocol's own package
(s3fs, gcsfs, adlfs) is an extra the user installs for the storage they have.

A location is a `Path` (local: written to a temp file and renamed, as everywhere in the project) or
a `str` URL (an object store: written in one request, so that a reader sees the whole object or
none; there is no rename to make it atomic otherwise). `file://` URLs become local paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from colorizer.config import UserError
from colorizer.files import atomic_write_bytes, is_temp_name
from colorizer.runtime import STORAGE_TIMEOUT_VARIABLE

Location = Path | str
ARCHIVE_CHAINS = ("zip::", "tar::")  # fsspec's archive filesystems, read here as our archives are


def location(text: str | os.PathLike) -> Location:
    """A command-line SRC or DST as a Location."""
    if isinstance(text, Path):
        return text
    text = os.fspath(text)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    return text if is_url(text) else Path(text)


def is_url(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and ("://" in text or "::" in text)


# Seconds any one wait on an HTTP(S) server may take (connecting, or the next bytes of a read): a
# server that accepts and never answers must end the run, not hang it. Object stores' SDKs have
# their own (botocore: 60 s).
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS = STORAGE_TIMEOUT_VARIABLE, 60.0


def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT_SECONDS)


def _storage_options(url: str) -> dict:
    """fsspec options for the URL's protocols: HTTP(S) reads with a deadline on every wait (by
    protocol name, as fsspec takes them for a chained URL such as zip::https://...)."""
    if "http://" not in url and "https://" not in url:
        return {}
    import aiohttp

    wait = timeout_seconds()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=wait, sock_read=wait)
    options = {"client_kwargs": {"timeout": timeout}}
    if url.startswith(("http://", "https://")):
        return options
    return {"https" if "https://" in url else "http": options}


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a clear line when its package is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **_storage_options(url))
    except ImportError as e:  # fsspec names the package, e.g. "Install s3fs to access S3"
        extra = "; pip install 'colorizer[s3]'" if url.startswith(("s3://", "s3a://")) or "::s3" in url else ""
        raise UserError(f"{url}: {e}{extra}") from None
    except ValueError as e:  # an unknown protocol
        raise UserError(f"{url}: {e}") from None


def name_of(where: Location) -> str:
    """The last part of a location's name (`scans.zip` for `zip::s3://bucket/scans.zip`)."""
    return where.name if isinstance(where, Path) else where.rstrip("/").rsplit("/", 1)[-1]


def join(root: Location, relative: str) -> Location:
    return root / relative if isinstance(root, Path) else f"{root.rstrip('/')}/{relative}"


def exists(where: Location) -> bool:
    if isinstance(where, Path):
        return where.exists()
    fs, path = filesystem(archive_file(where) or where)
    if "http" not in fs.protocol:
        return fs.exists(path)  # object stores raise what is not "missing" (no credentials, say)
    try:  # fsspec's HTTP exists() says False for any error: a server that timed out is not "missing"
        fs.info(path)
    except Exception as e:
        timed_out = next((c for c in _causes(e) if isinstance(c, TimeoutError)), None)
        if timed_out is not None:
            raise TimeoutError(f"{where}: {timed_out or 'no answer'} after {timeout_seconds():g} s") from None
        return False
    return True


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and the ones it was raised from (fsspec's HTTP info turns a timeout into FileNotFoundError)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def is_folder(where: Location) -> bool:
    if isinstance(where, Path):
        return where.is_dir()
    if archive_file(where):
        return False
    fs, path = filesystem(where)
    return fs.isdir(path)


def archive_file(where: Location) -> str | None:
    """The archive's own URL for a chained `zip::URL` or `tar::URL`, else None."""
    if isinstance(where, str) and where.startswith(ARCHIVE_CHAINS):
        return where.split("::", 1)[1]
    return None


def read_bytes(where: Location) -> bytes:
    if isinstance(where, Path):
        return where.read_bytes()
    fs, path = filesystem(where)
    return fs.cat_file(path)


def write_bytes(where: Location, data: bytes) -> None:
    """The whole file or nothing: locally a synced temp file renamed into place; in an object store
    one PUT (or one multipart upload, which the store publishes only when complete)."""
    if isinstance(where, Path):
        atomic_write_bytes(where, data)
        return
    fs, path = filesystem(where)
    fs.pipe_file(path, bytes(data))


def remove(where: Location) -> None:
    if isinstance(where, Path):
        where.unlink(missing_ok=True)
    else:
        fs, path = filesystem(where)
        fs.rm_file(path)


@contextmanager
def open_for_reading(where: Location) -> Iterator[IO[bytes]]:
    """A seekable binary file: archives read their index and members through it, in ranges."""
    if isinstance(where, Path):
        with open(where, "rb") as f:
            yield f
        return
    fs, path = filesystem(archive_file(where) or where)
    with fs.open(path, "rb") as f:
        yield f


def files_under(root: Location) -> Iterator[tuple[str, Location, bool]]:
    """(relative posix path, location, is a symbolic link) of every file under a folder, sorted; one
    listing (a recursive list request on an object store, not one request per file)."""
    if isinstance(root, Path):
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or path.is_file():
                yield path.relative_to(root).as_posix(), path, path.is_symlink()
        return
    fs, base = filesystem(root)
    base = base.rstrip("/")
    fs.invalidate_cache(base)  # a listing cached earlier in this process may miss what others wrote since
    for path in sorted(fs.find(base)):
        relative = path[len(base) :].lstrip("/")
        if relative:
            yield relative, fs.unstrip_protocol(path), False


def relative_files(root: Location) -> set[str]:
    """Relative posix paths of the files under a folder (none if it does not exist), in one listing:
    how colorize tells which outputs exist. A local folder's half-written temp files are left out."""
    try:
        return {relative for relative, _, _ in files_under(root) if not is_temp_name(relative.rsplit("/", 1)[-1])}
    except FileNotFoundError:  # an object store's bucket that does not exist yet
        return set()


def same_or_inside(inner: Location, outer: Location) -> bool:
    """True when `inner` is `outer` or lies under it (both local, or both URLs of one storage)."""
    if isinstance(inner, Path) and isinstance(outer, Path):
        inner_real, outer_real = inner.resolve(), outer.resolve()
        return inner_real == outer_real or inner_real.is_relative_to(outer_real)
    if isinstance(inner, str) and isinstance(outer, str):
        inner_text, outer_text = (archive_file(inner) or inner).rstrip("/"), (archive_file(outer) or outer).rstrip("/")
        return inner_text == outer_text or inner_text.startswith(outer_text + "/")
    return False
