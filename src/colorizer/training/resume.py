"""Resuming a training: what a checkpoint must share with the run that finds it (`fingerprint`),
everything a resume needs (`snapshot`) and putting it back (`restore`), and one trainer per state
folder. Checkpoints themselves are written and read by `checkpoints`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from colorizer import fast
from colorizer.config import Params, UserError
from colorizer.data.shards import read_index
from colorizer.files import atomic_write_bytes
from colorizer.training.checkpoints import OutdatedCheckpoint, load_checkpoint, load_into
from colorizer.training.gan import Gan

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


# the modules (of this package) whose code a checkpoint was trained with: the loop, the GAN's step,
# the losses, the model and its kernels, the optimizer, the weight average, the colour bins
TRAINING_CODE = ("train", "gan", "losses", "models", "fused_blocks", "optimizers", "ema", "color_bins")


def training_code_files() -> list[Path]:
    return [Path(__file__).with_name(f"{module}.py") for module in TRAINING_CODE]


def fingerprint(params: Params, shard_dir: Path, world_size: int = 1) -> str:
    """What a checkpoint must share with this run to be resumed: params but the epoch count, the data,
    the code of the model and the loop (a fixed bug must not be resumed past), and the number of ranks
    (another splits every batch and epoch differently)."""
    train = params.train.model_dump(exclude={"epochs", "loader_workers", "threads", "sample_count"})
    code = hashlib.sha256(b"".join(path.read_bytes() for path in training_code_files())).hexdigest()
    payload = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "train": train,
        "code": code,
        "data": hashlib.sha256(json.dumps(read_index(shard_dir), sort_keys=True).encode()).hexdigest(),
        "world_size": world_size,
        "fast": fast.enabled(),  # the plain paths round otherwise: a resume continues on the same ones
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def resumable_state(path: Path, expected_fingerprint: str, epochs: int, say=log.info) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except OutdatedCheckpoint as e:
        say("train: %s; starting over", e)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        say("train: %s was made with other params, data or number of ranks; starting over", path)
        return None
    if state["epoch"] > epochs:
        say("train: %s is past epoch %d already; starting over", path, epochs)
        return None
    say("train: resuming from %s after epoch %d", path, state["epoch"])
    return state


def restore(gan: Gan, state: dict, loader_rng: torch.Generator, path: Path) -> None:
    load_into(gan.generator, state["generator"], path)
    load_into(gan.discriminator, state["discriminator"], path)
    gan.opt_g.load_state_dict(state["opt_g"])
    gan.opt_d.load_state_dict(state["opt_d"])
    if gan.ema is not None:
        load_into(gan.ema, state["generator_ema"], path)
    torch.set_rng_state(state["torch_rng"])
    loader_rng.set_state(state["loader_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(list(state["cuda_rng"]))


def snapshot(gan: Gan, epoch: int, loader_rng: torch.Generator, history: list, fingerprint: str) -> dict:
    """Everything a resume needs, and nothing run-specific (the MLflow run is found by the fingerprint),
    so the same training writes the same checkpoint bytes."""
    return {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "history": history,
        "generator": gan.generator.state_dict(),
        "discriminator": gan.discriminator.state_dict(),
        "opt_g": gan.opt_g.state_dict(),
        "opt_d": gan.opt_d.state_dict(),
        "generator_ema": gan.ema.state_dict() if gan.ema is not None else None,
        "torch_rng": torch.get_rng_state(),
        "loader_rng": loader_rng.get_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


@contextmanager
def one_trainer(state_dir: Path) -> Iterator[None]:
    """One training at a time per state folder: a second would resume from the same checkpoint into
    the same MLflow run. An OS lock, so a killed trainer never blocks the next."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(state_dir / ".trainer.lock", timeout=0), state_dir / ".trainer"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text() if holder.is_file() else "another process"
        raise UserError(
            f"{state_dir}: {who} is training on this state already; wait for it or stop it "
            "(one trainer per state folder)"
        ) from None
    try:
        try:  # who holds it, for the message above (a full disk here is reported by what follows)
            atomic_write_bytes(holder, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        except OSError:
            pass
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
