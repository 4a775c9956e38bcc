"""The blocks' fast paths against their plain ones, the design document's order, through the switch
(`colorizer.fast`): ConvBlock's conv -> BatchNorm -> LeakyReLU -> MaxPool (`pooled_norm_act`) and
ConvTBlock's transposed conv -> BatchNorm -> ReLU -> Upsample, then the UNet's concatenation
(`upsampled_norm_act`), on both of the fast path's kernels: the fused ones (training on a
channels-last CPU tensor of even size) and ATen's (anything else)."""

import os
import subprocess
import sys

import pytest
import torch

from colorizer import fast
from colorizer.colorize.onednn import upsampled_cat
from colorizer.training import fused_blocks
from colorizer.training.fused_blocks import fused_kernels_apply
from colorizer.training.models import ConvTBlock
from tests.helpers import PROGRAMS, as_designed, twin_blocks


def _inductor_finds_a_compiler() -> bool:
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or whatever this platform raises instead
        return False
    return True


# where there is none, training runs on ATen's kernels (tested here too) and the fused ones cannot run
needs_compiler = pytest.mark.skipif(not _inductor_finds_a_compiler(), reason="no C++ compiler for torch.compile")


def with_compiler_marks(paths: dict) -> list:
    return [pytest.param(path, marks=needs_compiler) if path == "fused kernels" else path for path in paths]


# the input that takes each path: (memory format, height, width)
PATHS = {
    "fused kernels": (torch.channels_last, 16, 16),
    "ATen kernels (contiguous)": (torch.contiguous_format, 16, 16),
    "ATen kernels (odd size)": (torch.channels_last, 15, 17),
}


@pytest.fixture(autouse=True)
def fused_kernels_at_any_size(monkeypatch):
    """The fast paths under test, whatever COLORIZER_FAST says (the plain ones are the reference), on
    small tensors here, where the library leaves tensors under a million elements to ATen."""
    monkeypatch.setattr(fused_blocks, "FUSED_MIN_ELEMENTS", 0)
    with fast.enabled_as(True):
        yield


