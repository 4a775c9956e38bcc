"""model.head: bins (Zhang et al. 2016) against values computed by hand from the paper's formulas."""

import math

import numpy as np
import pytest
import torch

from colorizer.colorize.inference import FoldedGenerator
from colorizer.data.lab import AB_SCALE
from colorizer.training import color_bins
from colorizer.training.color_bins import (
    annealed_mean,
    bin_counts,
    bin_set,
    bins_loss,
    rebalancing_weights,
    soft_encode,
)
from colorizer.training.models import Generator


def lab_units(*pairs):
    """a*b* pairs given in Lab units, in the model's scale."""
    return torch.tensor(pairs, dtype=torch.float32) / AB_SCALE


def test_the_bin_set_is_the_10_unit_cells_the_photos_reach():
    # a* b* in Lab units, one image of 2x2 pixels: (4, -3) and (6, 1) round to different cells
    ab = np.array([[[4.0, 6.0], [-21.0, 4.0]], [[-3.0, 1.0], [38.0, -4.0]]], dtype=np.float32)[None] / AB_SCALE
    counts = bin_counts([ab, ab[:, :, :1, :1]])  # chunks add up
    assert counts == {(0, 0): 3, (1, 0): 1, (-2, 4): 1}
    centres, prior = bin_set(counts)
    torch.testing.assert_close(centres, lab_units((-20, 40), (0, 0), (10, 0)))  # sorted by (a*, b*)
    torch.testing.assert_close(prior, torch.tensor([0.2, 0.6, 0.2]))


def test_soft_encoding_spreads_a_colour_over_its_five_nearest_bins_with_a_gaussian_of_5():
    centres = lab_units((0, 0), (10, 0), (0, 10), (10, 10), (20, 0), (-10, 0))
    indices, weights = soft_encode(lab_units((2, 0)), centres)
    # squared distances from (2, 0): 4, 64, 104, 164, 324, 144; the farthest, (20, 0), is left out
    assert indices.tolist() == [[0, 1, 2, 5, 3]]
    expected = np.exp(-np.array([4, 64, 104, 144, 164]) / (2 * 5.0**2))
    np.testing.assert_allclose(weights[0].numpy(), expected / expected.sum(), rtol=1e-5)


def test_rebalancing_weights_follow_the_papers_equation_4():
    # two bins 100 units apart (the Gaussian does not mix them); p = (0.9, 0.1), lambda = 0.5, Q = 2:
    # w ~ 1 / (0.5 p + 0.25) = (1 / 0.7, 1 / 0.3), scaled so that sum p w = 1
    weights = rebalancing_weights(lab_units((0, 0), (100, 0)), torch.tensor([0.9, 0.1]))
    raw = np.array([1 / 0.7, 1 / 0.3])
    np.testing.assert_allclose(weights.numpy(), raw / (0.9 * raw[0] + 0.1 * raw[1]), rtol=1e-5)
    uniform = rebalancing_weights(lab_units((0, 0), (100, 0), (0, 100)), torch.full((3,), 1 / 3))
    np.testing.assert_allclose(uniform.numpy(), 1.0, rtol=1e-5)


def test_annealed_mean_at_t_038_sits_between_the_mean_and_the_mode():
    centres = lab_units((0, 0), (50, 0))
    logits = torch.log(torch.tensor([0.7, 0.3])).reshape(1, 2, 1, 1)
    # f_T(z) = z^(1/T) / sum z^(1/T): 0.7^2.6316 = 0.39117, 0.3^2.6316 = 0.04208
    share = 0.39117 / (0.39117 + 0.04208)
    annealed = annealed_mean(logits, centres)[0, :, 0, 0] * AB_SCALE
    torch.testing.assert_close(annealed, torch.tensor([50 * (1 - share), 0.0]), atol=2e-3, rtol=0)
    mean = annealed_mean(logits, centres, temperature=1.0)[0, :, 0, 0] * AB_SCALE
    torch.testing.assert_close(mean, torch.tensor([15.0, 0.0]), atol=1e-4, rtol=0)


def test_the_loss_is_the_rebalanced_cross_entropy_against_the_soft_targets():
    centres = lab_units((0, 0), (10, 0), (0, 10), (10, 10), (20, 0), (-10, 0))
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5]).reshape(1, 6, 1, 1)
    ab = lab_units((2, 0)).reshape(1, 2, 1, 1)
    indices, soft = soft_encode(lab_units((2, 0)), centres)
    log_p = torch.log_softmax(logits.flatten(), dim=0)
    expected = -sum(float(soft[0, k]) * float(log_p[indices[0, k]]) for k in range(5)) * 1.0  # nearest: bin 0
    assert float(bins_loss(logits, ab, centres, weights)) == pytest.approx(expected, rel=1e-5)
    # targets at twice the logits' size are compared as 2x2 means: four pixels averaging (2, 0)
    four = lab_units((0, 0), (4, 0), (1, 1), (3, -1)).T.reshape(1, 2, 2, 2)
    assert float(bins_loss(logits, four, centres, weights)) == pytest.approx(expected, rel=1e-5)


def test_a_bins_generator_classifies_at_half_size_and_reads_out_a_b_at_full_size():
    generator = Generator([4, 8, 8], 32, bins=6).eval()
    generator.bin_centres.copy_(lab_units((0, 0), (10, 0), (0, 10), (10, 10), (20, 0), (-10, 0)))
    L = torch.rand(2, 1, 32, 48) * 2 - 1
    ab, logits = generator(L, with_logits=True)
    assert ab.shape == (2, 2, 32, 48) and logits.shape == (2, 6, 16, 24)
    expected = torch.nn.functional.interpolate(
        annealed_mean(logits, generator.bin_centres), scale_factor=2, mode="bilinear"
    )
    torch.testing.assert_close(ab, expected)
    # within the bins' hull, and the folded generator (what colorize runs) computes the same
    assert ab[:, 0].min() >= -10 / AB_SCALE - 1e-6 and ab[:, 0].max() <= 20 / AB_SCALE + 1e-6
    with torch.no_grad():
        torch.testing.assert_close(FoldedGenerator(generator)(L), generator(L), atol=1e-5, rtol=1e-4)


def test_constants_are_the_papers():
    assert (color_bins.GRID, color_bins.SIGMA, color_bins.NEIGHBOURS) == (10.0, 5.0, 5)
    assert (color_bins.REBALANCE, color_bins.TEMPERATURE) == (0.5, 0.38)
    assert math.isclose(1 / color_bins.TEMPERATURE, 2.6316, rel_tol=1e-4)
