"""The GAN training loop: d_step and g_step with the design document's losses (see losses.py),
checkpoints and resume. A checkpoint is written atomically after every epoch; a re-run with the same
params and data continues from it (and continues the same MLflow run) instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, DistributedSampler

from colorizer import fast, tracking
from colorizer.config import ConfigError, ModelConfig, Params, TrainConfig, UserError
from colorizer.data.images import save_png
from colorizer.data.lab import normalize_ab
from colorizer.data.shards import LabShardDataset, read_index
from colorizer.devices import autocast, autocast_dtype, pick_device
from colorizer.files import atomic_write_bytes, atomic_write_json, progress
from colorizer.training import color_bins, ema, fused_blocks, losses, models, optimizers
from colorizer.training.checkpoints import (
    PRETRAINED_DIR,
    CheckpointError,
    OutdatedCheckpoint,
    export_model,
    load_checkpoint,
    load_generator,
    load_into,
    save_checkpoint,
)
from colorizer.training.distributed import (
    ONE_PROCESS,
    World,
    barrier,
    mean_over_ranks,
    process_group,
    rank_device,
    unwrap,
    world_from_env,
)
from colorizer.training.evaluate import choice_score, photo_scores
from colorizer.training.losses import d_losses, g_losses, generator_loss
from colorizer.training.models import Discriminator, Generator, build_discriminator, build_generator
from colorizer.training.visualize import sample_grid

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Gan:
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None
    l1_lambda: float
    channels_last: bool = False
    ema: torch.optim.swa_utils.AveragedModel | None = None  # of the generator's weights (train.ema_decay)
    ce_lambda: float = 0.0  # model.head: bins: the cross-entropy's weight (l1_lambda is then 0)
    bin_weights: torch.Tensor | None = None  # model.head: bins: the class rebalancing weights (Q,)

    @property
    def averaged_generator(self) -> torch.nn.Module:
        """What is validated, sampled and exported: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.generator)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last else tensor

    def judge(self, L: torch.Tensor, ab: torch.Tensor, discriminator: torch.nn.Module | None = None) -> torch.Tensor:
        discriminator = discriminator or self.discriminator
        # joined in the dtype the first convolution computes in: the same values as autocast's cast of
        # an fp32 join, without that copy and the a*b* copy to fp32 (copies 17 -> 11 ms a step, batch 16)
        dtype = self.amp_dtype if torch.is_autocast_enabled(L.device.type) and self.amp_dtype else L.dtype
        return discriminator(torch.cat([L.to(dtype), ab.to(dtype)], dim=1)).float()  # (B, 1, H/16, W/16) logits

    def unwrapped(self) -> Gan:
        """The models without their DistributedDataParallel wrappers: what rank 0 validates, samples,
        checkpoints and exports with (a DDP forward on one rank alone would wait for the others)."""
        return replace(self, generator=unwrap(self.generator), discriminator=unwrap(self.discriminator))

    # Steps return detached 0-dim tensors, not floats: a float would force a device sync every step.
    def d_step(self, L: torch.Tensor, ab: torch.Tensor, fake_ab: torch.Tensor) -> dict[str, torch.Tensor]:
        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            real_logits = self.judge(L, ab)
            fake_logits = self.judge(L, fake_ab.detach())
        losses = d_losses(real_logits, fake_logits)
        (losses["d_real"] + losses["d_fake"]).backward()
        self.opt_d.step()
        return {key: value.detach() for key, value in losses.items()}

    def generate(self, generator: torch.nn.Module, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """a*b*, and the bins head's logits (None for regression)."""
        if self.bin_weights is None:
            return generator(L), None
        return generator(L, with_logits=True)

    def reconstruction_losses(
        self, fake_logits: torch.Tensor | None, fake_ab: torch.Tensor, bin_logits: torch.Tensor | None, ab: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """g_gan and g_l1, and g_ce for the bins head (the rebalanced cross-entropy)."""
        found = g_losses(fake_logits, fake_ab, ab)
        if bin_logits is not None:
            centres = unwrap(self.generator).bin_centres
            found["g_ce"] = color_bins.bins_loss(bin_logits, ab, centres, self.bin_weights)
        return found

    def g_step(
        self,
        L: torch.Tensor,
        ab: torch.Tensor,
        fake_ab: torch.Tensor,
        adversarial: bool,
        bin_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        self.discriminator.requires_grad_(False)  # G's loss must not update D
        self.opt_g.zero_grad(set_to_none=True)
        fake_logits = None
        if adversarial:
            with self.autocast():
                # D past its DDP wrapper: D's weights get no gradient here, so there is nothing to
                # reduce, and a DDP forward without a matching backward would stall the next one.
                fake_logits = self.judge(L, fake_ab, unwrap(self.discriminator))
        losses = self.reconstruction_losses(fake_logits, fake_ab, bin_logits, ab)
        generator_loss(losses, self.l1_lambda, self.ce_lambda).backward()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.generator))
        return {key: value.detach() for key, value in losses.items()}

    def train_step(self, L: torch.Tensor, ab: torch.Tensor, adversarial: bool = True) -> dict[str, torch.Tensor]:
        with self.autocast():
            fake_ab, bin_logits = self.generate(self.generator, L)
        losses = self.d_step(L, ab, fake_ab) if adversarial else {}
        return losses | self.g_step(L, ab, fake_ab, adversarial, bin_logits)

    @torch.no_grad()
    def eval_losses(self, L: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            fake_ab, bin_logits = self.generate(self.averaged_generator, L)
            real_logits, fake_logits = self.judge(L, ab), self.judge(L, fake_ab)
        return self.reconstruction_losses(fake_logits, fake_ab, bin_logits, ab) | d_losses(real_logits, fake_logits)


def build_gan(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    image_size: int,
    device: torch.device,
    colour_counts: dict[tuple[int, int], int] | None = None,
) -> Gan:
    """The two networks and their optimizers. `colour_counts` (`color_bins.bin_counts` of the training
    photos) is needed for `model.head: bins`: the bin set (unless train.init brings its own) and
    the rebalancing weights."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    source = initial_generator(cfg.init)
    centres = bin_weights = None
    if model_cfg.head == "bins":
        if colour_counts is None:
            raise ValueError("build_gan: model.head bins needs the training photos' colour_counts")
        centres = source.bin_centres if source is not None and source.bins else color_bins.bin_set(colour_counts)[0]
        bin_weights = color_bins.rebalancing_weights(centres, color_bins.prior_over(centres, colour_counts))
    generator = build_generator(model_cfg, image_size, len(centres) if centres is not None else 0)
    if source is not None:
        start_from(generator, source, cfg.init, model_cfg.head)
    if centres is not None:
        generator.bin_centres.copy_(centres)
    generator = generator.to(device, memory_format=memory_format)
    discriminator = build_discriminator(model_cfg).to(device, memory_format=memory_format)
    # the fused kernel (CUDA, and CPU since torch 2.4) is one pass over each parameter: on a 2-core
    # CPU the generator's step takes 26 ms instead of the default foreach path's 76 (41 where the
    # kernel copies channels-last weights: see optimizers)
    opt_g = optimizers.adam(generator.parameters(), cfg.lr, cfg.betas)
    opt_d = optimizers.adam(discriminator.parameters(), cfg.lr, cfg.betas)
    return Gan(
        generator,
        discriminator,
        opt_g,
        opt_d,
        device,
        autocast_dtype(cfg.precision, device),
        0.0 if bin_weights is not None else cfg.l1_lambda,
        cfg.channels_last,
        ema.weight_average(generator, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        cfg.ce_lambda if bin_weights is not None else 0.0,
        bin_weights.to(device) if bin_weights is not None else None,
    )


def initial_generator(init: str) -> Generator | None:
    """train.init: `none` keeps the random initialisation (None); `shipped` or a model folder: the
    generator whose weights training starts from (the discriminator starts afresh)."""
    if init == "none":
        return None
    try:
        return load_generator(PRETRAINED_DIR if init == "shipped" else Path(init))[0]
    except CheckpointError as e:
        raise ConfigError(f"params.yaml: train.init: {e}") from None


def start_from(generator: Generator, source: Generator, init: str, head: str) -> None:
    """Copy `source`'s weights into `generator`. A model of another width, size or head is refused
    with one line: its weights would not fit this generator."""
    source_head = "bins" if source.bins else "regression"
    if (source.widths, source.image_size, source_head) != (generator.widths, generator.image_size, head):
        raise ConfigError(
            f"params.yaml: train.init: {init} is a generator of widths {source.widths} at "
            f"{source.image_size} px with a {source_head} head; this training builds {generator.widths} at "
            f"{generator.image_size} px with a {head} head (set model.width_multiplier, augment.image_size "
            "and model.head to match it, or train.init: none)"
        )
    with torch.no_grad():
        for mine, theirs in zip(generator.state_dict().values(), source.state_dict().values(), strict=True):
            mine.copy_(theirs)


def distribute(gan: Gan, world: World, sync_batchnorm: bool) -> Gan:
    """Both models in DistributedDataParallel for a world of several ranks (after channels-last and
    after a resume's weights are in: DDP starts every rank from rank 0's). BatchNorm stays per rank
    unless `sync_batchnorm` (CUDA only). A world of one is returned as it is."""
    if not world.distributed:
        return gan
    from torch.nn.parallel import DistributedDataParallel

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if sync_batchnorm:  # keeps the same Parameter objects, so the optimizers still hold them
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[gan.device.index] if gan.device.type == "cuda" else None)

    return replace(gan, generator=wrap(gan.generator), discriminator=wrap(gan.discriminator))


def colour_counts(dataset: LabShardDataset) -> dict[tuple[int, int], int]:
    """The colour-bin counts (`color_bins.bin_counts`) of every pixel of the split's shards."""
    chunks = (shard[start : start + 256, 1:] for shard in dataset.shards for start in range(0, len(shard), 256))
    return color_bins.bin_counts(normalize_ab(np.asarray(chunk, dtype=np.float32)) for chunk in chunks)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """pix2pix's schedule: train.lr, then over the last lr_decay_epochs (all epochs, where there are
    fewer: `-S train.epochs=3` keeps the default's decay) a linear decay; the last epoch trains at
    lr / (decay epochs + 1). A function of the epoch alone, so a resume needs no state."""
    decay_epochs = min(cfg.lr_decay_epochs, cfg.epochs)
    decay_from = cfg.epochs - decay_epochs
    if decay_epochs == 0 or epoch <= decay_from:
        return cfg.lr
    return cfg.lr * (1.0 - (epoch - decay_from) / (decay_epochs + 1))


def _already_batched(batch):
    return batch  # LabShardDataset.__getitems__ returns whole (L, ab) batches


def make_loader(
    dataset: LabShardDataset,
    batch_size: int,
    workers: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
    pin_memory: bool = False,
    world: World = ONE_PROCESS,
    seed: int = 0,
) -> DataLoader:
    """Batches of `batch_size` (per rank). Several ranks each take their own share of every epoch's
    shuffle (DistributedSampler, seeded; call `loader.sampler.set_epoch(epoch)`); one rank shuffles
    with `generator`, as it always has."""
    sampler = None
    if world.distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=world.size, rank=world.rank, shuffle=shuffle, seed=seed, drop_last=True
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=shuffle,
        generator=generator,
        num_workers=workers,
        collate_fn=_already_batched,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


def run_epoch(
    gan: Gan, loader: DataLoader, adversarial: bool, desc: str, world: World = ONE_PROCESS
) -> tuple[dict[str, float], int]:
    """One pass; the mean losses over all ranks' steps, and the images this rank saw."""
    gan.generator.train()
    gan.discriminator.train()
    sums: dict[str, torch.Tensor] = {}
    images = 0
    for L, ab in progress(loader, desc=desc, total=len(loader), unit="batch") if world.is_main else loader:
        losses = gan.train_step(gan.to_device(L), gan.to_device(ab), adversarial)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0) + value
        images += len(L)
    steps = max(len(loader), 1)
    means = {key: total / steps for key, total in mean_over_ranks(sums, world).items()}  # one sync per epoch
    broken = {key: value for key, value in means.items() if not np.isfinite(value)}
    if broken:  # NaN/inf data, or a learning rate that diverged: stop before a checkpoint keeps it
        bad_shards = loader.dataset.nonfinite_shards()
        cause = (
            f"NaN or inf in the shards {', '.join(bad_shards)}: check the photos and rerun `dvc repro shard`"
            if bad_shards
            else "the shards are finite, so training diverged: lower train.lr"
        )
        raise UserError(
            f"{desc}: loss {', '.join(f'{k}={v}' for k, v in broken.items())} is not finite ({cause}); "
            "the last good epoch's checkpoint is kept"
        )
    means.setdefault("d_real", float("nan"))  # the L1 warm-up trains no discriminator
    means.setdefault("d_fake", float("nan"))
    return means, images


def validate(gan: Gan, dataset: LabShardDataset, batch_size: int) -> dict[str, float]:
    gan.averaged_generator.eval()
    gan.discriminator.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(dataset), batch_size):
        L, ab = dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))
        for key, value in gan.eval_losses(gan.to_device(L), gan.to_device(ab)).items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(L)
    return {key: value / max(len(dataset), 1) for key, value in sums.items()}


