"""The GAN losses against hand-computed BCE and L1, and the steps' isolation: a discriminator step
never moves G, a generator step never moves D."""

import math

import pytest
import torch

from colorizer.config import ModelConfig, TrainConfig
from colorizer.training.gan import build_gan
from colorizer.training.losses import d_losses, g_losses, generator_loss


def test_d_and_g_losses_by_hand():
    # sigmoid(0) = 0.5: BCE is ln 2 against either target; sigmoid(ln 3) = 0.75: -ln 0.75 against 1, -ln 0.25 against 0
    logits = torch.tensor([[[[0.0, math.log(3)]]], [[[0.0, 0.0]]]])  # (B=2, 1, 1, 2)
    d = d_losses(real_logits=logits, fake_logits=logits, per_image=True)
    assert d["d_real"].tolist() == pytest.approx([(math.log(2) - math.log(0.75)) / 2, math.log(2)])
    assert d["d_fake"].tolist() == pytest.approx([(math.log(2) - math.log(0.25)) / 2, math.log(2)])
    assert d_losses(logits, logits)["d_real"].item() == pytest.approx(
        (math.log(2) * 3 - math.log(0.75)) / 4
    )  # the mean over every patch of the batch

    fake_ab, ab = torch.zeros(2, 2, 1, 2), torch.zeros(2, 2, 1, 2)
    ab[0] = 0.5
    g = g_losses(logits, fake_ab, ab, per_image=True)
    assert g["g_l1"].tolist() == [0.5, 0.0]
    assert g["g_gan"].tolist() == pytest.approx(d["d_real"].tolist())  # G wants D to say 'real'
    assert generator_loss(g, 100.0).tolist() == pytest.approx([d["d_real"][0].item() + 50, math.log(2)])
    warmup = g_losses(None, fake_ab, ab)  # L1 warm-up: no discriminator
    assert warmup["g_gan"].item() == 0.0 and warmup["g_l1"].item() == pytest.approx(0.25)


@pytest.fixture
def gan():
    torch.manual_seed(0)
    cfg = TrainConfig(precision="fp32", channels_last=False, batch_size=4)
    return build_gan(
        ModelConfig(generator_widths=[8, 16, 16], discriminator_widths=[8, 16]), cfg, 16, torch.device("cpu")
    )


def weights(module):
    return [p.detach().clone() for p in module.parameters()]


def batch():
    torch.manual_seed(1)
    return torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 2, 16, 16) * 2 - 1


def test_d_step_moves_d_only_and_g_step_moves_g_only(gan):
    L, ab = batch()
    g_before, d_before = weights(gan.generator), weights(gan.discriminator)
    fake_ab = gan.generator(L)
    gan.d_step(L, ab, fake_ab)
    assert all(torch.equal(a, b) for a, b in zip(g_before, weights(gan.generator), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, weights(gan.discriminator), strict=True))

    d_after_d_step = weights(gan.discriminator)
    gan.g_step(L, ab, fake_ab, adversarial=True)
    assert all(torch.equal(a, b) for a, b in zip(d_after_d_step, weights(gan.discriminator), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, weights(gan.generator), strict=True))


@pytest.mark.filterwarnings("ignore:precision bf16")  # an AVX2-only CPU: slow fallback kernels, same values
def test_the_discriminator_sees_under_autocast_what_the_joined_fp32_image_would_give():
    """judge() joins L and a*b* in bf16 under autocast: the values, logits and gradient of the fp32
    join that autocast would cast for the first convolution, with fewer copies."""
    torch.manual_seed(0)
    cfg = TrainConfig(precision="bf16", channels_last=True, batch_size=4)
    gan = build_gan(
        ModelConfig(generator_widths=[8, 16, 16], discriminator_widths=[8, 16]), cfg, 16, torch.device("cpu")
    )
    L, ab = (gan.to_device(t) for t in batch())
    results = []
    for join in (gan.judge, lambda L, ab: gan.discriminator(torch.cat([L, ab.float()], dim=1)).float()):
        fake_ab = ab.to(torch.bfloat16).requires_grad_(True)  # the generator's output under autocast
        with gan.autocast():
            logits = join(L, fake_ab)
        logits.sum().backward()
        results.append((logits, fake_ab.grad))
    (ours, our_grad), (designed, designed_grad) = results
    assert torch.equal(ours, designed)
    assert our_grad.dtype == designed_grad.dtype == torch.bfloat16
    assert torch.equal(our_grad, designed_grad)
