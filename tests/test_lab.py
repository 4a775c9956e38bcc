import os
import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from colorizer.colorize.lab_kernels import L_from_rgb, lab_planes_to_rgb8, linear_taps
from colorizer.data.lab import (
    L_from_grey,
    denormalize_ab,
    denormalize_L,
    lab_to_rgb,
    lab_to_rgb_uint8,
    mean_chroma,
    normalize_ab,
    normalize_L,
    rgb_to_lab,
)
from tests.helpers import PROGRAMS

ALL_RGB_SAMPLE = np.random.default_rng(0).integers(0, 256, (100_000, 3), dtype=np.uint8)


def test_rgb_to_lab_matches_scikit_image():
    ours = rgb_to_lab(ALL_RGB_SAMPLE)
    reference = rgb2lab(ALL_RGB_SAMPLE[None])[0]
    # float32 against scikit-image's float64: the max abs error is about 1e-4 Lab units.
    assert np.abs(ours - reference).max() < 5e-4


def test_lab_to_rgb_matches_scikit_image():
    lab = rgb2lab(ALL_RGB_SAMPLE[None])[0]
    assert np.abs(lab_to_rgb(lab) - lab2rgb(lab[None])[0]).max() < 1e-3  # OpenCV's kernel: ~4e-4


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")
def test_out_of_gamut_lab_is_clipped_like_scikit_image():
    rng = np.random.default_rng(1)
    lab = np.concatenate([rng.uniform(0, 100, (200_000, 1)), rng.uniform(-128, 127, (200_000, 2))], axis=1)
    lab[:3] = [[50.0, 120.0, -120.0], [90.0, -100.0, 100.0], [2.0, 80.0, 80.0]]
    ours = lab_to_rgb(lab)
    assert ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours - lab2rgb(lab[None])[0]).max() < 2e-3  # measured 1.2e-3: a third of an 8-bit level


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")
def test_lab_planes_to_rgb8_is_scikit_image_rounded_to_bytes():
    rng = np.random.default_rng(2)
    # in gamut, and well out of it (both clips: Z < 0 and RGB outside [0, 1])
    out_of_gamut = rng.uniform([0, -128, -128], [100, 127, 127], (300_000, 3))
    lab = np.concatenate([rgb2lab(ALL_RGB_SAMPLE[None])[0], out_of_gamut])
    lab[:4] = [[50.0, 120.0, -120.0], [90.0, -100.0, 100.0], [2.0, 80.0, 80.0], [0.5, 0.0, 127.0]]
    reference = np.round(255 * lab2rgb(lab[None])[0])
    planes = [np.ascontiguousarray(lab[:, i], dtype=np.float32).reshape(-1, 400) for i in range(3)]
    ours = lab_planes_to_rgb8(*planes).reshape(-1, 3)
    difference = np.abs(ours.astype(int) - reference)
    # one level off only where the exact value lies within float32 rounding of a half level
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # measured 1e-4
    np.testing.assert_array_equal(ours[:4], reference[:4])


