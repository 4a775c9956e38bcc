"""The shipped or trained generator loaded for inference: a*b* for batches of L, on the device and
at the precision the user chose, falling back to smaller batches when one does not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from colorizer.checkpoints import load_generator, read_model_info
from colorizer.colorize_worker import model_input, recombine
from colorizer.config import ColorizeOptions, UserError
from colorizer.devices import autocast, autocast_dtype, pick_device
from colorizer.images import decode, encode_colorized
from colorizer.lab import denormalize_ab
from colorizer.models import FoldedGenerator


class ModelRunner:
    """The trained generator on the chosen device, predicting a*b* (Lab units) for batches of L; its
    BatchNorms folded into its convolutions, whose weights are kept in the autocast dtype
    (`FoldedGenerator`)."""

    def __init__(self, model_dir: Path, options: ColorizeOptions):
        generator, info = load_generator(model_dir, torch.channels_last)  # as it runs: no second copy
        self.size = input_size(model_dir, options)
        multiple = 2 ** len(generator.down)
        if self.size % multiple:
            raise UserError(f"--size {self.size}: must be a multiple of {multiple} for this model")
        self.device = pick_device(options.device, "--device")
        self.amp_dtype = autocast_dtype(options.precision, self.device)
        self.generator = FoldedGenerator(generator.to(self.device, memory_format=torch.channels_last), self.amp_dtype)
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


def colorize_image(
    runner: ModelRunner, data: bytes, fmt: str = "PNG", quality: int = 95, max_pixels: int | None = None
) -> bytes:
    """One photo in memory, colorized as `colorizer colorize` writes it (full-resolution L, a*b* from
    the model at its size): what the MLflow model serves. Raises RejectedImage for a file it can't
    read or one over `max_pixels` (colorize's cap by default)."""
    decoded = decode(data, max_pixels or ColorizeOptions().max_pixels)
    ab_small = runner.predict(model_input(decoded, runner.size)[None])[0]
    if not np.isfinite(ab_small).all():
        raise ValueError("the prediction is not finite (NaN or inf): the model is damaged or diverged")
    return encode_colorized(recombine(decoded, ab_small), fmt, quality, decoded, runner.description)