@needs_compiler
def test_the_paths_are_the_ones_named(monkeypatch):
    for path, (memory_format, height, width) in PATHS.items():
        x = torch.randn(2, 6, height, width).contiguous(memory_format=memory_format)
        assert fused_kernels_apply(x) == (path == "fused kernels"), path
    monkeypatch.undo()  # the library's own size rule: a million elements and up
    assert fused_kernels_apply(torch.zeros(1, 16, 256, 256).contiguous(memory_format=torch.channels_last))
    assert not fused_kernels_apply(torch.zeros(1, 16, 256, 254).contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("path", with_compiler_marks(PATHS))
@pytest.mark.parametrize("training", [True, False])
def test_pooling_first_is_the_designed_block(path, training):
    memory_format, height, width = PATHS[path]
    block, reference = twin_blocks(0, memory_format)
    block.train(training)
    reference.train(training)
    for _ in range(3):  # the running statistics move alike, step after step
        x = torch.randn(4, 3, height, width).contiguous(memory_format=memory_format).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        ours, theirs = block(x), as_designed(reference, x_ref)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(ours)  # a loss that weighs every output differently
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        for (name, p), p_ref in zip(block.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    for name, buffer in block.norm.named_buffers():
        torch.testing.assert_close(buffer, dict(reference.norm.named_buffers())[name], msg=name)
    assert int(block.norm.num_batches_tracked) == (3 if training else 0)


@needs_compiler
def test_ties_in_a_window_send_the_gradient_where_the_designed_max_pool_does():
    """Equal values in a window (common in bf16): the first in row-major order takes the gradient."""
    block, reference = twin_blocks(2, torch.channels_last)
    with torch.no_grad():  # whole-number weights and inputs: whole-number conv outputs, many of them equal
        block.conv.weight.copy_(torch.randint(-1, 2, block.conv.weight.shape))
        reference.conv.weight.copy_(block.conv.weight)
    x = torch.randint(-1, 2, (2, 3, 8, 8)).float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    conv_out = block.conv(x).detach()
    windows = conv_out.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (B, C, H/2, W/2, 4)
    assert (windows.max(-1).values.unsqueeze(-1) == windows).sum(-1).gt(1).float().mean() > 0.1  # ties abound
    weights = torch.randn(2, 6, 4, 4)
    (block(x) * weights).sum().backward()
    (as_designed(reference, x_ref) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(block.conv.weight.grad, reference.conv.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", with_compiler_marks(PATHS))
def test_pooling_first_under_bf16_autocast_rounds_about_as_the_designed_order(path):
    memory_format, height, width = PATHS[path]
    x = torch.randn(4, 3, 2 * height, 2 * width).contiguous(memory_format=memory_format)
    exact = as_designed(twin_blocks(1, memory_format)[0], x).detach()  # fp32
    block, reference = twin_blocks(1, memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = block(x), as_designed(reference, x)
    assert ours.dtype == theirs.dtype == torch.bfloat16  # the next convolution takes bf16 either way
    error, designed_error = ((y.float() - exact).abs().mean() for y in (ours, theirs))
    assert error < 1.5 * designed_error  # measured 1.0-1.3x: the batch statistics are rounded to bf16 too


def twin_up_blocks(seed: int, memory_format: torch.memory_format) -> tuple[ConvTBlock, ConvTBlock]:
    torch.manual_seed(seed)
    block = ConvTBlock(6, 5)
    with torch.no_grad():  # trained scales and shifts, two of them negative
        block.norm.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 1.0, -2.0]))
        block.norm.bias.copy_(torch.linspace(-0.5, 0.5, 5))
    twin = ConvTBlock(6, 5)
    twin.load_state_dict(block.state_dict())
    return block.to(memory_format=memory_format), twin.to(memory_format=memory_format)


UP_PATHS = {"fused kernels": torch.channels_last, "ATen kernels": torch.contiguous_format}


@pytest.mark.parametrize("path", with_compiler_marks(UP_PATHS))
@pytest.mark.parametrize("with_skip", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_upsampling_block_and_its_concatenation_are_the_designed_ones(path, with_skip, training):
    memory_format = UP_PATHS[path]
    block, reference = twin_up_blocks(0, memory_format)
    block.train(training)
    reference.train(training)
    for _ in range(3):
        x = torch.randn(4, 6, 8, 8).contiguous(memory_format=memory_format).requires_grad_(True)
        assert fused_kernels_apply(block.conv(x)) == (path == "fused kernels")
        skip = torch.randn(4, 3, 16, 16).contiguous(memory_format=memory_format).requires_grad_(True)
        skip = skip if with_skip else None
        x_ref = x.detach().clone().requires_grad_(True)
        skip_ref = skip.detach().clone().requires_grad_(True) if with_skip else None
        ours, theirs = block(x, skip), as_designed(reference, x_ref, skip_ref)
        assert ours.shape == (4, 5 + 3 * with_skip, 16, 16)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(ours)
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        if with_skip:
            torch.testing.assert_close(skip.grad, skip_ref.grad)
        for (name, p), p_ref in zip(block.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    for name, buffer in block.norm.named_buffers():
        torch.testing.assert_close(buffer, dict(reference.norm.named_buffers())[name], msg=name)


@pytest.mark.parametrize("path", with_compiler_marks(UP_PATHS))
@pytest.mark.parametrize("training", [True, False])
def test_last_block_before_upsampling_then_the_upsampled_head_is_the_designed_pair(path, training):
    """The generator's last ConvTBlock and its head: conv -> BatchNorm -> ReLU, then the head's
    convolution upsampling as it goes, against the block's designed upsampling and the head after it."""
    memory_format = UP_PATHS[path]
    block, reference = twin_up_blocks(0, memory_format)
    torch.manual_seed(1)
    head = torch.nn.Conv2d(5, 2, 3, padding=1).to(memory_format=memory_format)
    block.train(training)
    reference.train(training)
    for _ in range(3):
        x = torch.randn(4, 6, 8, 8).contiguous(memory_format=memory_format).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        normed = block.before_upsampling(x)
        assert normed.shape == (4, 5, 8, 8) and fused_kernels_apply(normed) == (path == "fused kernels")
        ours = fused_blocks.upsampled_conv(normed, head)
        theirs = head(as_designed(reference, x_ref))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(ours)
        (ours * weights).sum().backward()
        head_grads = [p.grad.clone() for p in head.parameters()]
        head.zero_grad()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        for ours_grad, p in zip(head_grads, head.parameters(), strict=True):
            torch.testing.assert_close(ours_grad, p.grad, rtol=1e-4, atol=1e-4)
        head.zero_grad()
        for (name, p), p_ref in zip(block.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    for name, buffer in block.norm.named_buffers():
        torch.testing.assert_close(buffer, dict(reference.norm.named_buffers())[name], msg=name)


@pytest.mark.parametrize(("height", "width", "bias"), [(8, 8, True), (5, 7, False), (1, 1, True)])
def test_upsampled_conv_is_the_convolution_of_the_upsampled_image(height, width, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=bias).double()
    x = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    ours = fused_blocks.upsampled_conv(x, conv)
    theirs = conv(torch.nn.functional.interpolate(x_ref, scale_factor=2, mode="nearest"))
    assert ours.shape == (2, 4, 2 * height, 2 * width)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    ours_grads = [x.grad] + [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    (theirs * weights).sum().backward()
    for a, b in zip(ours_grads, [x_ref.grad] + [p.grad for p in conv.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="3x3 convolution of stride 1 and padding 1"):
        fused_blocks.upsampled_conv(x, torch.nn.Conv2d(3, 4, 3, padding=0))


@pytest.mark.parametrize("path", with_compiler_marks(UP_PATHS))
def test_upsampling_block_under_bf16_autocast_rounds_about_as_the_designed_order(path):
    memory_format = UP_PATHS[path]
    x = torch.randn(8, 6, 16, 16).contiguous(memory_format=memory_format)
    skip = torch.randn(8, 3, 32, 32).contiguous(memory_format=memory_format)
    exact = as_designed(twin_up_blocks(1, memory_format)[0], x, skip).detach()  # fp32
    block, reference = twin_up_blocks(1, memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        skip_bf16 = skip.to(torch.bfloat16)  # as the encoder hands it over under autocast
        ours, theirs = block(x, skip_bf16), as_designed(reference, x, skip_bf16)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    error, designed_error = ((y.float() - exact).abs().mean() for y in (ours, theirs))
    assert error < 1.5 * designed_error


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_batch_statistics_are_batchnorms_and_do_not_cancel(dtype):
    torch.manual_seed(0)
    # channel 0: a mean 2000x its spread (a sum of squares of x itself would lose the variance to
    # cancellation), 1: an ordinary one, 2: a constant
    spread, mean = torch.tensor([0.5, 1.0, 0.0]).view(1, 3, 1, 1), torch.tensor([1000.0, -0.3, 7.0]).view(1, 3, 1, 1)
    x = (torch.randn(2, 3, 64, 64) * spread + mean).to(dtype).contiguous(memory_format=torch.channels_last)
    exact = x.double()
    ours_running, aten_running = (torch.zeros(3), torch.ones(3)), (torch.zeros(3), torch.ones(3))
    for _ in range(2):
        mean, var = fused_blocks._fused_batch_statistics(x, *ours_running, 0.1)
        torch.batch_norm_update_stats(x, *aten_running, 0.1)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean.double(), exact.mean((0, 2, 3)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), exact.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-7)
    for ours, aten in zip(ours_running, aten_running, strict=True):
        torch.testing.assert_close(ours, aten, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 64, 64, 8), (3, 50, 250, 64), (1, 2, 2, 1), (2, 256, 256, 3)])
def test_channel_sums_in_chunks_are_the_sums(shape):
    """Any pixel count, a power of two or not (an odd batch of 50x250 pixels: chunks of what divides it)."""
    torch.manual_seed(0)
    values = torch.randn(*shape, dtype=torch.float64)
    total, squares = fused_blocks._channel_sums(values, values * values)
    torch.testing.assert_close(total, values.sum((0, 1, 2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(squares, (values * values).sum((0, 1, 2)), rtol=1e-12, atol=1e-12)


def test_without_a_cxx_compiler_training_warns_once_and_goes_on_on_aten_kernels(tmp_path):
    """No compiler Inductor can use (a fresh compile cache, so nothing compiled before helps): one
    warning, and the steps still compute the designed block (on tensors large enough to be fused)."""
    environment = os.environ | {
        "COLORIZER_FAST": "1",
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),
    }
    done = subprocess.run(
        [sys.executable, str(PROGRAMS / "blocks_without_a_compiler.py")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("cannot build the fused BatchNorm/pooling kernels") == 1, done.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_upsampled_cat_is_the_upsample_then_the_concatenation(dtype, memory_format):
    x = torch.randn(2, 5, 3, 4).to(dtype).contiguous(memory_format=memory_format)
    skip = torch.randn(2, 3, 6, 8).to(dtype).contiguous(memory_format=memory_format)
    ours = upsampled_cat(x, skip)
    theirs = torch.cat([torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1)
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, theirs)
    narrow_skip = skip.to(torch.bfloat16)
    mixed = upsampled_cat(x.float(), narrow_skip)  # as torch.cat, to the wider dtype
    mixed_theirs = torch.cat([torch.nn.functional.interpolate(x.float(), scale_factor=2), narrow_skip], dim=1)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, mixed_theirs)
