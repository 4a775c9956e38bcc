import pytest
import torch

from colorizer import fast
from colorizer.config import PIX2PIX_WIDTHS, ModelConfig
from colorizer.training.models import (
    ConvBlock,
    ConvTBlock,
    Discriminator,
    Generator,
    build_discriminator,
    build_generator,
    count_parameters,
    generator_depth,
)


def conv_bn(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + 2 * c_out  # 3x3 weights (no bias: BatchNorm follows) + BN scale and shift


def expected_generator_parameters(widths: list[int]) -> int:
    down = sum(conv_bn(c_in, c_out) for c_in, c_out in zip([1] + widths[:-1], widths, strict=True))
    outs = list(reversed(widths[:-1])) + [widths[0]]
    ins = [widths[-1]] + [2 * c for c in outs[:-1]]
    up = sum(conv_bn(c_in, c_out) for c_in, c_out in zip(ins, outs, strict=True))
    return down + up + 9 * widths[0] * 2 + 2


def test_blocks_halve_and_double():
    x = torch.randn(2, 5, 16, 16)
    assert ConvBlock(5, 7)(x).shape == (2, 7, 8, 8)
    assert ConvTBlock(5, 7)(x).shape == (2, 7, 32, 32)


def test_design_document_shapes_at_256():
    generator, discriminator = Generator(PIX2PIX_WIDTHS, 256), Discriminator([64, 128, 256, 512])
    L = torch.randn(2, 1, 256, 256)
    ab = generator(L)
    assert ab.shape == (2, 2, 256, 256) and ab.abs().max() <= 1
    assert discriminator(torch.cat([L, ab], dim=1)).shape == (2, 1, 16, 16)  # one logit per 16x16 patch


def test_seed_configuration_parameter_counts():
    generator, discriminator = Generator(PIX2PIX_WIDTHS, 256), Discriminator([64, 128, 256, 512])
    assert count_parameters(generator) == expected_generator_parameters(PIX2PIX_WIDTHS) == 30_683_714
    expected_d = sum(conv_bn(a, b) for a, b in [(3, 64), (64, 128), (128, 256), (256, 512)]) + 9 * 512 + 1
    assert count_parameters(discriminator) == expected_d == 1_556_545


def test_default_small_configuration():
    cfg = ModelConfig(width_multiplier=0.25)
    generator, discriminator = build_generator(cfg, 64), build_discriminator(cfg)
    assert generator.widths == [16, 32, 64, 128, 128, 128]  # depth follows the image size: 64 px -> 6 blocks
    ab = generator(torch.randn(3, 1, 64, 64))
    assert ab.shape == (3, 2, 64, 64)
    assert discriminator(torch.randn(3, 3, 64, 64)).shape == (3, 1, 4, 4)
    assert count_parameters(generator) == expected_generator_parameters(generator.widths)


@pytest.mark.parametrize(("size", "depth"), [(32, 5), (64, 6), (256, 8), (512, 8)])
def test_depth_follows_image_size(size, depth):
    assert generator_depth(PIX2PIX_WIDTHS, size) == depth


@pytest.mark.parametrize("module_input", ["generator", "discriminator"])
def test_no_nan_and_a_gradient_on_every_parameter(module_input):
    torch.manual_seed(0)
    if module_input == "generator":
        module, x = Generator([8, 16, 16, 16, 16], 32), torch.randn(4, 1, 32, 32)
    else:
        module, x = Discriminator([8, 16, 16, 16]), torch.randn(4, 3, 32, 32)
    out = module(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_generator_is_fully_convolutional():
    generator = Generator([8, 16, 16], 32).eval()
    assert generator(torch.randn(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_width_multiplier_and_bad_widths():
    assert ModelConfig(width_multiplier=0.5).scaled([64, 3]) == [32, 2]
    with pytest.raises(ValueError):
        ModelConfig(generator_widths=[64, -1])


@pytest.mark.parametrize("training", [True, False])
def test_generator_is_the_designed_one(training):
    """The fast paths (the default) against the plain one, the design document's order, through the
    switch: the same outputs, gradients and running statistics, to rounding."""
    torch.manual_seed(0)
    generator = Generator([4, 8, 8, 8], 32).train(training)
    twin = Generator([4, 8, 8, 8], 32).train(training)
    twin.load_state_dict(generator.state_dict())
    L = torch.rand(3, 1, 32, 32) * 2 - 1
    with fast.enabled_as(True):
        ours = generator(L)
    with fast.enabled_as(False):  # the design document's order, on PyTorch's own kernels
        theirs = twin(L)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ours)  # a loss that weighs every output differently
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    for (name, p), p_twin in zip(generator.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_twin.grad, rtol=1e-4, atol=1e-4, msg=name)  # grads up to ~100
