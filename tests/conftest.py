"""Shared helpers: tests make their own small images (nothing is read from outside the repo)."""

from __future__ import annotations

import io
import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorizer.synthetic import colourful, synthetic_shards

__all__ = ["colourful", "encode", "resize_disk", "wait_for_files", "write_tiny_shards"]


@pytest.fixture(autouse=True)
def _library_logging_as_found():
    """`colorizer ... -q/-v` sets the library's logger for the process: put it back after each test."""
    logger = logging.getLogger("colorizer")
    saved = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def encode(array_or_image, fmt: str = "PNG", **save_kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.fixture
def photo() -> np.ndarray:
    return colourful()


write_tiny_shards = synthetic_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real SQLite MLflow store in a temp dir, used through the default-store path (DVC_ROOT)."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def small_disk(tmp_path):
    """make(kilobytes) -> a folder on a real file system of that size (a tmpfs), for full-disk faults.
    Skipped, with the reason, where this process may not mount one (mounting needs root)."""
    mounted: list[Path] = []

    def make(kilobytes: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or 'mount failed'}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def resize_disk(where: Path, kilobytes: int) -> None:
    """Make room on (or shrink) a `small_disk`: its files stay."""
    subprocess.run(["mount", "-o", f"remount,size={kilobytes}k", str(where)], check=True, capture_output=True)


def wait_for_files(process: subprocess.Popen, *paths: Path, seconds: float = 120) -> None:
    """Wait until every path exists while `process` runs; fail with its stderr if it ends first."""
    deadline = time.monotonic() + seconds
    while not all(path.exists() for path in paths):
        if process.poll() is not None:
            raise AssertionError(f"it ended first: {process.stderr.read()[-2000:] if process.stderr else ''}")
        assert time.monotonic() < deadline, f"{', '.join(map(str, paths))}: not there after {seconds} s"
        time.sleep(0.1)
