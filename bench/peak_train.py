"""Peak memory of two training steps at the design document's 256 px preset (run by `make bench` in
a fresh interpreter); prints the max RSS in KiB.

Read from /proc/self/status (VmHWM) where there is one: Linux keeps the peak RSS of the process a
child was forked from in its ru_maxrss across exec, so that getrusage here reported `make bench`'s own
~4 GB after it had trained at batch 16, not this interpreter's ~2.3."""

from colorizer.runtime import setup_process

setup_process()  # as the stage scripts do, before torch loads

import resource
import sys
from pathlib import Path

import torch

from colorizer.config import ModelConfig, TrainConfig
from colorizer.devices import pick_device
from colorizer.training.gan import build_gan


def peak_rss_kib() -> int:
    """This process's own peak resident memory in KiB (Linux: its address space's high-water mark)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: getrusage's figure (macOS reports bytes)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


if __name__ == "__main__":
    gan = build_gan(ModelConfig(), TrainConfig(), 256, pick_device("auto"))
    L, ab = torch.zeros(8, 1, 256, 256), torch.zeros(8, 2, 256, 256)
    for _ in range(2):
        gan.train_step(gan.to_device(L), gan.to_device(ab))
    print(peak_rss_kib())
