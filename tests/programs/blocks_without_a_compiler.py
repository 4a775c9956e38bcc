"""Run by tests/test_fused_blocks.py with a C++ compiler Inductor can't use: training steps of a
ConvBlock large enough for the fused kernels still compute the designed block, on ATen's kernels."""

import copy
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: `tests` as a package
from colorizer.training import fused_blocks  # noqa: E402
from tests.helpers import as_designed, twin_blocks  # noqa: E402

logging.basicConfig()
block, reference = twin_blocks(0, torch.channels_last)
exact = copy.deepcopy(reference).double()
for _ in range(2):
    x = torch.randn(4, 3, 256, 256).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ours, theirs, truth = block(x), as_designed(reference, x_ref), as_designed(exact, x.detach().double())
    # float32 statistics of 262k pixels a channel: ATen's (the designed block's) are ~3e-5 off
    # in variance against float64, the fused blocks' one-pass sums closer: as close to the
    # truth as the designed block, and to it within their two roundings
    assert (ours.double() - truth).abs().max() <= max((theirs.double() - truth).abs().max(), 1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
assert not fused_blocks.fused_kernels_apply(block.conv(x))  # large enough, but not here
