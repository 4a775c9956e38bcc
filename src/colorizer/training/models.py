"""The design document's conditional GAN: ConvBlock, ConvTBlock, a UNet Generator, a PatchGAN Discriminator.

The generator maps L (B, 1, H, W) to a*b* (B, 2, H, W) in [-1, 1], by regression (the design
document's head) or through a distribution over colour bins (`model.head: bins`, see color_bins); the
discriminator judges Lab (B, 3, H, W) with one logit per 16x16 patch, (B, 1, H/16, W/16).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from colorizer import fast
from colorizer.config import ModelConfig
from colorizer.training.color_bins import annealed_mean
from colorizer.training.fused_blocks import norm_act, pooled_norm_act, upsampled_conv, upsampled_norm_act


class ConvBlock(nn.Module):
    """conv 3x3 s1 p1 -> BatchNorm -> LeakyReLU(0.2) -> MaxPool 2x2: (B, Cin, H, W) -> (B, Cout, H/2, W/2).

    The fast path (`colorizer.fast`) computes the same function as conv -> MaxPool -> BatchNorm ->
    LeakyReLU (`pooled_norm_act`): BatchNorm and LeakyReLU then touch a quarter of the pixels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast.enabled():
            return pooled_norm_act(self.conv(x), self.norm, self.act, self.pool)
        return self.pool(self.act(self.norm(self.conv(x))))


class ConvTBlock(nn.Module):
    """transposed conv 3x3 s1 p1 -> BatchNorm -> ReLU -> Upsample x2: (B, Cin, H, W) -> (B, Cout, 2H, 2W).

    With a skip (B, Cs, 2H, 2W) the output is concatenated with it: (B, Cout + Cs, 2H, 2W), the
    UNet's next input; the fast path writes the upsampled output straight into that concatenation
    (`upsampled_norm_act`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if fast.enabled():
            return upsampled_norm_act(self.conv(x), self.norm, self.act, self.up, skip)
        out = self.up(self.act(self.norm(self.conv(x))))
        return out if skip is None else torch.cat([out, skip], dim=1)

    def before_upsampling(self, x: torch.Tensor) -> torch.Tensor:
        """transposed conv -> BatchNorm -> ReLU: (B, Cin, H, W) -> (B, Cout, H, W), for a next layer
        that upsamples as it goes (the generator's head: `upsampled_conv`), or classifies at this size."""
        if fast.enabled():
            return norm_act(self.conv(x), self.norm, self.act)
        return self.act(self.norm(self.conv(x)))


def generator_depth(widths: list[int], image_size: int) -> int:
    """As many down-blocks as widths, but never below a 1x1 bottleneck."""
    return min(len(widths), int(math.log2(image_size)))


class Generator(nn.Module):
    """UNet: ConvBlocks down, ConvTBlocks up; every decoder block after the first also takes the
    matching encoder output (hence doubled input channels); a final conv 3x3 and tanh give a*b*.

    On the fast path the last ConvTBlock's upsampling is done by the head's convolution
    (`upsampled_conv`): the same function without the full-size tensor of the block's output channels.

    `bins` > 0 (`model.head: bins`): the head is instead a 1x1 convolution to `bins` logits at half
    size, before the last upsampling (as Zhang et al. classify at a fraction of the input's size:
    at full size the head would cost more than the whole UNet); a*b* is their annealed mean over the
    bin centres (the `bin_centres` buffer, set by training from its photos), upsampled bilinearly."""

    def __init__(self, widths: list[int], image_size: int, bins: int = 0):
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
        self.bins = bins
        if bins:
            self.head = nn.Conv2d(outs[-1], bins, 1)
            self.register_buffer("bin_centres", torch.zeros(bins, 2))
        else:
            self.head = nn.Conv2d(outs[-1], 2, 3, stride=1, padding=1)

    def forward(self, L: torch.Tensor, with_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """a*b* (B, 2, H, W); with_logits (bins head only): (a*b*, bin logits (B, Q, H/2, W/2))."""
        skips = []
        x = L  # (B, 1, H, W)
        for block in self.down:
            x = block(x)  # (B, w_i, H / 2^(i+1), W / 2^(i+1))
            skips.append(x)
        skips.pop()  # the bottleneck feeds up[0] directly
        for block in self.up[:-1]:
            # up[k]'s output is concatenated with the encoder output of its size: up[k + 1]'s input
            x = block(x, skips.pop())
        if self.bins:  # (B, w_0, H / 2, W / 2): classified before the last upsampling
            return bins_read_out(self.head(self.up[-1].before_upsampling(x)), self.bin_centres, with_logits)
        if fast.enabled():  # the head's convolution upsamples as it goes
            return torch.tanh(upsampled_conv(self.up[-1].before_upsampling(x), self.head))
        return torch.tanh(self.head(self.up[-1](x)))  # (B, 2, H, W)


def bins_read_out(
    logits: torch.Tensor, centres: torch.Tensor, with_logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The bins head's a*b* at twice the logits' size: their annealed mean, upsampled bilinearly."""
    ab = nn.functional.interpolate(annealed_mean(logits, centres), scale_factor=2, mode="bilinear")
    return (ab, logits) if with_logits else ab


class Discriminator(nn.Module):
    """PatchGAN: ConvBlocks then a conv 3x3 to one logit per patch: (B, 3, H, W) -> (B, 1, H/2^n, W/2^n)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        ins = [3] + widths[:-1]
        self.blocks = nn.Sequential(*(ConvBlock(c_in, c_out) for c_in, c_out in zip(ins, widths, strict=True)))
        self.head = nn.Conv2d(widths[-1], 1, 3, stride=1, padding=1)

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(lab))  # logits; BCEWithLogits is BCE on sigmoid, computed stably


def build_generator(cfg: ModelConfig, image_size: int, bins: int = 0) -> Generator:
    """The generator of `cfg`; `bins`: the size of the bin set for `model.head: bins` (from the data)."""
    return Generator(cfg.scaled(cfg.generator_widths), image_size, bins if cfg.head == "bins" else 0)


def build_discriminator(cfg: ModelConfig) -> Discriminator:
    return Discriminator(cfg.scaled(cfg.discriminator_widths))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
