"""What several test modules share: images, ports, servers, tiny trainings, torchrun, twin blocks.
Test modules import from here, never from each other (or from conftest, which holds the fixtures)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
import yaml
from PIL import Image

from colorizer import fast
from colorizer.config import parse_params
from colorizer.data.synthetic import colourful  # noqa: F401 - the tests' colour photo, from here too
from colorizer.training.models import ConvBlock
from colorizer.training.train import train

PROGRAMS = Path(__file__).resolve().parent / "programs"  # the programs tests run in a process of their own


def encode(array_or_image, fmt: str = "PNG", **save_kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = {
    "seed": 3,
    "model": {"generator_widths": [8, 16, 16, 16, 16], "discriminator_widths": [8, 16], "width_multiplier": 1.0},
    "train": {"epochs": 2, "batch_size": 4, "precision": "fp32", "sample_count": 3},
}


def tiny_params(head: str = "regression", **train_overrides):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"].update(train_overrides)
    raw["model"]["head"] = head
    return parse_params(raw)


def run_train(params, shards, root):
    return train(
        params,
        shards,
        root / "model",
        root / "state",
        root / "plots.csv",
        root / "train.json",
        samples_path=root / "samples.png",
    )


def start_server(store: Path, port: int, artifacts: str | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1:port with its SQLite store under `store` and its artifacts
    there too, or at `artifacts` (a bucket's URL)."""
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'server.db'}",
            "--artifacts-destination",
            artifacts or str(store / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", server, seconds=90)
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


REPO = Path(__file__).resolve().parents[1]  # the repository


def torchrun(ranks: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args]
    done = subprocess.run(command, cwd=REPO, env=os.environ | (env or {}), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def write_params(path: Path, **train) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"].update(train)
    path.write_text(yaml.safe_dump(raw))
    return path


def train_command(params: Path, root: Path) -> list[str]:
    return [
        "-m",
        "colorizer",
        "train",
        "--params",
        str(params),
        *("--model", str(root / "model"), "--state", str(root / "state"), "--plots", str(root / "plots.csv")),
        *("--samples", str(root / "samples.png"), "--metrics", str(root / "train.json")),
    ]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stderr.read()[-2000:]}") from None
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"{url} did not come up in {seconds} s")


def as_designed(block, *inputs):
    """A ConvBlock or ConvTBlock on its plain path: the design document's order, on PyTorch's kernels."""
    with fast.enabled_as(False):
        return block(*inputs)


def twin_blocks(seed: int, memory_format: torch.memory_format) -> tuple[ConvBlock, ConvBlock]:
    """Two ConvBlocks with the same weights, trained-looking scales and shifts, two of them negative
    (those channels pool by their minimum)."""
    torch.manual_seed(seed)
    block = ConvBlock(3, 6)
    with torch.no_grad():
        block.norm.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 1.0, -2.0, 0.9]))
        block.norm.bias.copy_(torch.linspace(-0.5, 0.5, 6))
    twin = ConvBlock(3, 6)
    twin.load_state_dict(block.state_dict())
    return block.to(memory_format=memory_format), twin.to(memory_format=memory_format)
