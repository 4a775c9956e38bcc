import numpy as np
import pytest

from colorizer.training.metrics import colourfulness, hue_agreement, l1_lab_units, psnr, ssim


def test_colourfulness_by_hand():
    grey = np.full((4, 4, 3), 128, np.uint8)
    assert colourfulness(grey) == 0.0
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    # rg = 255, yb = 127.5 everywhere: no spread, so CF = 0.3 * sqrt(255^2 + 127.5^2)
    assert colourfulness(red) == pytest.approx(0.3 * np.hypot(255, 127.5))
    half = np.zeros((1, 2, 3), np.uint8)
    half[0, 0] = (200, 0, 0)  # rg = [200, 0], yb = [100, 0]: std 100 and 50, means 100 and 50
    assert colourfulness(half) == pytest.approx(np.hypot(100, 50) + 0.3 * np.hypot(100, 50))


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # MSE = 256 / 48
    assert psnr(b, a) == pytest.approx(10 * np.log10(255**2 / (256 / 48)))
    assert psnr(a, a) == 100.0  # capped, not inf


def test_ssim_is_one_for_identical_and_lower_otherwise():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(255 - a, a) < 0.5


def test_l1_in_lab_units():
    assert l1_lab_units(0.5) == pytest.approx(55.0)  # a*b* are scaled by 110 into [-1, 1]


def test_hue_agreement_by_hand():
    from skimage.color import rgb2lab

    red, grey, blue, orange = (255, 0, 0), (128, 128, 128), (0, 0, 255), (255, 128, 0)
    hue = {c: np.degrees(np.arctan2(*rgb2lab(np.array([[c]], np.uint8))[0, 0, [2, 1]])) for c in (red, blue, orange)}
    assert abs(hue[orange] - hue[red]) < 45 < abs(hue[blue] - hue[red])  # the premise of the cases below
    true = np.array([[red, red, red, red, grey]], np.uint8)
    pred = np.array([[red, grey, blue, orange, blue]], np.uint8)
    # 4 colourful pixels (the grey one has chroma 0 and does not count): red and orange agree, grey and blue don't
    assert hue_agreement(pred, true) == pytest.approx(0.5)
    assert hue_agreement(true, true) == 1.0
    assert hue_agreement(np.full_like(true, 128), true) == 0.0  # the grey baseline
    assert np.isnan(hue_agreement(true, np.full_like(true, 90)))  # nothing colourful to agree with


def test_hue_agreement_of_a_random_hue_is_about_a_quarter():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pred = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert 0.18 < hue_agreement(pred, true) < 0.32
