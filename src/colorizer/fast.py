"""One switch for every fast path, as timm's `set_fused_attn` and nanoGPT's `self.flash` are.

Each fast path computes what its plain path computes (tests compare the two through this switch),
in fewer passes over memory: the blocks' fused BatchNorm/activation/resampling and their compiled
training kernels (`training.fused_blocks`), the channels-last Adam (`training.optimizers`), the
folded inference generator and its oneDNN convolutions (`colorize.inference`, `colorize.onednn`), and
colorize's numba Lab loops (`colorize.lab_kernels`). Off, everything runs as the design document
writes it, on PyTorch's, NumPy's and OpenCV's public kernels: the way to check a figure you doubt.

    COLORIZER_FAST=0 colorizer colorize ...      # or, in Python: colorizer.fast.set_enabled(False)

A fast path that calls a private API of torch or numba asks `usable(name, probe)` first: the probe
runs once per process, and where it fails (another torch or numba version) a warning names the path
and its plain twin runs from then on, instead of a crash.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from colorizer.config import ConfigError

VARIABLE = "COLORIZER_FAST"
log = logging.getLogger(__name__)

_forced: bool | None = None
_variable_before: str | None = None  # COLORIZER_FAST before set_enabled changed it
_probed: dict[str, str | None] = {}  # fast path -> why it can't run here (None: it can)


def enabled() -> bool:
    """Whether the fast paths run: set_enabled's choice, else COLORIZER_FAST (default 1)."""
    return _from_environment() if _forced is None else _forced


@functools.cache
def _from_environment() -> bool:
    value = os.environ.get(VARIABLE, "1").strip().lower()
    if value in ("", "1", "on", "true", "yes"):  # unset or empty: on
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{VARIABLE}={value!r}: use 1 (the fast paths, the default) or 0 (the plain ones)")


def set_enabled(on: bool | None) -> None:
    """Turn the fast paths on or off in this process and the processes it starts (colorize's worker
    processes, a local Ray: through COLORIZER_FAST); None: back to the variable as it was."""
    global _forced, _variable_before
    if on is not None and _forced is None:
        _variable_before = os.environ.get(VARIABLE)
    if on is not None:
        os.environ[VARIABLE] = "1" if on else "0"
    elif _forced is not None:
        if _variable_before is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = _variable_before
    _forced = on


@contextmanager
def enabled_as(on: bool) -> Iterator[None]:
    """The fast paths on or off inside a `with` block (tests run both paths this way)."""
    before = _forced
    set_enabled(on)
    try:
        yield
    finally:
        set_enabled(before)


def usable(name: str, probe: Callable[[], object]) -> bool:
    """Whether the fast path `name`, which calls a private API, may run: the switch is on and its
    probe (run once; it raises where the API is not as this code expects) passed."""
    if not enabled():
        return False
    if name not in _probed:
        try:
            probe()
            _probed[name] = None
        except Exception as e:  # AttributeError, TypeError, ImportError: whatever another version raises
            _probed[name] = f"{type(e).__name__}: {e}"
            log.warning("%s: not available with this torch/numba (%s); the plain path runs instead", name, e)
    return _probed[name] is None
