"""The design document's GAN losses, one helper per network, used by training, validation and evaluate.

Discriminator: BCE(D(L, ab) -> 1) + BCE(D(L, G(L)) -> 0). Generator: BCE(D(L, G(L)) -> 1) + lambda * L1
on a*b* (model scale, [-1, 1]). Logits are judged with BCE-with-logits (BCE on sigmoid, computed stably).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(values: torch.Tensor, per_image: bool) -> torch.Tensor:
    return values.flatten(1).mean(dim=1) if per_image else values.mean()


def _bce(logits: torch.Tensor, target: float, per_image: bool) -> torch.Tensor:
    logits = logits.float()
    values = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return _reduce(values, per_image)


def d_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor, per_image: bool = False) -> dict[str, torch.Tensor]:
    """{d_real, d_fake}: the discriminator's BCE on real pairs (target 1) and on colorizations (target 0)."""
    return {"d_real": _bce(real_logits, 1.0, per_image), "d_fake": _bce(fake_logits, 0.0, per_image)}


def g_losses(
    fake_logits: torch.Tensor | None, fake_ab: torch.Tensor, ab: torch.Tensor, per_image: bool = False
) -> dict[str, torch.Tensor]:
    """{g_gan, g_l1}: BCE of D's verdict on the colorization against 'real' (0 when there is no D,
    as in the L1 warm-up) and the mean |a*b* error|. per_image: one value per image instead of the mean."""
    g_l1 = _reduce((fake_ab.float() - ab.float()).abs(), per_image)
    g_gan = torch.zeros_like(g_l1) if fake_logits is None else _bce(fake_logits, 1.0, per_image)
    return {"g_gan": g_gan, "g_l1": g_l1}


def generator_loss(losses: dict[str, torch.Tensor], l1_lambda: float, ce_lambda: float = 0.0) -> torch.Tensor:
    """The design document's GAN loss: the discriminator's BCE plus lambda (100) times L1; for the
    bins head (l1_lambda 0) ce_lambda times the rebalanced cross-entropy `g_ce` instead."""
    if ce_lambda:  # L1 left out altogether: its gradient through the bins' read-out costs a third of a step
        return losses["g_gan"] + ce_lambda * losses["g_ce"]
    return losses["g_gan"] + l1_lambda * losses["g_l1"]
