"""Evaluation metrics as pure functions: L1 on a*b*, the design document's GAN loss, PSNR, SSIM,
Hasler-Suesstrunk colourfulness and hue agreement. PSNR/SSIM come from scikit-image; colourfulness
and hue agreement have no library home."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorizer.lab import AB_SCALE, rgb_to_lab

# Hue agreement: of the original's colourful pixels (chroma above COLOURFUL_CHROMA), the share whose
# colorized pixel is coloured too (chroma above COLOURED_CHROMA) with a hue within HUE_TOLERANCE_DEGREES.
COLOURFUL_CHROMA, COLOURED_CHROMA, HUE_TOLERANCE_DEGREES = 15.0, 5.0, 45.0
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; cap so that means stay finite


def l1_per_image(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """Mean |a*b* error| per image, in the model's scale ([-1, 1]); multiply by AB_SCALE for Lab units."""
    return (pred_ab.float() - true_ab.float()).abs().flatten(1).mean(dim=1)


def adversarial_bce_per_image(fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's BCE against 'real' on a colorization, averaged over its patches."""
    loss = F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.ones_like(fake_logits.float()), reduction="none"
    )
    return loss.flatten(1).mean(dim=1)


def gan_loss(adversarial_bce: torch.Tensor, l1: torch.Tensor, l1_lambda: float = 100.0) -> torch.Tensor:
    """The design document's GAN loss: the discriminator's BCE plus 100 times L1 (model scale)."""
    return adversarial_bce + l1_lambda * l1


def psnr(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> float:
    value = peak_signal_noise_ratio(true_rgb, pred_rgb, data_range=255)
    return float(min(value, PSNR_CAP_DB))


def ssim(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> float:
    return float(structural_similarity(true_rgb, pred_rgb, channel_axis=-1, data_range=255))


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003): sigma_rgyb + 0.3 * mu_rgyb over rg = R - G, yb = (R + G) / 2 - B."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def l1_lab_units(l1_model_scale: float) -> float:
    return l1_model_scale * AB_SCALE


def hue_agreement(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> float:
    """Share of the original's pixels with Lab chroma > 15 whose colorized pixel has chroma > 5 and a
    hue angle within 45 degrees of the original's: grey output scores 0, a random hue about 0.25.
    NaN when the original has no colourful pixel (nothing to agree with)."""
    true_lab, pred_lab = rgb_to_lab(true_rgb), rgb_to_lab(pred_rgb)
    true_chroma = np.hypot(true_lab[..., 1], true_lab[..., 2])
    colourful = true_chroma > COLOURFUL_CHROMA
    if not colourful.any():
        return float("nan")
    pred_chroma = np.hypot(pred_lab[..., 1], pred_lab[..., 2])
    true_hue = np.arctan2(true_lab[..., 2], true_lab[..., 1])
    pred_hue = np.arctan2(pred_lab[..., 2], pred_lab[..., 1])
    difference = np.abs(np.angle(np.exp(1j * (pred_hue - true_hue))))  # wrapped to [0, pi]
    agrees = (pred_chroma > COLOURED_CHROMA) & (difference <= np.deg2rad(HUE_TOLERANCE_DEGREES))
    return float(agrees[colourful].mean())
