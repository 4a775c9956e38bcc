"""The GAN training loop: epochs of `gan.Gan.train_step` over the shards, validation, sample grids,
MLflow logging, and the exported model. A checkpoint is written atomically after every epoch; a
re-run with the same params and data continues from it (`resume`), and the same MLflow run with it.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from colorizer import tracking
from colorizer.config import ConfigError, Params, TrainConfig, UserError
from colorizer.data.images import save_png
from colorizer.data.shards import LabShardDataset
from colorizer.devices import pick_device
from colorizer.files import atomic_write_json, progress
from colorizer.training.checkpoints import export_model, save_checkpoint
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
from colorizer.training.gan import Gan, build_gan, colour_counts, distribute
from colorizer.training.resume import CHECKPOINT_NAME, fingerprint, one_trainer, restore, resumable_state, snapshot
from colorizer.training.visualize import sample_grid

log = logging.getLogger(__name__)


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
        used, given = len(unwrap(gan.generator).widths), len(params.model.generator_widths)
        if used < given and world.is_main:  # said, not silent: one down-block per halving of the image
            log.info(
                "train: model.generator_widths: the first %d of %d widths make the UNet at %d px "
                "(a 1x1 bottleneck); the design document's 8 need augment.image_size 256",
                *(used, given, train_set.image_size),
            )
        log.debug(
            "train: rank %d of %d, %d training and %d validation images on %s, autocast %s, %d threads",
            *(world.rank, world.size, len(train_set), len(val_set), device, gan.amp_dtype, torch.get_num_threads()),
        )
        outputs = TrainOutputs(model_dir, state_dir, plots_path, metrics_path, samples_path)
        with one_trainer(state_dir) if world.is_main else nullcontext():  # until the end: model and metrics too
            return _train(params, gan, world, TrainingData(shard_dir, train_set, val_set), outputs)


@dataclass(frozen=True)
class TrainingData:
    """What a training reads: its shards, and their training and validation splits."""

    shard_dir: Path
    train_set: LabShardDataset
    val_set: LabShardDataset


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


def _train(params: Params, gan: Gan, world: World, data: TrainingData, out: TrainOutputs) -> dict:
    cfg = params.train
    loader_rng = torch.Generator().manual_seed(params.seed)
    run_fingerprint = fingerprint(params, data.shard_dir, world.size)
    say = log.info if world.is_main else log.debug
    state = resumable_state(out.checkpoint, run_fingerprint, cfg.epochs, say)
    history: list[dict] = []
    if state:
        restore(gan, state, loader_rng, out.checkpoint)
        history = list(state["history"])
    gan = distribute(gan, world, cfg.sync_batchnorm)
    rank0 = gan.unwrapped()
    loader = make_loader(
        data.train_set,
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
                    end_epoch(params, rank0, data.val_set, epoch, train_losses, images * world.size / seconds, out)
                )
                tracking.write_plot_rows(out.plots_path, history)
                save_checkpoint(out.checkpoint, snapshot(rank0, epoch, loader_rng, history, run_fingerprint))
            barrier(world)
        if world.is_main:
            tracking.write_plot_rows(out.plots_path, history)
            if out.samples_path:  # the last epoch's grid, drawn again: the same model and seed give the same picture
                write_samples(rank0, data.val_set, cfg.sample_count, params.seed + cfg.epochs, out.samples_path)
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
