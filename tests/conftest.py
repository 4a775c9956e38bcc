"""Shared helpers: tests make their own small images (nothing is read from outside the repo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def colourful(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth, saturated RGB image (gradients + a coloured block) with plenty of chroma."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / width * np.pi * (1 + seed % 3))
    g = 127 + 120 * np.cos(y / height * np.pi * 2)
    b = 127 + 120 * np.sin((x + y) / (width + height) * np.pi * 3 + seed)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode(array_or_image, fmt: str = "PNG", **save_kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.fixture
def photo() -> np.ndarray:
    return colourful()
