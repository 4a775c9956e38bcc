"""The folded generator colorize runs (`colorize.inference`, `colorize.onednn`) against the generator
as trained, on each of its paths; the paths are chosen through the public switches."""

import numpy as np
import pytest
import torch

from colorizer import fast
from colorizer.colorize.inference import FoldedGenerator, ModelRunner, prediction_error
from colorizer.colorize.onednn import onednn_applies, onednn_dtypes
from colorizer.devices import autocast, autocast_dtype, cpu_has_native_bf16
from colorizer.training.checkpoints import PRETRAINED_DIR
from colorizer.training.models import Generator


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
    """The folded generator on each of its paths, chosen by the public switches: oneDNN's convolutions
    with their activation; the same on a CPU without native bf16 (COLORIZER_CPU_BF16=0, as an
    AVX2-only EPYC: bf16 goes to ATen); and ATen's (COLORIZER_FAST=0's oneDNN-free convolutions, what
    a GPU or a CPU build without oneDNN runs)."""
    if request.param == "oneDNN without bf16":
        monkeypatch.setenv("COLORIZER_CPU_BF16", "0")
    cpu_has_native_bf16.cache_clear()
    with fast.enabled_as(request.param != "ATen"):
        if request.param != "ATen" and not onednn_dtypes():
            pytest.skip("this torch has no oneDNN")
        yield request.param
    cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("height, width", [(32, 32), (32, 64)])
def test_folded_generator_is_the_generator_in_eval_mode(height, width, inference_path):
    generator = trained_looking_generator([4, 8, 8, 8], 32)
    folded = FoldedGenerator(generator)
    L = (torch.rand(3, 1, height, width) * 2 - 1).contiguous(memory_format=torch.channels_last)
    assert onednn_applies(L) == (inference_path != "ATen")
    with torch.inference_mode():
        torch.testing.assert_close(folded(L), generator(L), rtol=1e-5, atol=1e-5)
        with fast.enabled_as(False):
            designed = generator(L)
        torch.testing.assert_close(folded(L), designed, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_folded_generator_with_bf16_weights_rounds_as_autocast_does(inference_path):
    """Weights kept in bf16 are what autocast casts them to on every call: the same outputs, bit for
    bit; and about what the unfolded generator gives under autocast (bf16's rounding, in other places)."""
    if inference_path == "oneDNN" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: oneDNN has no bf16 convolutions for it (colorize takes ATen's)")
    generator = trained_looking_generator([8, 16, 16, 16], 32)
    L = (torch.rand(4, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_applies(L) == (inference_path == "oneDNN")
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
        assert onednn_applies(L) == bool(onednn_dtypes())
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


@fast.enabled_as(True)
def test_folded_generator_packs_its_weights_for_each_new_batch_shape():
    """oneDNN's weight layouts are made for one input shape and kept: batches of other shapes (a run's
    last, partial one; a batch split in halves after an out-of-memory) get their own and still
    predict what the generator does, and a shape seen again is not packed again."""
    if not onednn_dtypes():
        pytest.skip("this torch has no oneDNN")
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


def test_model_runner_predicts_alike_with_the_fast_paths_off():
    """COLORIZER_FAST=0's runner (the generator as trained, no folding, no oneDNN) predicts what the
    default one does, to the rounding of the precision this CPU runs in."""
    L = (torch.rand(2, 1, 128, 128) * 2 - 1).numpy()
    fast_ab = ModelRunner(PRETRAINED_DIR, device="cpu").predict(L)
    with fast.enabled_as(False):
        plain_runner = ModelRunner(PRETRAINED_DIR, device="cpu")
        assert not isinstance(plain_runner.generator, FoldedGenerator)
        plain_ab = plain_runner.predict(L)
    tolerance = 2.0 if plain_runner.amp_dtype == torch.bfloat16 else 0.01  # a*b* units
    np.testing.assert_allclose(fast_ab, plain_ab, rtol=0, atol=tolerance)


def test_one_prediction_check_for_every_engine():
    assert prediction_error(np.zeros((2, 4, 4), np.float32)) is None
    assert prediction_error(RuntimeError("out of memory")) == "model error: out of memory"
    assert "not finite" in prediction_error(np.array([0.0, np.nan]))
    assert "not finite" in prediction_error(np.array([np.inf]))


def test_the_onednn_probe_passes_under_bf16_autocast_and_draws_no_random_numbers():
    """The probe runs at the first folded forward, inside the caller's autocast (bf16 where the CPU
    has it): it must still find the ops as they are, and leave torch's generator where it was."""
    from colorizer.colorize import onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    state = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        onednn._probe_onednn()  # raises if it fails
    assert torch.equal(torch.get_rng_state(), state)
