"""Evaluation metrics on RGB images as pure functions: PSNR, SSIM, Hasler-Suesstrunk colourfulness and
hue agreement (the losses are in losses.py). PSNR/SSIM come from scikit-image; colourfulness
and hue agreement have no library home."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorizer.data.lab import AB_SCALE, rgb_to_lab

# Hue agreement: of the original's colourful pixels (chroma above COLOURFUL_CHROMA), the share whose
# colorized pixel is coloured too (chroma above COLOURED_CHROMA) with a hue within HUE_TOLERANCE_DEGREES.
COLOURFUL_CHROMA, COLOURED_CHROMA, HUE_TOLERANCE_DEGREES = 15.0, 5.0, 45.0
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; cap so that means stay finite


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
