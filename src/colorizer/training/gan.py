"""The conditional GAN as training holds it: both networks, their optimizers and the weight average,
and one training step (the design document's d_step and g_step, with the losses of `losses`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from colorizer.config import ConfigError, ModelConfig, TrainConfig
from colorizer.data.lab import normalize_ab
from colorizer.data.shards import LabShardDataset
from colorizer.devices import autocast, autocast_dtype
from colorizer.training import color_bins, ema, optimizers
from colorizer.training.checkpoints import PRETRAINED_DIR, CheckpointError, load_generator
from colorizer.training.distributed import World, unwrap
from colorizer.training.losses import d_losses, g_losses, generator_loss
from colorizer.training.models import Discriminator, Generator, build_discriminator, build_generator


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
        # an fp32 join, without that copy and the a*b* copy to fp32 (`python -m bench.profile_train`)
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
    # the fused kernel (CUDA, and CPU since torch 2.4) is one pass over each parameter, where the
    # default foreach path makes several (`python -m bench.profile_train` shows the optimizer's share)
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