@torch.no_grad()
def write_samples(gan: Gan, dataset: LabShardDataset, count: int, seed: int, path: Path) -> None:
    """The design document's figure: `count` random validation photos, grey / colorized / original."""
    generator = gan.averaged_generator.eval()
    picks = np.sort(np.random.default_rng(seed).choice(len(dataset), size=min(count, len(dataset)), replace=False))
    L, ab = dataset.get_batch(picks)
    with gan.autocast():
        fake = generator(gan.to_device(L)).float().cpu()
    save_png(path, sample_grid(L, fake, ab))


# the modules whose code a checkpoint was trained with: the loop, the losses, the model and its
# kernels, the optimizer
TRAINING_CODE = (sys.modules[__name__], losses, models, fused_blocks, optimizers, ema, color_bins)


def fingerprint(params: Params, shard_dir: Path, world_size: int = 1) -> str:
    """What a checkpoint must share with this run to be resumed: params but the epoch count, the data,
    the code of the model and the loop (a fixed bug must not be resumed past), and the number of ranks
    (another splits every batch and epoch differently)."""
    train = params.train.model_dump(exclude={"epochs", "loader_workers", "threads", "sample_count"})
    code = hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in TRAINING_CODE)).hexdigest()
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


def train(
    params: Params,
    shard_dir: Path,
    model_dir: Path,
    state_dir: Path,
    plots_path: Path,
    metrics_path: Path,
    samples_path: Path | None = None,
) -> dict:
    """Train (or resume) and export the generator; returns the last epoch's losses. `samples_path`:
    where the final model's sample grid goes (an image plot that `dvc plots diff` sets side by side).

    Under torchrun with several ranks (train.nproc_per_node) each rank trains on its share of every
    batch (train.batch_size is the global batch); rank 0 alone validates, logs, checkpoints and
    exports, and the others return {}."""
    cfg, world = params.train, world_from_env()
    if cfg.threads:  # per rank: torchrun's OMP_NUM_THREADS=1 for several ranks is kept unless this is set
        torch.set_num_threads(cfg.threads)
    device = rank_device(world, pick_device(cfg.device, "train.device"))
    if cfg.sync_batchnorm and device.type != "cuda":
        raise ConfigError(
            "params.yaml: train.sync_batchnorm: SyncBatchNorm needs CUDA (torch 2.13 refuses it on the CPU); "
            "set it to false"
        )
    train_set, val_set = LabShardDataset(shard_dir, "train"), LabShardDataset(shard_dir, "val")
    rank_batch = cfg.batch_size // world.size
    if rank_batch < 2:
        raise ConfigError(
            f"params.yaml: train.batch_size: {cfg.batch_size} over {world.size} ranks leaves fewer than 2 "
            "images per rank (BatchNorm needs 2): raise it or lower train.nproc_per_node"
        )
    if len(train_set) < cfg.batch_size:
        raise ConfigError(
            f"params.yaml: train.batch_size: {cfg.batch_size} is more than the "
            f"{len(train_set)} training images (add photos or lower it)"
        )
    if len(val_set) == 0:
        raise ConfigError("params.yaml: fetch.split.val: no validation photos (add photos or raise it)")
    if cfg.batch_size % world.size and world.is_main:
        log.warning(
            "train: train.batch_size %d does not divide over %d ranks: each takes %d (%d in all)",
            *(cfg.batch_size, world.size, rank_batch, rank_batch * world.size),
        )

    with process_group(world, device):
        torch.manual_seed(params.seed)
        counts = colour_counts(train_set) if params.model.head == "bins" else None
        gan = build_gan(params.model, cfg, train_set.image_size, device, counts)
        log.debug(
            "train: rank %d of %d, %d training and %d validation images on %s, autocast %s, %d threads",
            *(world.rank, world.size, len(train_set), len(val_set), device, gan.amp_dtype, torch.get_num_threads()),
        )
        outputs = TrainOutputs(model_dir, state_dir, plots_path, metrics_path, samples_path)
        with one_trainer(state_dir) if world.is_main else nullcontext():  # until the end: model and metrics too
            return _train(params, gan, world, train_set, val_set, shard_dir, outputs)


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training writes: the exported model, its state (checkpoint, every epoch's grid), the
    per-epoch losses, the final metrics and, optionally, the final sample grid."""

    model_dir: Path
    state_dir: Path
    plots_path: Path
    metrics_path: Path
    samples_path: Path | None = None

    @property
    def checkpoint(self) -> Path:
        return self.state_dir / CHECKPOINT_NAME


def _train(
    params: Params,
    gan: Gan,
    world: World,
    train_set: LabShardDataset,
    val_set: LabShardDataset,
    shard_dir: Path,
    out: TrainOutputs,
) -> dict:
    cfg = params.train
    loader_rng = torch.Generator().manual_seed(params.seed)
    run_fingerprint = fingerprint(params, shard_dir, world.size)
    say = log.info if world.is_main else log.debug
    state = resumable_state(out.checkpoint, run_fingerprint, cfg.epochs, say)
    history: list[dict] = []
    if state:
        restore(gan, state, loader_rng, out.checkpoint)
        history = list(state["history"])
    gan = distribute(gan, world, cfg.sync_batchnorm)
    rank0 = gan.unwrapped()
    loader = make_loader(
        train_set,
        cfg.batch_size // world.size,
        cfg.loader_workers,
        loader_rng,
        pin_memory=gan.device.type == "cuda",
        world=world,
        seed=params.seed,
    )

    tracked = tracking.training_run(params.model_dump(), run_fingerprint, state is not None, len(history))
    with tracked if world.is_main else nullcontext():
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            for group in (*gan.opt_g.param_groups, *gan.opt_d.param_groups):
                group["lr"] = lr_at(epoch, cfg)
            if world.distributed:
                loader.sampler.set_epoch(epoch)
            started = time.perf_counter()
            adversarial = epoch > cfg.l1_warmup_epochs
            train_losses, images = run_epoch(gan, loader, adversarial, f"epoch {epoch}/{cfg.epochs}", world)
            seconds = time.perf_counter() - started
            if world.is_main:  # the others wait at the barrier while rank 0 validates and saves
                history.append(
                    end_epoch(params, rank0, val_set, epoch, train_losses, images * world.size / seconds, out)
                )
                tracking.write_plot_rows(out.plots_path, history)
                save_checkpoint(out.checkpoint, snapshot(rank0, epoch, loader_rng, history, run_fingerprint))
            barrier(world)
        if world.is_main:
            tracking.write_plot_rows(out.plots_path, history)
            if out.samples_path:  # the last epoch's grid, drawn again: the same model and seed give the same picture
                write_samples(rank0, val_set, cfg.sample_count, params.seed + cfg.epochs, out.samples_path)
            recipe = {"epochs": cfg.epochs, "seed": params.seed}
            info = export_model(out.model_dir, rank0.averaged_generator, rank0.discriminator, recipe)
            # how evaluate and register find this run (register logs the model into it, as MLflow serves it)
            tracking.set_tags({tracking.MODEL_SHA256_TAG: info["model_sha256"]})
    barrier(world)
    if not world.is_main:
        return {}
    final = {k: v for k, v in history[-1].items() if np.isfinite(v)} | {"choice": choice_score(history)}
    # what `dvc exp show` lines up: val L1 and the choice rule's figures (every loss of
    # every epoch is in plots/train.csv; the model's sha256 in its model.json)
    choice = {key: final["choice"][key] for key in ("score", "hue", "psnr_gain")}
    atomic_write_json(out.metrics_path, {"val_l1": final["val_g_l1"], "choice": choice})
    return final


def end_epoch(
    params: Params,
    gan: Gan,
    val_set: LabShardDataset,
    epoch: int,
    train_losses: dict[str, float],
    images_per_second: float,
    out: TrainOutputs,
) -> dict[str, float]:
    """Rank 0 after each epoch: validate, draw the samples, log; returns the epoch's row of losses
    (what DVC tracks: losses only, the same on every run)."""
    cfg = params.train
    val_losses = validate(gan, val_set, cfg.batch_size)
    scores = photo_scores(gan.averaged_generator, val_set, cfg.batch_size, gan.amp_dtype)
    row = {
        "epoch": epoch,
        **{f"train_{k}": v for k, v in sorted(train_losses.items())},
        **{f"val_{k}": v for k, v in sorted(val_losses.items())},
        **{f"val_{k}": v for k, v in scores.items()},
    }
    grid = out.state_dir / "samples" / f"epoch_{epoch:03d}.png"
    write_samples(gan, val_set, cfg.sample_count, params.seed + epoch, grid)
    speed = {"train_images_per_second": images_per_second}  # run-specific: MLflow and the console only
    logged = {tracking.sectioned(k): v for k, v in (row | speed).items() if k != "epoch" and np.isfinite(v)}
    tracking.log_metrics(logged, epoch)
    tracking.log_image(grid, "samples", epoch)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in (row | speed).items() if k != "epoch")
    log.info("epoch %d: %s", epoch, shown)
    return row
