"""Pictures for people: the per-epoch sample grid and the colorize contact sheet (pure functions)."""

from __future__ import annotations

import numpy as np
import torch

from colorizer.data.lab import denormalize_ab, denormalize_L, lab_to_rgb_uint8


def lab_batch_to_rgb(L_norm: torch.Tensor, ab_norm: torch.Tensor) -> np.ndarray:
    """Model-scale (B, 1, H, W) L and (B, 2, H, W) ab -> (B, H, W, 3) uint8 sRGB."""
    lab = torch.cat([denormalize_L(L_norm.float()), denormalize_ab(ab_norm.float())], dim=1)
    return lab_to_rgb_uint8(lab.permute(0, 2, 3, 1).cpu().numpy())


def sample_grid(L_norm: torch.Tensor, fake_ab: torch.Tensor, real_ab: torch.Tensor, gap: int = 2) -> np.ndarray:
    """Rows as in the design document: greyscale input, colorized, original; one column per sample."""
    rows = [
        lab_batch_to_rgb(L_norm, torch.zeros_like(real_ab)),
        lab_batch_to_rgb(L_norm, fake_ab),
        lab_batch_to_rgb(L_norm, real_ab),
    ]
    return tile([list(row) for row in rows], gap)


def tile(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Equal-size (H, W, 3) images in a white-separated grid."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = (
                image
            )
    return canvas
