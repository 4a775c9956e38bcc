"""Where and in what precision the networks run: one device choice and one autocast helper, used by
training, validation, evaluate and colorize alike (so every "val L1" is computed the same way)."""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import AbstractContextManager

import torch

from colorizer.config import ConfigError


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """auto: CUDA when a GPU is visible, else the CPU. `key` names the setting in errors
    (a params key such as evaluate.device, or a flag such as --device)."""
    where = key if key.startswith("--") else f"params.yaml: {key}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{where}: unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: cuda asked for but no GPU is visible")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; oneDNN's bf16 kernels need it).
    COLORIZER_CPU_BF16=0 answers no on any CPU: what an AVX2-only CPU gets, shown on the one you have."""
    if os.environ.get("COLORIZER_CPU_BF16", "1").strip() == "0":
        return False
    try:  # a private op: another torch may lack it, and then bf16 is not taken for native
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware does it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs), else fp32 (None)."""
    if precision == "fp32":
        return None
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    if precision == "bf16" and not native:
        # On an AVX2-only CPU bf16 takes fallback kernels: the generator 15x, a large matmul 100x slower.
        warnings.warn(
            f"precision bf16 on a {device.type} without native bf16 runs many times slower than fp32 "
            "(use precision: auto)",
            stacklevel=2,
        )
    return torch.bfloat16 if precision == "bf16" or native else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in `dtype` on `device`, or plain fp32 when dtype is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