def test_lab_planes_to_rgb8_gives_back_every_grey_level():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    L = L_from_grey(grey)
    out = lab_planes_to_rgb8(L, np.zeros_like(L), np.zeros_like(L))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_lab_planes_to_rgb8_writes_into_out_and_refuses_what_it_cannot_fill():
    L, a, b = (np.full((3, 5), value, np.float32) for value in (60.0, 20.0, -30.0))
    out = np.zeros((3, 5, 3), np.uint8)
    assert lab_planes_to_rgb8(L, a, b, out=out) is out
    np.testing.assert_array_equal(out, np.broadcast_to(lab_to_rgb_uint8([60.0, 20.0, -30.0]), (3, 5, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        lab_planes_to_rgb8(L, a[:2], b)
    with pytest.raises(ValueError, match="contiguous uint8"):
        lab_planes_to_rgb8(L, a, b, out=np.zeros((3, 10, 3), np.uint8)[:, ::2])


@pytest.mark.parametrize("source, target", [(256, 768), (256, 3), (16, 1000), (5, 5), (1, 4)])
def test_linear_taps_stretch_rows_as_opencv_does(source, target):
    rows = np.random.default_rng(3).uniform(-100, 100, (source, 7)).astype(np.float32)
    upper, lower, weight = linear_taps(source, target)
    stretched = rows[upper] + weight[:, None] * (rows[lower] - rows[upper])
    expected = cv2.resize(rows, (7, target), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(stretched, expected, atol=1e-4)
    part = slice(target // 3, target // 2 + 1)
    np.testing.assert_array_equal(
        np.stack(linear_taps(source, target, part)), np.stack((upper, lower, weight))[:, part]
    )


def test_lab_to_rgb_keeps_leading_dimensions():
    lab = rgb_to_lab(ALL_RGB_SAMPLE[:60].reshape(3, 4, 5, 3))
    assert lab_to_rgb(lab).shape == (3, 4, 5, 3)


def test_L_from_grey_is_the_L_of_equal_channels():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(L_from_grey(grey), rgb_to_lab(np.repeat(grey[..., None], 3, axis=2))[..., 0], atol=1e-3)


def test_L_from_rgb_equals_the_L_of_rgb_to_lab():
    np.testing.assert_allclose(L_from_rgb(ALL_RGB_SAMPLE), rgb_to_lab(ALL_RGB_SAMPLE)[..., 0], atol=1e-3)
    dark = np.arange(24, dtype=np.uint8)[:, None].repeat(3, axis=1)  # around CIE's threshold (L* 8)
    dark[:, 1:] = np.arange(24, 48, dtype=np.uint8)[:, None]
    np.testing.assert_allclose(L_from_rgb(dark), rgb_to_lab(dark)[..., 0], atol=1e-3)
    assert L_from_rgb(ALL_RGB_SAMPLE.reshape(4, 25_000, 3)).shape == (4, 25_000)


def test_uint8_round_trip_within_one_level():
    back = lab_to_rgb_uint8(rgb_to_lab(ALL_RGB_SAMPLE))
    assert np.abs(back.astype(int) - ALL_RGB_SAMPLE.astype(int)).max() <= 1


def test_known_values():
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)  # the textbook sRGB red


@pytest.mark.parametrize("value", [0.0, 37.5, 100.0])
def test_normalisation_round_trips(value):
    assert normalize_L(np.float32(0.0)) == -1 and normalize_L(np.float32(100.0)) == 1
    assert denormalize_L(normalize_L(np.float32(value))) == pytest.approx(value)
    assert denormalize_ab(normalize_ab(np.float32(value - 50))) == pytest.approx(value - 50)


def test_mean_chroma_is_zero_for_grey_and_large_for_colour():
    grey = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 3, axis=2)
    assert mean_chroma(grey) < 0.01
    assert mean_chroma(np.full((4, 4, 3), (255, 0, 0), np.uint8)) > 100


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the kernels and SIMD levels named here are x86's")
def test_lab_bytes_do_not_depend_on_the_cpu_kernels():
    """Shards must be the same bytes on every machine: the conversion may not depend on which BLAS
    kernel or which numpy SIMD level the CPU gets (each sums or rounds in its own way)."""

    def run(**env: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(PROGRAMS / "lab_bytes.py")],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    kernel, simd, default = run()
    older_kernel, _, with_older_blas = run(OPENBLAS_CORETYPE="Prescott")
    assert older_kernel != kernel  # numpy's BLAS really ran another kernel (it may name it Katmai)
    assert with_older_blas == default
    _, lower_simd, with_baseline_simd = run(NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR")
    assert (simd, lower_simd) != ("baseline", "baseline") and lower_simd == "baseline"  # numpy 2.4's names
    assert with_baseline_simd == default


def test_lab_planes_to_rgb8_works_where_numba_can_cache_nowhere(tmp_path):
    """A read-only install and home: numba finds no place for its cache (simulated with its own
    setting, a locator that only serves zip files) and the kernel is compiled in the process."""
    program = (
        "import numpy as np; from colorizer.colorize.lab_kernels import lab_planes_to_rgb8 as f, _rows_to_srgb8 as k;"
        "L = np.full((2, 3), 50.0, np.float32); z = np.zeros_like(L);"
        "print(f(L, z, z)[0, 0].tolist(), k._cache.__class__.__name__)"
    )
    environment = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    done = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[119,", "119,", "119]", "NullCache"]
