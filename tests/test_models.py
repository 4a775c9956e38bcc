import pytest
import torch

from colorizer import fused_blocks
from colorizer.config import PIX2PIX_WIDTHS, ModelConfig
from colorizer.devices import autocast, autocast_dtype, cpu_has_native_bf16
from colorizer.models import (
    ConvBlock,
    ConvTBlock,
    Discriminator,
    FoldedGenerator,
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


def as_designed(generator: Generator, L: torch.Tensor) -> torch.Tensor:
    """The design document's generator written out: each block in its designed order, the decoder
    blocks' outputs joined with the encoder's, the head on the last block's upsampled output."""
    skips, x = [], L
    for block in generator.down:
        x = block.pool(block.act(block.norm(block.conv(x))))
        skips.append(x)
    skips.pop()
    for block in generator.up:
        x = block.up(block.act(block.norm(block.conv(x))))
        x = torch.cat([x, skips.pop()], dim=1) if skips else x
    return torch.tanh(generator.head(x))


@pytest.mark.parametrize("training", [True, False])
def test_generator_is_the_designed_one(training):
    torch.manual_seed(0)
    generator = Generator([4, 8, 8, 8], 32).train(training)
    twin = Generator([4, 8, 8, 8], 32).train(training)
    twin.load_state_dict(generator.state_dict())
    L = torch.rand(3, 1, 32, 32) * 2 - 1
    ours, theirs = generator(L), as_designed(twin, L)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ours)  # a loss that weighs every output differently
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    for (name, p), p_twin in zip(generator.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_twin.grad, rtol=1e-4, atol=1e-4, msg=name)  # grads up to ~100


def trained_looking_generator(widths: list[int], size: int) -> Generator:
    """A generator in eval mode whose BatchNorms hold running statistics and scales a training could
    leave, some scales negative (a folded convolution then flips the channel's sign)."""
    torch.manual_seed(0)
    generator = Generator(widths, size)
    with torch.no_grad():
        for norm in (block.norm for block in [*generator.down, *generator.up]):
            channels = norm.num_features
            norm.running_mean.copy_(torch.randn(channels) * 0.3)
            norm.running_var.copy_(torch.rand(channels) * 2 + 0.1)
            norm.weight.copy_(torch.randn(channels))  # about a third negative
            norm.bias.copy_(torch.randn(channels) * 0.2)
    return generator.eval().to(memory_format=torch.channels_last)


@pytest.fixture(params=["oneDNN", "oneDNN without bf16", "ATen"])
def inference_path(request, monkeypatch):
    """The folded generator on each of its paths: oneDNN's convolutions with their activation; the
    same on a CPU without native bf16 (an AVX2-only EPYC: bf16 goes to ATen); and ATen's (what a
    GPU, or a CPU build without oneDNN, runs)."""
    if not fused_blocks._ONEDNN_DTYPES and request.param != "ATen":
        pytest.skip("this torch has no oneDNN")
    paths = {"oneDNN": {torch.float32, torch.bfloat16}, "oneDNN without bf16": {torch.float32}, "ATen": set()}
    monkeypatch.setattr(fused_blocks, "_ONEDNN_DTYPES", paths[request.param])
    return request.param


@pytest.mark.parametrize("height, width", [(32, 32), (32, 64)])
def test_folded_generator_is_the_generator_in_eval_mode(height, width, inference_path):
    generator = trained_looking_generator([4, 8, 8, 8], 32)
    folded = FoldedGenerator(generator)
    L = (torch.rand(3, 1, height, width) * 2 - 1).contiguous(memory_format=torch.channels_last)
    assert fused_blocks.onednn_applies(L) == (inference_path != "ATen")
    with torch.inference_mode():
        torch.testing.assert_close(folded(L), generator(L), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(L), as_designed(generator, L), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_folded_generator_with_bf16_weights_rounds_as_autocast_does(inference_path):
    """Weights kept in bf16 are what autocast casts them to on every call: the same outputs, bit for
    bit; and about what the unfolded generator gives under autocast (bf16's rounding, in other places)."""
    if inference_path == "oneDNN" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: oneDNN has no bf16 convolutions for it (colorize takes ATen's)")
    generator = trained_looking_generator([8, 16, 16, 16], 32)
    L = (torch.rand(4, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_blocks.onednn_applies(L) == (inference_path == "oneDNN")
        cast_per_call = FoldedGenerator(generator)(L)
        kept_in_bf16 = FoldedGenerator(generator, torch.bfloat16)
        assert {conv.weight.dtype for conv in [*kept_in_bf16.down, *kept_in_bf16.up]} == {torch.bfloat16}
        assert kept_in_bf16.head.weight.dtype == torch.float32
        assert torch.equal(kept_in_bf16(L), cast_per_call)
        unfolded = generator(L)
    assert cast_per_call.dtype == torch.bfloat16
    torch.testing.assert_close(cast_per_call.float(), unfolded.float(), rtol=0, atol=0.05)


def test_folded_generator_on_this_cpu_as_colorize_runs_it():
    """No path forced: the precision colorize picks here (bf16 where the CPU has it natively, else
    fp32, as on an AVX2-only CPU or under COLORIZER_CPU_BF16=0) and the convolutions that follow
    from it run and predict what the unfolded generator does."""
    generator = trained_looking_generator([8, 16, 16, 16], 32)
    dtype = autocast_dtype("auto", torch.device("cpu"))
    assert (dtype == torch.bfloat16) == cpu_has_native_bf16()
    L = (torch.rand(4, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        assert fused_blocks.onednn_applies(L) == bool(fused_blocks._ONEDNN_DTYPES)
        folded = FoldedGenerator(generator, dtype)(L)
        unfolded = generator(L)
    tolerance = 0.05 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(folded.float(), unfolded.float(), rtol=0, atol=tolerance)


def test_cpu_bf16_can_be_hidden(monkeypatch):
    """COLORIZER_CPU_BF16=0: every CPU answers as an AVX2-only one does (fp32, no oneDNN bf16)."""
    cpu_has_native_bf16.cache_clear()
    monkeypatch.setenv("COLORIZER_CPU_BF16", "0")
    try:
        assert not cpu_has_native_bf16()
        assert autocast_dtype("auto", torch.device("cpu")) is None
    finally:
        cpu_has_native_bf16.cache_clear()


@pytest.mark.skipif(not fused_blocks._ONEDNN_DTYPES, reason="this torch has no oneDNN")
def test_folded_generator_packs_its_weights_for_each_new_batch_shape():
    """oneDNN's weight layouts are made for one input shape and kept: batches of other shapes (a run's
    last, partial one; a batch split in halves after an out-of-memory) get their own and still
    predict what the generator does, and a shape seen again is not packed again."""
    generator = trained_looking_generator([4, 8, 8, 8], 32)
    folded = FoldedGenerator(generator)
    first_conv = folded.down[0]
    packs = []
    with torch.inference_mode():
        for batch in (3, 2, 2, 3):
            L = (torch.rand(batch, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(folded(L), generator(L), rtol=1e-5, atol=1e-5)
            key, packed = first_conv.__dict__["_onednn_packed"]
            assert key == ((batch, 1, 32, 32), torch.float32) and packed.is_mkldnn
            packs.append(packed)
    assert packs[2] is packs[1]  # the second batch of 2 took the first one's
    assert packs[3] is not packs[0]  # one shape at a time: 3 again was packed again


def test_folding_needs_the_running_statistics_of_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        FoldedGenerator(Generator([4, 8], 16).train())
