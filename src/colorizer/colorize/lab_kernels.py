"""Colorize's Lab conversions at full resolution, as loops compiled by numba: a photo's L* from its
sRGB bytes (`L_from_rgb`), and L*, a*, b* -> sRGB bytes (`lab_planes_to_rgb8`, `lab_rows_to_rgb8`:
the join, in `recombine`). The same formulas as `lab` (scikit-image's, clipping included); a module
of its own so that only colorize loads numba. A fast path (`colorizer.fast`): with it off, the worker
joins with OpenCV's Lab -> sRGB (`lab.lab_planes_to_rgb`).
"""

from __future__ import annotations

import numba
import numpy as np

from colorizer.data.lab import _EPSILON, _KAPPA, _XYZ_ROWS, WHITE_D65, XYZ_FROM_RGB, _linear

# Colorize joins millions of full-resolution pixels per photo, and on a fast model that join was the
# largest part of a worker's time: OpenCV's float Lab2RGB, the merge of the planes and the rounding
# pass, each a pass over the photo (`python -m bench.photo_costs`). No library converts Lab to sRGB
# bytes in one pass (OpenCV's 8-bit path quantises L* and a*b* to bytes first: up to 27 levels off
# out of gamut), so this loop does it, vectorised by numba. sRGB's curve (a power 1/2.4)
# is a degree-6 polynomial in lin^(1/4), two square roots that vectorise where a power does not:
# within 0.0005 of a level of the exact curve, where OpenCV's spline is off by up to ~0.3. Against
# scikit-image rounded to bytes, 1e-4 of pixels are one level off (OpenCV's path: 2e-3).
_SRGB_LINEAR_BELOW = 0.0031308  # sRGB's curve is 12.92 * lin below this, 1.055 * lin^(1/2.4) - 0.055 above


def _series_in_quartic_root(of_q, lowest: float) -> np.ndarray:
    """float32 coefficients p0..p6 of the degree-6 polynomial in q = x^(1/4) that stands for of_q(q)
    with x in [lowest, 1] (Chebyshev interpolation: near the best such polynomial)."""
    series = np.polynomial.Chebyshev.interpolate(of_q, 6, domain=[lowest**0.25, 1.0])
    return series.convert(kind=np.polynomial.Polynomial).coef.astype(np.float32)


_SRGB8_OF_QUARTIC_ROOT = _series_in_quartic_root(lambda q: 255 * (1.055 * q ** (5 / 3) - 0.055), _SRGB_LINEAR_BELOW)
# linear RGB from XYZ relative to the white point (Lab's f^-1 gives X/Xn, Y/Yn, Z/Zn)
_RGB_FROM_RELATIVE_XYZ = (np.linalg.inv(XYZ_FROM_RGB) * WHITE_D65[None, :]).astype(np.float32)
_f32 = np.float32


def _jit(**options):
    """numba's njit as these loops need it: nogil, as colorize's worker threads run them side by side;
    fused multiply-adds allowed, nothing else of fastmath; compiled once per machine and cached on
    disk (in the package's __pycache__, else the user's cache dir). Where neither can be written (a
    read-only install and home), numba refuses to cache at all: then compiled in each process
    instead of failing."""

    def decorate(function):
        try:
            return numba.njit(nogil=True, fastmath={"contract"}, cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, fastmath={"contract"}, **options)(function)

    return decorate


@_jit(inline="always")
def _of_quartic_root(p, x):
    """The polynomial p (`_series_in_quartic_root`) at q = x^(1/4)."""
    q = np.sqrt(np.sqrt(x))
    return p[0] + q * (p[1] + q * (p[2] + q * (p[3] + q * (p[4] + q * (p[5] + q * p[6])))))


@_jit(inline="always")
def _f_inverse(f):
    return f * f * f if f > _f32(6 / 29) else (f - _f32(16 / 116)) * _f32(1 / _KAPPA)


@_jit(inline="always")
def _srgb8(linear):
    linear = min(max(linear, _f32(0.0)), _f32(1.0))  # into gamut, as scikit-image clips
    curve = _of_quartic_root(_SRGB8_OF_QUARTIC_ROOT, linear)
    level = curve if linear > _f32(_SRGB_LINEAR_BELOW) else linear * _f32(12.92 * 255)
    return np.uint8(level + _f32(0.5))


@_jit(inline="always")
def _pixel(L, a, b):
    """One pixel's L*, a*, b* -> its sRGB bytes."""
    m = _RGB_FROM_RELATIVE_XYZ
    fy = (L + _f32(16.0)) * _f32(1 / 116)
    x = _f_inverse(fy + a * _f32(1 / 500))
    y = _f_inverse(fy)
    z = _f_inverse(max(fy - b * _f32(1 / 200), _f32(0.0)))  # Z >= 0, as scikit-image clips it
    return (
        _srgb8(m[0, 0] * x + m[0, 1] * y + m[0, 2] * z),
        _srgb8(m[1, 0] * x + m[1, 1] * y + m[1, 2] * z),
        _srgb8(m[2, 0] * x + m[2, 1] * y + m[2, 2] * z),
    )


