"""sRGB (D65) <-> CIE Lab, and the model's normalisation of L and a*b*: pure functions.

One implementation of each direction for the pipeline (shards, metrics, augmentation, pictures),
with the same formulas and constants as scikit-image's `rgb2lab`/`lab2rgb` (tests compare them):
- rgb -> Lab is vectorised numpy in float32 (max abs error about 1e-4 against scikit-image), and
  gives the same bytes on every CPU, so shards do too;
- Lab -> rgb runs through OpenCV's SIMD kernel after clamping b* the way scikit-image clips
  negative Z: many times faster than numpy and within 0.0012 (a third of an 8-bit level) of
  scikit-image, out-of-gamut included.
Colorize's full-resolution conversions (a photo's L*, and the join to sRGB bytes) are fused loops
in `lab_kernels`, on these constants. The model's normalisation of L and a*b* lives here too.
"""

from __future__ import annotations

import cv2
import numpy as np

# sRGB primaries -> XYZ, and the D65 (2 degree) white point: scikit-image's constants.
XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])

_EPSILON = 0.008856  # (6/29)^3, below which f(t) is linear
_KAPPA = 7.787

# The model sees L in [-1, 1] and a*b* in about [-1, 1]; these are the only place the scale lives.
L_SCALE, L_SHIFT = 50.0, 1.0  # L_norm = L / 50 - 1
AB_SCALE = 110.0  # ab_norm = ab / 110: |a*|,|b*| of sRGB stay under ~110


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


# Shards must hold the same bytes on every CPU, so the forward conversion avoids the two things
# whose last bits depend on the machine: BLAS (`@` picks a kernel per CPU, Haswell or SkylakeX, and
# each sums in its own order) and numpy's float32 cube root (a SIMD version on AVX-512 machines).
# Plain float32 multiplies and adds round exactly (IEEE) everywhere, and a float64 cube root rounded
# to float32 comes out the same unless the exact value sits within an ulp64 of a float32 midpoint.
_XYZ_ROWS = (XYZ_FROM_RGB / WHITE_D65[:, None]).astype(np.float32)  # rows scaled by the white point


def _mix(linear: np.ndarray, row: np.ndarray) -> np.ndarray:
    """(..., 3) @ one row of the colour matrix, as float32 multiply-adds in a fixed order."""
    return linear[..., 0] * row[0] + linear[..., 1] * row[1] + linear[..., 2] * row[2]


def _cbrt(t: np.ndarray) -> np.ndarray:
    return np.cbrt(t.astype(np.float64)).astype(np.float32)


def _linear(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:  # a table: exact; OpenCV's gather is several times faster than numpy's indexing
        return cv2.LUT(np.ascontiguousarray(rgb).reshape(-1, 3), _LINEAR_OF_UINT8).reshape(rgb.shape)
    return _srgb_to_linear(np.asarray(rgb, dtype=np.float64)).astype(np.float32)


def _f(t: np.ndarray) -> np.ndarray:
    """CIE's f(t): a cube root above (6/29)^3, a line below it."""
    return np.where(t > _EPSILON, _cbrt(t), _KAPPA * t + 16.0 / 116.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB -> (..., 3) float32 Lab. uint8 input is read as 0..255, floats as 0..1.
    The same bytes on every CPU (see above)."""
    linear = _linear(np.asarray(rgb))
    x, y, z = (_mix(linear, row) for row in _XYZ_ROWS)
    fx, fy, fz = _f(x), _f(y), _f(z)
    L = np.where(y > _EPSILON, 116.0 * fy - 16.0, 903.3 * y)
    return np.stack([L, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) Lab -> (..., 3) float32 sRGB in [0, 1], clipped into gamut."""
    lab = np.asarray(lab, dtype=np.float32)
    planes = [np.ascontiguousarray(lab[..., i]).reshape(-1, 1) for i in range(3)]
    return lab_planes_to_rgb(*planes).reshape(lab.shape)


def lab_planes_to_rgb(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2-D float32 planes L, a*, b* -> (H, W, 3) float32 sRGB in [0, 1] (OpenCV clips into gamut)."""
    # scikit-image clips f(Z) at 0 (Z < 0 is outside any gamut); for b* that is b* <= 200 * f(Y).
    # In place, in one buffer: one pass fewer over the photo (`python -m bench.photo_costs`).
    bound = L + 16.0
    bound *= 200.0 / 116.0
    return cv2.cvtColor(cv2.merge([L, a, np.minimum(b, bound, out=bound)]), cv2.COLOR_Lab2RGB)


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded and saturated (one OpenCV pass instead of four numpy ones)."""
    flat = rgb01.reshape(-1, 1, rgb01.shape[-1]) if rgb01.ndim != 3 else rgb01
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(rgb01.shape)


_LINEAR_OF_UINT8 = _srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
_L_OF_GREY = np.zeros(256, np.float32)  # filled below, once rgb_to_lab exists


def lab_to_rgb_uint8(lab: np.ndarray) -> np.ndarray:
    return to_uint8(lab_to_rgb(lab))


def L_from_grey(grey_uint8: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey (R = G = B) -> float32 L through a 256-entry table: exact, and one pass."""
    return cv2.LUT(np.ascontiguousarray(grey_uint8), _L_OF_GREY)


def normalize_L(L: np.ndarray) -> np.ndarray:
    return L / L_SCALE - L_SHIFT


def denormalize_L(L_norm: np.ndarray) -> np.ndarray:
    return (L_norm + L_SHIFT) * L_SCALE


def normalize_ab(ab: np.ndarray) -> np.ndarray:
    return ab / AB_SCALE


def denormalize_ab(ab_norm: np.ndarray) -> np.ndarray:
    return ab_norm * AB_SCALE


def mean_chroma(rgb: np.ndarray) -> float:
    """Mean sqrt(a*^2 + b*^2) of an image: near 0 for a greyscale photo."""
    lab = rgb_to_lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


_L_OF_GREY[:] = rgb_to_lab(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))[:, 0]
