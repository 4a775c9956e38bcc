"""Colour as classification (Zhang, Isola & Efros 2016, "Colorful Image Colorization"): `model.head: bins`.

L1 (and L2) average the plausible colours of an ambiguous pixel into brown; a distribution over
quantised a*b* keeps them apart. The pieces, each as the paper defines it:

- the bin set: a*b* on a grid of `GRID` Lab units, the cells our training photos reach (the paper's
  313 are ImageNet's in-gamut cells; ours come from the corpus) - `bin_set`;
- soft-encoded targets: each true a*b* spread over its `NEIGHBOURS` nearest bins with a Gaussian of
  `SIGMA` - `soft_encode`;
- class rebalancing: each pixel's loss weighted by its nearest bin's 1 / ((1 - lambda) * p~ + lambda / Q),
  p~ the bins' frequencies smoothed with the same Gaussian, lambda = `REBALANCE` - `rebalancing_weights`;
- the annealed-mean read-out: the mean of the bins under softmax(logits / T), T = `TEMPERATURE`, between
  the mean (brown) and the mode (patchy) - `annealed_mean`.

Everything here takes a*b* in the model's scale (Lab units / AB_SCALE), as the shards hold it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from colorizer.data.lab import AB_SCALE

GRID = 10.0  # Lab units between bin centres
SIGMA = 5.0  # Lab units: the Gaussian of the soft encoding and of the prior's smoothing
NEIGHBOURS = 5
REBALANCE = 0.5
TEMPERATURE = 0.38
_CELLS = 16  # cells each side of 0 on either axis: 160 Lab units, past sRGB's gamut (|a*|, |b*| < 128)


def quantise(ab: np.ndarray) -> np.ndarray:
    """Grid cell (integer i, j with centre (i, j) * GRID Lab units) of each a*b* pair (..., 2), model scale."""
    return np.rint(np.asarray(ab, dtype=np.float64) * AB_SCALE / GRID).astype(np.int64)


def bin_counts(ab_chunks: Iterable[np.ndarray]) -> dict[tuple[int, int], int]:
    """How many a*b* pairs fall in each grid cell, over chunks of a*b* (..., 2, H, W) in the model's
    scale (shards' rows): a bincount over the cells, so a corpus of 10^8 pixels takes seconds."""
    side = 2 * _CELLS + 1
    total = np.zeros(side * side, dtype=np.int64)
    for ab in ab_chunks:
        cells = np.clip(quantise(np.moveaxis(np.asarray(ab), -3, -1)).reshape(-1, 2), -_CELLS, _CELLS) + _CELLS
        total += np.bincount(cells[:, 0] * side + cells[:, 1], minlength=side * side)
    return {(int(k // side) - _CELLS, int(k % side) - _CELLS): int(total[k]) for k in np.flatnonzero(total)}


def prior_over(centres: torch.Tensor, counts: dict[tuple[int, int], int]) -> torch.Tensor:
    """The probabilities (Q,) of the given bins under the counts (cells outside them are left out:
    a fine-tuning keeps the bins of the model it starts from)."""
    cells = quantise(centres.double().numpy())
    found = torch.tensor([counts.get((int(i), int(j)), 0) for i, j in cells], dtype=torch.float64)
    return (found / found.sum().clamp(min=1)).float()


def bin_set(counts: dict[tuple[int, int], int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The bins a corpus reaches, sorted by (a*, b*): centres (Q, 2) in the model's scale and their
    empirical probabilities (Q,)."""
    cells = sorted(cell for cell, n in counts.items() if n > 0)
    if not cells:
        raise ValueError("bin_set: no a*b* values to build a bin set from")
    centres = torch.tensor(cells, dtype=torch.float64) * GRID / AB_SCALE
    prior = torch.tensor([counts[cell] for cell in cells], dtype=torch.float64)
    return centres.float(), (prior / prior.sum()).float()


def _gaussian(squared_distance: torch.Tensor) -> torch.Tensor:
    return torch.exp(-squared_distance / (2 * (SIGMA / AB_SCALE) ** 2))


def rebalancing_weights(centres: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(Q,) weights that make rare colours count: w ~ 1 / ((1 - lambda) p~ + lambda / Q), normalised so
    that their expectation under p~ is 1 (the paper's eq. 4), p~ the prior smoothed by the Gaussian."""
    smoothed = _gaussian(torch.cdist(centres.double(), centres.double()) ** 2) @ prior.double()
    smoothed = smoothed / smoothed.sum()
    weights = 1.0 / ((1 - REBALANCE) * smoothed + REBALANCE / len(centres))
    return (weights / (smoothed * weights).sum()).float()


def soft_encode(ab: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets of a*b* pairs (N, 2): the indices (N, k) of their k = NEIGHBOURS nearest bins,
    nearest first, and Gaussian weights (N, k) over them that sum to 1."""
    squared = torch.cdist(ab.float(), centres.float()) ** 2  # (N, Q)
    nearest, indices = squared.topk(min(NEIGHBOURS, len(centres)), dim=1, largest=False)
    weights = _gaussian(nearest - nearest[:, :1])  # relative to the nearest: the same ratios, no underflow
    return indices, weights / weights.sum(dim=1, keepdim=True)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """a*b* (B, 2, h, w) from bin logits (B, Q, h, w): the bins' mean under softmax(logits / T), which
    is the paper's f_T(z) = exp(log z / T) / sum exp(log z / T) with z = softmax(logits)."""
    # bins last, a view of channels-last logits (as the generator makes them): softmax over the last
    # dim needs no copy (over dim 1 torch makes the input contiguous first: 4 copies a training step)
    probabilities = torch.softmax(_bins_last(logits) / temperature, dim=-1)
    return (probabilities @ centres.to(probabilities)).permute(0, 3, 1, 2)


def _bins_last(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().permute(0, 2, 3, 1)  # (B, h, w, Q)


def bins_loss(
    logits: torch.Tensor, ab: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor, per_image: bool = False
) -> torch.Tensor:
    """The rebalanced multinomial cross-entropy of logits (B, Q, h, w) against the soft encoding of
    true a*b* (B, 2, H, W), averaged to the logits' size first (2x2 means where H = 2h, as the paper
    compares at its output's resolution)."""
    if ab.shape[-2:] != logits.shape[-2:]:
        ab = F.adaptive_avg_pool2d(ab.float(), logits.shape[-2:])
    batch, bins = logits.shape[:2]
    pixels = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)
    indices, soft = soft_encode(pixels, centres)
    log_p = torch.log_softmax(_bins_last(logits).reshape(-1, bins), dim=-1)
    cross_entropy = -(log_p.gather(1, indices) * soft).sum(dim=1) * weights.to(log_p)[indices[:, 0]]
    per_pixel = cross_entropy.reshape(batch, -1)
    return per_pixel.mean(dim=1) if per_image else per_pixel.mean()