@_jit()
def _rows_to_srgb8(L, a_rows, b_rows, upper, lower, weight, out):
    """Row r of L with a*b* interpolated between rows upper[r] and lower[r] of a_rows, b_rows."""
    for r in range(L.shape[0]):
        u, d, w = upper[r], lower[r], weight[r]
        for x in range(L.shape[1]):
            a = a_rows[u, x] + w * (a_rows[d, x] - a_rows[u, x])
            b = b_rows[u, x] + w * (b_rows[d, x] - b_rows[u, x])
            out[r, 3 * x], out[r, 3 * x + 1], out[r, 3 * x + 2] = _pixel(L[r, x], a, b)


def linear_taps(source: int, target: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `target` rows stretched from `source` (OpenCV's INTER_LINEAR: pixel centres
    aligned, edges clamped), the two source rows it lies between and the weight of the lower one;
    only for `rows` when given."""
    position = (np.arange(target, dtype=np.float64)[rows] + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0, source - 1)
    upper = np.floor(position).astype(np.intp)
    return upper, np.minimum(upper + 1, source - 1), (position - upper).astype(np.float32)


def lab_rows_to_rgb8(L: np.ndarray, a_rows: np.ndarray, b_rows: np.ndarray, taps: tuple, out: np.ndarray) -> np.ndarray:
    """L (H, W) with a*b* taken between rows of a_rows, b_rows (S, W) by `taps` (`linear_taps`) ->
    (H, W, 3) uint8 sRGB in `out`: the vertical half of a*b*'s upsampling and the conversion in one pass."""
    height, width = L.shape
    if a_rows.shape != b_rows.shape or a_rows.shape[1] != width or any(len(t) != height for t in taps):
        raise ValueError(f"a*b* rows {a_rows.shape}, {b_rows.shape} and {len(taps[0])} taps do not fit L {L.shape}")
    if out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be contiguous uint8 of shape {(height, width, 3)}")
    planes = (np.ascontiguousarray(p, dtype=np.float32) for p in (L, a_rows, b_rows))
    _rows_to_srgb8(*planes, *taps, out.reshape(height, width * 3))
    return out


def lab_planes_to_rgb8(L: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """2-D planes L, a*, b* of one shape (H, W) -> (H, W, 3) uint8 sRGB: scikit-image's lab2rgb rounded to
    bytes, out-of-gamut clipped the same way, in one pass; into `out` (contiguous uint8) when given."""
    if not L.shape == a.shape == b.shape:
        raise ValueError(f"L, a*, b* planes differ in shape: {L.shape}, {a.shape}, {b.shape}")
    height = L.shape[0]
    if out is None:
        out = np.empty((*L.shape, 3), np.uint8)
    rows = np.arange(height)
    return lab_rows_to_rgb8(L, a, b, (rows, rows, np.zeros(height, np.float32)), out)


# L* from sRGB bytes: a table per channel (OpenCV), then Y and its cube root in one loop. The cube
# root is a degree-6 polynomial in Y^(1/4) (two square roots that vectorise where a cube root does
# not), within 1.2e-4 of L* above CIE's threshold; below it L* is the line 903.3 Y, as in `lab`.
_CUBE_ROOT_OF_QUARTIC_ROOT = _series_in_quartic_root(lambda q: q ** (4 / 3), _EPSILON)


@_jit()
def _L_of_linear(linear, out):
    """linear: (N * 3) linear RGB, interleaved -> out: (N) L*."""
    row = _XYZ_ROWS[1]  # Y of the D65 white is 1
    for i in range(out.shape[0]):
        y = row[0] * linear[3 * i] + row[1] * linear[3 * i + 1] + row[2] * linear[3 * i + 2]
        cube_root = _of_quartic_root(_CUBE_ROOT_OF_QUARTIC_ROOT, max(y, _f32(0.0)))
        out[i] = _f32(116.0) * cube_root - _f32(16.0) if y > _f32(_EPSILON) else _f32(903.3) * y


def L_from_rgb(rgb_uint8: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (...) float32 L*, within 1e-3 of lab.rgb_to_lab's L (measured 1.2e-4):
    only the luminance, for colorize's full-size L, in one pass where OpenCV's weighted sum and cube
    root take several (`python -m bench.photo_costs`). Not bit-identical across CPUs, which colorize's output is
    not either; shards take rgb_to_lab's L."""
    rgb_uint8 = np.asarray(rgb_uint8)
    linear = _linear(rgb_uint8).reshape(-1)
    out = np.empty(linear.size // 3, np.float32)
    _L_of_linear(linear, out)
    return out.reshape(rgb_uint8.shape[:-1])
