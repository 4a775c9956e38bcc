"""The shipped or trained generator loaded for inference: a*b* for batches of L, on the device and
at the precision the user chose, falling back to smaller batches when one does not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from colorizer import fast
from colorizer.colorize.onednn import conv_act, onednn_applies, upsampled_cat
from colorizer.colorize.worker import model_input, recombine
from colorizer.config import ColorizeOptions, UserError
from colorizer.data.images import decode, encode_colorized
from colorizer.data.lab import denormalize_ab
from colorizer.devices import autocast, autocast_dtype, pick_device
from colorizer.training.checkpoints import load_generator, read_model_info
from colorizer.training.fused_blocks import upsampled_conv
from colorizer.training.models import Generator, bins_read_out


class FoldedGenerator(nn.Module):
    """A trained generator as inference runs it: the same function as `Generator` in eval mode, to
    rounding, in fewer passes over memory. Eval-mode BatchNorm is a per-channel affine map, folded
    into the convolution before it (torch's `fuse_conv_bn_eval`, as inference toolkits do); on a CPU
    each convolution then applies its block's activation as it writes its output (`conv_act`), so a
    down-block is one convolution and a 2x2 max pool, an up-block one convolution upsampled straight
    into the concatenation with the encoder's output (`upsampled_cat`). A fast path
    (`colorizer.fast`); `python -m bench` measures it against the unfolded generator.

    `weight_dtype`: the convolutions' weights are kept in it, the dtype autocast runs them in (the
    same rounding as autocast's cast on every call, without the cast). The head keeps float32: its
    phase filters are sums of its taps (`upsampled_conv`). Inference only: activations are changed
    in place."""

    def __init__(self, generator: Generator, weight_dtype: torch.dtype | None = None):
        super().__init__()
        if generator.training:
            raise ValueError("FoldedGenerator: fold a generator in eval mode (its running statistics)")
        self.image_size = generator.image_size
        self.down = nn.ModuleList(fuse_conv_bn_eval(block.conv, block.norm) for block in generator.down)
        self.slopes = [block.act.negative_slope for block in generator.down]
        self.up = nn.ModuleList(fuse_conv_bn_eval(block.conv, block.norm, transpose=True) for block in generator.up)
        self.head, self.bins = generator.head, generator.bins
        if self.bins:
            self.register_buffer("bin_centres", generator.bin_centres)
        for conv in [*self.down, *self.up]:
            conv.to(dtype=weight_dtype, memory_format=torch.channels_last)
        self.eval()

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        skips = []
        x = L
        activation_in_conv = onednn_applies(L)
        for conv, slope in zip(self.down, self.slopes, strict=True):
            if activation_in_conv:  # the activation as the convolution writes, then the pool
                x = nn.functional.max_pool2d(conv_act(x, conv, slope), 2)
            else:  # the pool first, then the activation on a quarter of the pixels
                x = nn.functional.leaky_relu(nn.functional.max_pool2d(conv(x), 2), slope, inplace=True)
            skips.append(x)
        skips.pop()  # the bottleneck feeds up[0] directly
        for conv in self.up[:-1]:
            x = upsampled_cat(conv_act(x, conv, 0.0), skips.pop())
        x = conv_act(x, self.up[-1], 0.0)
        if self.bins:
            return bins_read_out(self.head(x), self.bin_centres)
        return torch.tanh(upsampled_conv(x, self.head))


# a prediction that is not finite comes from a damaged model that still loads: never written as done
NOT_FINITE = "model error: the prediction is not finite (NaN or inf): the model is damaged or diverged"


class ModelRunner:
    """The trained generator on the chosen device, predicting a*b* (Lab units) for batches of L; its
    BatchNorms folded into its convolutions, whose weights are kept in the autocast dtype
    (`FoldedGenerator`; with the fast paths off, the generator as trained, in eval mode). `size`: the
    model's input side (None: the size it was trained at)."""

    def __init__(self, model_dir: Path, size: int | None = None, device: str = "auto", precision: str = "auto"):
        generator, info = load_generator(model_dir, torch.channels_last)  # as it runs: no second copy
        self.size = size or info["image_size"]
        multiple = 2 ** len(generator.down)
        if self.size % multiple:
            raise UserError(f"--size {self.size}: must be a multiple of {multiple} for this model")
        self.device = pick_device(device, "--device")
        self.amp_dtype = autocast_dtype(precision, self.device)
        generator = generator.to(self.device, memory_format=torch.channels_last)
        self.generator = FoldedGenerator(generator, self.amp_dtype) if fast.enabled() else generator
        self.description = description_of(info)

    @torch.inference_mode()
    def predict(self, L_batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(L_batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            ab = self.generator(x)
        return denormalize_ab(ab.float().cpu().numpy())


def description_of(info: dict) -> str:
    """What every output records of the model that colorized it (EXIF ImageDescription, PNG text)."""
    return f"colorized by colorizer; model sha256 {info['model_sha256']}"


def input_size(model_dir: Path, options: ColorizeOptions) -> int:
    """The side of the model's input: --size, or the size it was trained at (from model.json alone)."""
    return options.size or read_model_info(model_dir)["image_size"]


def predict_in_halves(predict, batch: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Predict a batch; if the model fails (out of memory, say), retry each half, down to single images."""
    try:
        return list(predict(np.stack(batch)))
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        if len(batch) == 1:
            return [e]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        middle = len(batch) // 2
        return predict_in_halves(predict, batch[:middle]) + predict_in_halves(predict, batch[middle:])


def prediction_error(prediction: np.ndarray | Exception) -> str | None:
    """Why a prediction must not be written (the model raised, or gave NaN/inf), or None: the one
    check that both engines and serving make."""
    if isinstance(prediction, Exception):
        return f"model error: {str(prediction)[:200]}"
    if not np.isfinite(prediction).all():
        return NOT_FINITE
    return None


def colorize_image(
    runner: ModelRunner, data: bytes, fmt: str = "PNG", quality: int = 95, max_pixels: int | None = None
) -> bytes:
    """One photo in memory, colorized as `colorizer colorize` writes it (full-resolution L, a*b* from
    the model at its size): what the MLflow model serves. Raises RejectedImage for a file it can't
    read or one over `max_pixels` (colorize's cap by default)."""
    decoded = decode(data, max_pixels or ColorizeOptions().max_pixels)
    ab_small = runner.predict(model_input(decoded, runner.size)[None])[0]
    if error := prediction_error(ab_small):
        raise ValueError(error)
    return encode_colorized(recombine(decoded, ab_small), fmt, quality, decoded, runner.description)
