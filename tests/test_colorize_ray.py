"""`colorize --engine ray` on a real local Ray (the session's `ray_cluster`): the same files and
report rows as the local engine, and a killed run that resumes."""

import csv
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from colorizer.colorize.bulk import colorize
from colorizer.colorize.report import HISTORY_NAME, REPORT_NAME
from colorizer.config import ColorizeOptions, UserError
from colorizer.files import is_temp_name
from tests.helpers import colourful, encode, free_port

pytestmark = pytest.mark.slow  # a Ray start, and a driver process that connects to it


def scans(folder: Path, count: int = 6) -> Path:
    """Grey and colour photos of several sizes and formats, nested, and files that fail."""
    (folder / "box 1").mkdir(parents=True)
    for i in range(count):
        grey = Image.fromarray(colourful(40 + 9 * i, 30 + 5 * i, seed=i)).convert("L")
        grey.save(folder / ("box 1" if i % 2 else ".") / f"scan {i}.jpg", quality=90)
    Image.fromarray(colourful(50, 40, seed=9)).save(folder / "colour.png")
    Image.fromarray(colourful(33, 21, seed=8)).convert("LA").save(folder / "box 1" / "alpha.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(encode(Image.fromarray(colourful(20, 20, seed=3))))
    return folder


def rows(dst: Path) -> pd.DataFrame:
    """The report without its timings. Read with the csv module: a name that is not UTF-8 comes back as
    the same bytes (as surrogates), which pandas' Arrow strings can't hold."""
    with open(dst / REPORT_NAME, newline="", encoding="utf-8", errors="surrogateescape") as f:
        records = list(csv.DictReader(f))
    table = pd.DataFrame(records, columns=["path", "status", "reason", "width", "height"], dtype=object)
    table["path"] = table.path.map(ascii)
    return table.set_index("path").sort_index()


def outputs(dst: Path) -> dict[str, bytes]:
    """DST's files and their bytes; the report's and the run history's only by name (timings, engine)."""
    found = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    return found | {REPORT_NAME: b"", HISTORY_NAME: b""}


def test_the_ray_engine_writes_what_the_local_engine_writes(tmp_path, model_dir, ray_cluster):
    src = scans(tmp_path / "src")
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(src.rglob("*")):
            if path.is_file() and path.name.isprintable():  # a zip can't hold a name that isn't UTF-8
                z.write(path, path.relative_to(src).as_posix())
        z.writestr("../escape.jpg", (src / "scan 0.jpg").read_bytes())
    tar = tmp_path / "scans.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src, arcname="")

    for source in (src, archive, tar, src / "colour.png"):
        local, ray = tmp_path / f"local-{source.name}", tmp_path / f"ray-{source.name}"
        colorize(source, local, model_dir, ColorizeOptions(workers=1, batch_size=3))
        summary = colorize(source, ray, model_dir, ColorizeOptions(engine="ray", batch_size=3))

        pd.testing.assert_frame_equal(rows(ray), rows(local))
        assert outputs(ray) == outputs(local)  # the same files, the same bytes
        assert summary.count("done") == (rows(local).status == "done").sum() > 0
    failed = rows(tmp_path / f"ray-{src.name}").query("status == 'failed'")
    assert sorted(failed.index) == [ascii("broken.jpg"), ascii("empty.png")]
    assert rows(tmp_path / "ray-scans.zip").loc[ascii("../escape.jpg"), "reason"].startswith("unsafe path")


def test_a_killed_ray_run_resumes_with_nothing_half_written(tmp_path, model_dir, ray_cluster):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(160):
        Image.fromarray(colourful(64, 48, seed=i)).convert("L").save(src / f"{i:03}.jpg")
    dst = tmp_path / "dst"
    driver = subprocess.Popen(
        [sys.executable, "-m", "colorizer", "colorize", str(src), str(dst), "--model", str(model_dir)]
        + ["--engine", "ray", "--address", ray_cluster, "--batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while len([p for p in dst.glob("*.jpg") if not is_temp_name(p.name)]) < 5:
        assert driver.poll() is None, f"it ended first: {driver.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no outputs after 180 s"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    def outputs_there():
        return {p.name for p in dst.glob("*.jpg") if not is_temp_name(p.name)}

    before = settled(outputs_there(), outputs_there)
    for name in before:
        Image.open(dst / name).load()  # every output there is whole

    summary = colorize(src, dst, model_dir, ColorizeOptions(engine="ray", batch_size=8))
    table = rows(dst)
    assert set(table.query("status == 'skipped'").index) == set(map(ascii, before))
    assert set(table.query("status == 'done'").index) == {ascii(f"{i:03}.jpg") for i in range(160)} - set(
        map(ascii, before)
    )
    assert 0 < summary.count("done") < 160
    assert not [p for p in dst.rglob("*") if is_temp_name(p.name)]  # a killed write's temp file is cleared
    colorize(src, tmp_path / "local", model_dir, ColorizeOptions(workers=1))
    for i in (0, 80, 159):
        name = f"{i:03}.jpg"
        np.testing.assert_array_equal(
            np.asarray(Image.open(dst / name)), np.asarray(Image.open(tmp_path / "local" / name))
        )


def settled(value, look, quiet_seconds: float = 3.0, limit_seconds: float = 60.0):
    """`look()` once it has not changed for `quiet_seconds`: Ray ends a dead driver's tasks within
    moments, and a write under way then may still finish."""
    deadline, quiet_since = time.monotonic() + limit_seconds, time.monotonic()
    while time.monotonic() - quiet_since < quiet_seconds:
        assert time.monotonic() < deadline, "the outputs kept changing after the driver died"
        time.sleep(0.25)
        now = look()
        if now != value:
            value, quiet_since = now, time.monotonic()
    return value


def test_without_ray_installed_the_engine_says_how_to_install_it(tmp_path, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    src = scans(tmp_path / "src", count=1)
    with pytest.raises(UserError, match=r"pip install 'colorizer\[ray\]'"):
        colorize(src, tmp_path / "dst", model_dir, ColorizeOptions(engine="ray"))


def test_actors_that_would_take_every_cpu_are_refused_by_name(tmp_path, model_dir, ray_cluster):
    src = scans(tmp_path / "src", count=1)
    with pytest.raises(UserError, match=r"--actors 2 x --cpus-per-actor 1 leave no CPU .* \(2 CPUs\)"):
        colorize(src, tmp_path / "dst", model_dir, ColorizeOptions(engine="ray", actors=2))


def test_an_address_where_no_ray_answers_is_one_line_at_once(tmp_path, model_dir):
    src = scans(tmp_path / "src", count=1)
    command = [
        sys.executable,
        "-m",
        "colorizer",
        "colorize",
        str(src),
        str(tmp_path / "dst"),
        "--model",
        str(model_dir),
    ]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--engine", "ray", "--address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "no Ray cluster answers there" in done.stderr, done.stderr
    assert time.monotonic() - started < 60  # Ray alone retries for minutes
