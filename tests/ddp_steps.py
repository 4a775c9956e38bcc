"""A few GAN steps on fixed data, run by `torchrun` (each rank takes its share of every batch) and by
the test itself as references; tests/test_distributed.py compares the parameters.

usage: torchrun --standalone --nproc-per-node=N -m tests.ddp_steps OUT.pt
"""

from __future__ import annotations

import sys

import torch

from colorizer.training.distributed import barrier, process_group, unwrap, world_from_env
from colorizer.training.gan import Gan, distribute
from colorizer.training.losses import d_losses, g_losses, generator_loss
from colorizer.training.models import Discriminator, Generator

BATCH, STEPS, SIZE, LR, L1_LAMBDA = 8, 3, 32, 0.05, 100.0


def build() -> Gan:
    """fp32, SGD: Adam's first steps are scale-invariant and would hide a gradient averaging bug."""
    torch.manual_seed(0)
    generator, discriminator = Generator([8, 16, 16, 16, 16], SIZE), Discriminator([8, 16])
    sgd_g = torch.optim.SGD(generator.parameters(), lr=LR)
    sgd_d = torch.optim.SGD(discriminator.parameters(), lr=LR)
    return Gan(generator, discriminator, sgd_g, sgd_d, torch.device("cpu"), None, L1_LAMBDA)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = torch.Generator().manual_seed(1)
    return [
        (torch.rand(BATCH, 1, SIZE, SIZE, generator=rng) * 2 - 1, torch.rand(BATCH, 2, SIZE, SIZE, generator=rng) - 0.5)
        for _ in range(STEPS)
    ]


def parameters(gan: Gan) -> dict[str, torch.Tensor]:
    return {f"g.{k}": v.detach().clone() for k, v in unwrap(gan.generator).named_parameters()} | {
        f"d.{k}": v.detach().clone() for k, v in unwrap(gan.discriminator).named_parameters()
    }


def reference(chunks: int) -> dict[str, torch.Tensor]:
    """One process doing what `chunks` ranks do together: each chunk through the models on its own
    (BatchNorm per chunk), the chunks' losses averaged, one optimizer step. chunks=1 is full-batch
    BatchNorm: the negative control."""
    gan = build()
    for L, ab in batches():
        parts = list(zip(L.chunk(chunks), ab.chunk(chunks), strict=True))
        fakes = [gan.generator(L_c) for L_c, _ in parts]
        gan.discriminator.requires_grad_(True)
        gan.opt_d.zero_grad()
        d_loss = 0
        for (L_c, ab_c), fake in zip(parts, fakes, strict=True):
            losses = d_losses(gan.judge(L_c, ab_c), gan.judge(L_c, fake.detach()))
            d_loss = d_loss + (losses["d_real"] + losses["d_fake"]) / chunks
        d_loss.backward()
        gan.opt_d.step()
        gan.discriminator.requires_grad_(False)
        gan.opt_g.zero_grad()
        g_loss = 0
        for (L_c, ab_c), fake in zip(parts, fakes, strict=True):
            g_loss = g_loss + generator_loss(g_losses(gan.judge(L_c, fake), fake, ab_c), L1_LAMBDA) / chunks
        g_loss.backward()
        gan.opt_g.step()
    return parameters(gan)


def main(out: str) -> None:
    world = world_from_env()
    with process_group(world, torch.device("cpu")):
        gan = distribute(build(), world, sync_batchnorm=False)
        share = BATCH // world.size
        for L, ab in batches():
            rows = slice(world.rank * share, (world.rank + 1) * share)
            gan.train_step(L[rows], ab[rows], adversarial=True)  # the training loop's own step
        if world.is_main:
            torch.save(parameters(gan), out)
        barrier(world)


if __name__ == "__main__":
    main(sys.argv[1])
