"""The design document's conditional GAN: ConvBlock, ConvTBlock, a UNet Generator, a PatchGAN Discriminator.

The generator maps L (B, 1, H, W) to a*b* (B, 2, H, W) in [-1, 1]; the discriminator judges Lab
(B, 3, H, W) with one logit per 16x16 patch, (B, 1, H/16, W/16).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from colorizer.config import ModelConfig


class ConvBlock(nn.Module):
    """conv 3x3 s1 p1 -> BatchNorm -> LeakyReLU(0.2) -> MaxPool 2x2: (B, Cin, H, W) -> (B, Cout, H/2, W/2).

    Computed as conv -> MaxPool -> BatchNorm -> LeakyReLU, the same function (`pooled_batch_norm`):
    BatchNorm and LeakyReLU then touch a quarter of the pixels, where they took half a training step.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(pooled_batch_norm(self.conv(x), self.norm, self.pool))


def pooled_batch_norm(x: torch.Tensor, norm: nn.BatchNorm2d, pool: nn.MaxPool2d) -> torch.Tensor:
    """pool(norm(x)), computed as norm(pool(x)) with the statistics of the whole x: the same values,
    gradients and running statistics in a quarter of the memory traffic. BatchNorm is a per-channel
    affine map y = scale * x + shift, and max pooling commutes with a map that increases; a channel
    whose scale is negative is pooled by its minimum instead (the max of -x). A LeakyReLU after it
    commutes with the pooling too. Only the rounding differs from norm-then-pool (tests compare them)."""
    if (pool.kernel_size, pool.stride, pool.padding, pool.dilation) != (2, 2, 0, 1) or not norm.affine:
        raise ValueError(f"pooled_batch_norm: for an affine BatchNorm and a 2x2 max pool of stride 2, not {pool}")
    if norm.training or not norm.track_running_stats:
        return _PooledBatchNorm.apply(x, norm.weight, norm.bias, *_running_statistics_step(norm), norm.eps)
    scale = torch.rsqrt(norm.running_var + norm.eps) * norm.weight
    shift = norm.bias - norm.running_mean * scale
    pooled = _signed_max_pool(x, scale < 0)[0]
    return torch.addcmul(_per_channel(shift, x.dtype), pooled, _per_channel(scale, x.dtype))


def _running_statistics_step(norm: nn.BatchNorm2d) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    """Count a training step and give the running statistics it moves, and by how much, as
    nn.BatchNorm2d does (none when they are not tracked, or outside training)."""
    if not (norm.training and norm.track_running_stats):
        return None, None, 0.0
    norm.num_batches_tracked.add_(1)
    momentum = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)  # cumulative
    return norm.running_mean, norm.running_var, momentum


def _per_channel(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return values.to(dtype).view(1, -1, 1, 1)


def _signed_max_pool(x: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max pooling, but the minimum in the channels marked negative: (values of x, their indices)."""
    if not negative.any():
        return torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    sign = _per_channel(torch.where(negative, -1.0, 1.0), x.dtype)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(x * sign, [2, 2], [2, 2])
    return pooled * sign, indices


class _PooledBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm after 2x2 max pooling, with the batch statistics of the unpooled x. An
    autograd Function because autograd would differentiate torch.var_mean, the slow path; here the
    gradient is BatchNorm's own (its kernel) for an upstream gradient that is nonzero only where the
    pool took its values. It runs on CUDA as on the CPU (batch_norm_update_stats keeps float32
    statistics for bf16 and fp16 input there too)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):  # noqa: ANN001, ANN205
        # the batch's mean and biased variance in float32 through BatchNorm's own kernel, which also
        # moves the running statistics (10x faster than torch.var_mean on bf16 channels-last)
        mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)
        scale = torch.rsqrt(var + eps) * weight
        pooled, indices = _signed_max_pool(x, scale < 0)
        ctx.save_for_backward(x, weight, mean, var, indices)
        ctx.eps = eps
        # in x's dtype, one op: under autocast the next convolution takes bf16, as it would from BatchNorm
        return torch.addcmul(_per_channel(bias - mean * scale, x.dtype), pooled, _per_channel(scale, x.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, mean, var, indices = ctx.saved_tensors
        # the upstream gradient where the pool took its values, zero elsewhere; then BatchNorm's own
        # training-mode backward over the whole x with the batch's statistics: the same formula,
        # dx = invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), in its fused kernel
        scattered = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.to(x.dtype), x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )
        invstd = torch.rsqrt(var + ctx.eps)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            scattered, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True]
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None


class ConvTBlock(nn.Module):
    """transposed conv 3x3 s1 p1 -> BatchNorm -> ReLU -> Upsample x2: (B, Cin, H, W) -> (B, Cout, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.norm(self.conv(x))))


def generator_depth(widths: list[int], image_size: int) -> int:
    """As many down-blocks as widths, but never below a 1x1 bottleneck."""
    return min(len(widths), int(math.log2(image_size)))


class Generator(nn.Module):
    """UNet: ConvBlocks down, ConvTBlocks up; every decoder block after the first also takes the
    matching encoder output (hence doubled input channels); a final conv 3x3 and tanh give a*b*."""

    def __init__(self, widths: list[int], image_size: int):
        super().__init__()
        depth = generator_depth(widths, image_size)
        if depth < 1:
            raise ValueError(f"image_size {image_size} is too small for a UNet")
        self.widths, self.image_size = list(widths[:depth]), image_size
        w = self.widths
        self.down = nn.ModuleList(ConvBlock(c_in, c_out) for c_in, c_out in zip([1] + w[:-1], w, strict=True))
        # up[0] takes the bottleneck w[-1]; up[k] takes cat(up[k-1] output, encoder output of the same size)
        outs = list(reversed(w[:-1])) + [w[0]]
        ins = [w[-1]] + [2 * c for c in outs[:-1]]
        self.up = nn.ModuleList(ConvTBlock(c_in, c_out) for c_in, c_out in zip(ins, outs, strict=True))
        self.head = nn.Conv2d(outs[-1], 2, 3, stride=1, padding=1)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        skips = []
        x = L  # (B, 1, H, W)
        for block in self.down:
            x = block(x)  # (B, w_i, H / 2^(i+1), W / 2^(i+1))
            skips.append(x)
        skips.pop()  # the bottleneck feeds up[0] directly
        for i, block in enumerate(self.up):
            x = block(x if i == 0 else torch.cat([x, skips.pop()], dim=1))
        return torch.tanh(self.head(x))  # (B, 2, H, W)


class Discriminator(nn.Module):
    """PatchGAN: ConvBlocks then a conv 3x3 to one logit per patch: (B, 3, H, W) -> (B, 1, H/2^n, W/2^n)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        ins = [3] + widths[:-1]
        self.blocks = nn.Sequential(*(ConvBlock(c_in, c_out) for c_in, c_out in zip(ins, widths, strict=True)))
        self.head = nn.Conv2d(widths[-1], 1, 3, stride=1, padding=1)

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(lab))  # logits; BCEWithLogits is BCE on sigmoid, computed stably


def build_generator(cfg: ModelConfig, image_size: int) -> Generator:
    return Generator(cfg.scaled(cfg.generator_widths), image_size)


def build_discriminator(cfg: ModelConfig) -> Discriminator:
    return Discriminator(cfg.scaled(cfg.discriminator_widths))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
