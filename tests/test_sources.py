import io
import os
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from colorizer.config import ArchiveConfig, DownloadConfig
from colorizer.data.sources import (
    Candidate,
    Rejected,
    archive_candidates,
    bundled_samples,
    folder_candidates,
    unsafe_member_reason,
    url_candidates,
)
from tests.helpers import colourful, encode

LIMITS = ArchiveConfig(max_members=100, max_member_bytes=5_000_000, max_total_bytes=50_000_000, max_ratio=100.0)


def by_path(items):
    return {item.path.split("!")[-1]: item for item in items}


def test_bundled_samples_are_found_offline():
    samples = list(bundled_samples())
    assert len(samples) >= 8
    assert all(
        s.read()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\xff\xd8\xff\xdb")
        or s.read()[:2] == b"\xff\xd8"
        for s in samples
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "unsafe path (absolute)"),
        ("../evil.png", "unsafe path (..)"),
        ("a/../../evil.png", "unsafe path (..)"),
        ("C:/x.png", "unsafe path (absolute)"),
        ("ok/photo.png", None),
    ],
)
def test_unsafe_member_names(name, reason):
    assert unsafe_member_reason(name) == reason


def test_zip_members_are_read_and_traversal_refused(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("nested/good.png", encode(colourful()))
        archive.writestr("../escape.png", encode(colourful()))
        archive.writestr("/abs.png", encode(colourful()))
        link = zipfile.ZipInfo("link.png")
        link.external_attr = 0o120777 << 16  # a symlink entry
        archive.writestr(link, "/etc/passwd")
    items = by_path(archive_candidates(path, LIMITS))
    assert isinstance(items["nested/good.png"], Candidate)
    assert items["../escape.png"].reason == "unsafe path (..)"
    assert items["/abs.png"].reason == "unsafe path (absolute)"
    assert items["link.png"].reason == "link or special file"
    assert not (tmp_path.parent / "escape.png").exists()


def test_zip_bomb_is_bounded(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 3_000_000)
    [item] = archive_candidates(path, LIMITS)
    assert isinstance(item, Rejected) and item.reason == "archive limit"


def test_too_many_members(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(5):
            archive.writestr(f"{i}.png", encode(colourful(8, 8)))
    limits = ArchiveConfig(max_members=3, max_member_bytes=10**6, max_total_bytes=10**8, max_ratio=100.0)
    items = list(archive_candidates(path, limits))
    assert sum(isinstance(i, Candidate) for i in items) == 3
    assert items[-1].reason == "archive limit"


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_members_links_devices_and_traversal(tmp_path, suffix, mode):
    path = tmp_path / f"photos{suffix}"
    good = encode(colourful())
    with tarfile.open(path, mode) as archive:

        def add(name, data=b"", kind=tarfile.REGTYPE, linkname=""):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), linkname
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("dir/good.png", good)
        add("../up.png", good)
        add("/abs.png", good)
        add("sym.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("hard.png", kind=tarfile.LNKTYPE, linkname="dir/good.png")
        add("dev", kind=tarfile.CHRTYPE)
        add("fifo", kind=tarfile.FIFOTYPE)
    items = by_path(archive_candidates(path, LIMITS))
    assert items["dir/good.png"].read() == good
    assert items["../up.png"].reason == "unsafe path (..)"
    assert items["/abs.png"].reason == "unsafe path (absolute)"
    for name in ("sym.png", "hard.png", "dev", "fifo"):
        assert items[name].reason == "link or special file", name
    assert sorted(os.listdir(tmp_path)) == [path.name]  # nothing was extracted


def test_corrupt_archive_is_one_rejected_row(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    [item] = archive_candidates(path, LIMITS)
    assert item.reason == "bad archive"


def test_folder_walk_is_recursive_and_skips_links(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.png").write_bytes(encode(colourful()))
    (tmp_path / "top.jpg").write_bytes(encode(colourful(), "JPEG"))
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "top.jpg")
    settings = DownloadConfig(workers=1, timeout_seconds=1.0, retries=0, max_bytes=10**6)
    items = list(folder_candidates(tmp_path, LIMITS, settings, tmp_path / "cache"))
    names = {i.path.rsplit("/", 1)[-1]: i for i in items}
    assert set(names) == {"deep.png", "top.jpg", "link.png"}
    assert names["link.png"].reason == "link"


class _PhotoServer(BaseHTTPRequestHandler):
    hits: dict = {}
    payload = b""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        _PhotoServer.hits[self.path] = _PhotoServer.hits.get(self.path, 0) + 1
        if self.path == "/slow.png":
            time.sleep(2.0)
        if self.path == "/flaky.png" and _PhotoServer.hits[self.path] == 1:
            self.send_error(503)
            return
        if self.path == "/drip.png":  # a byte every 0.2 s: no read ever times out
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            for byte in self.payload[:40]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            return
        if self.path == "/truncated.png":  # the connection drops after half the promised bytes
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload[: len(self.payload) // 2])
            self.close_connection = True
            return
        if self.path == "/error-page.png":  # an error page answered 200
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>quota exceeded</html>")
            return
        if self.path == "/to-ftp.png":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:9/x.png")
            self.end_headers()
            return
        if self.path in ("/photo.png", "/slow.png", "/flaky.png"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def photo_server():
    _PhotoServer.hits = {}
    _PhotoServer.payload = encode(colourful())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PhotoServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_list_with_failures_retries_and_cache(tmp_path, photo_server):
    listing = tmp_path / "photos.urls"
    urls = ["/photo.png", "/missing.png", "/slow.png", "/flaky.png"]
    listing.write_text("# my photos\n" + "\n".join(photo_server + u for u in urls) + "\nftp://nope/x.png\n")
    settings = DownloadConfig(workers=4, timeout_seconds=0.5, retries=1, max_bytes=10**6)
    items = {i.path.rsplit("/", 1)[-1]: i for i in url_candidates(listing, settings, tmp_path / "cache")}
    assert items["photo.png"].read() == _PhotoServer.payload
    assert items["flaky.png"].read() == _PhotoServer.payload  # 503 then 200: retried
    assert items["missing.png"].detail == "HTTP 404" and _PhotoServer.hits["/missing.png"] == 1  # no retry on 404
    assert items["slow.png"].reason == "download failed" and "timed out" in items["slow.png"].detail.lower()
    assert items["x.png"].detail == "not an http(s) URL"

    before = dict(_PhotoServer.hits)
    again = {i.path.rsplit("/", 1)[-1]: i for i in url_candidates(listing, settings, tmp_path / "cache")}
    assert again["photo.png"].read() == _PhotoServer.payload
    assert _PhotoServer.hits["/photo.png"] == before["/photo.png"]  # served from the cache


def test_downloads_have_a_total_deadline_and_only_whole_images_are_cached(tmp_path, photo_server):
    """A server that drips bytes is stopped by download.max_seconds; a body shorter than its
    Content-Length and an error page answered 200 are failures, not cached; a redirect to ftp://
    is not followed."""
    listing = tmp_path / "photos.urls"
    urls = ["/drip.png", "/truncated.png", "/error-page.png", "/to-ftp.png"]
    listing.write_text("\n".join(photo_server + u for u in urls))
    settings = DownloadConfig(workers=4, timeout_seconds=1.0, max_seconds=2.0, retries=1, max_bytes=10**6)
    started = time.monotonic()
    items = {i.path.rsplit("/", 1)[-1]: i for i in url_candidates(listing, settings, tmp_path / "cache")}
    assert time.monotonic() - started < 10
    assert items["drip.png"].detail.startswith("took over 2 s in all")
    assert items["truncated.png"].detail.startswith("truncated: ") and _PhotoServer.hits["/truncated.png"] == 2
    assert items["error-page.png"].detail == "the server sent a text/html page, not an image"
    assert "redirect to a non-http(s) URL ftp://" in items["to-ftp.png"].detail
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def _patch_zip_member(data: bytearray, name: str, offset_in_local: int, offset_in_central: int, value: int) -> None:
    """Set a 2-byte field of `name`'s local header and central directory entry (zipfile writes
    neither an encrypted nor a Deflate64 member: the test marks one as such)."""
    encoded = name.encode()
    local = next(
        i
        for i in range(len(data))
        if data.startswith(b"PK\x03\x04", i) and data[i + 30 : i + 30 + len(encoded)] == encoded
    )
    central = next(
        i
        for i in range(len(data))
        if data.startswith(b"PK\x01\x02", i) and data[i + 46 : i + 46 + len(encoded)] == encoded
    )
    data[local + offset_in_local : local + offset_in_local + 2] = value.to_bytes(2, "little")
    data[central + offset_in_central : central + offset_in_central + 2] = value.to_bytes(2, "little")


def test_an_unreadable_zip_member_is_a_row_and_the_next_members_are_read(tmp_path):
    """Encrypted, Deflate64 (what Windows writes for large zips) and a bad CRC: each its own row,
    the members after them read as usual."""
    photo = encode(colourful(), "PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in ("a.png", "locked.png", "deflate64.png", "bad-crc.png", "e.png"):
            archive.writestr(name, photo)
    data = bytearray(buffer.getvalue())
    _patch_zip_member(data, "locked.png", 6, 8, 0x1)  # general purpose flag: encrypted
    _patch_zip_member(data, "deflate64.png", 8, 10, 9)  # compression method 9: Deflate64
    local = data.index(b"bad-crc.png") + len("bad-crc.png")
    data[local + 100] ^= 0xFF  # one byte of the stored data: its CRC no longer matches
    (tmp_path / "scans.zip").write_bytes(data)
    rows = {i.path.rsplit("!", 1)[-1]: i for i in archive_candidates(tmp_path / "scans.zip", LIMITS)}
    assert list(rows) == ["a.png", "locked.png", "deflate64.png", "bad-crc.png", "e.png"]
    assert rows["a.png"].read() == photo and rows["e.png"].read() == photo
    assert rows["locked.png"].reason == "unreadable member" and "encrypted" in rows["locked.png"].detail
    assert "NotImplementedError" in rows["deflate64.png"].detail
    assert "Bad CRC-32" in rows["bad-crc.png"].detail


def test_a_damaged_tar_gz_says_which_members_were_not_read(tmp_path):
    """16 bytes flipped mid-stream: tarfile stops as if the archive ended; a row says where it broke."""
    buffer = io.BytesIO()
    photo = encode(colourful(300, 200), "PNG")
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for index in range(5):
            info = tarfile.TarInfo(f"m{index}.png")
            info.size = len(photo)
            archive.addfile(info, io.BytesIO(photo))
    data = bytearray(buffer.getvalue())
    for offset in range(16):
        data[len(data) // 2 + offset] ^= 0xFF
    (tmp_path / "scans.tar.gz").write_bytes(data)
    items = list(archive_candidates(tmp_path / "scans.tar.gz", LIMITS))
    *members, last = items
    assert all(item.path.endswith(f"!m{i}.png") for i, item in enumerate(members))
    assert last.reason == "bad archive" and last.path.endswith("scans.tar.gz")
    assert f"damaged after m{len(members) - 1}.png: any members after it were not read" in last.detail
