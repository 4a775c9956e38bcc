"""The tests' fixtures (their helpers are in tests/helpers.py): tests make their own small images,
nothing is read from outside the repo."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from colorizer.data.synthetic import colourful, synthetic_shards
from tests.helpers import free_port


@pytest.fixture(autouse=True)
def _library_logging_as_found():
    """`colorizer ... -q/-v` sets the library's logger for the process: put it back after each test."""
    logger = logging.getLogger("colorizer")
    saved = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


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


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    environment: dict[str, str]  # what a process needs to reach it: endpoint and (test) credentials

    def bucket(self, name: str):
        """A new empty bucket; the s3fs filesystem to look into it."""
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(name)
        return fs


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A real exported model (random weights: the tests that use it are about the plumbing, not the
    colours). Shared: no test writes into it (the ones that damage a model damage a copy)."""
    import torch

    from colorizer.training.checkpoints import export_model
    from colorizer.training.models import Discriminator, Generator

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    export_model(out, Generator([8, 16, 16, 16, 16], 32).eval(), Discriminator([8, 16]), {})
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's) on a free loopback port. Its endpoint and test credentials
    are put in this process's environment for the session, so that everything started from here
    (Ray's workers, dvc, mlflow) reaches it as a user's tools reach their S3 through the AWS variables."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"moto server exited: {server.stderr.read()[-2000:]}") from None
            assert time.monotonic() < deadline, "the S3 server did not come up"
            time.sleep(0.2)
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    before = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    yield S3Server(endpoint, environment)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray shared by the tests (2 CPUs, no dashboard), started after the S3 server so that
    its workers inherit the endpoint. Yields its address, for drivers in other processes."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 << 20, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
