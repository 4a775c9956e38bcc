import numpy as np
import pytest
import torch

from colorizer.metrics import adversarial_bce_per_image, colourfulness, gan_loss, l1_lab_units, l1_per_image, psnr, ssim


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


def test_l1_and_gan_loss_by_hand():
    pred, true = torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2)
    true[0] = 0.5
    assert l1_per_image(pred, true).tolist() == [0.5, 0.0]
    assert l1_lab_units(0.5) == pytest.approx(55.0)
    logits = torch.zeros(2, 1, 2, 2)  # sigmoid 0.5: BCE against 1 is ln 2
    bce = adversarial_bce_per_image(logits)
    assert bce.tolist() == pytest.approx([np.log(2)] * 2)
    assert gan_loss(bce, l1_per_image(pred, true)).tolist() == pytest.approx([np.log(2) + 50, np.log(2)])
