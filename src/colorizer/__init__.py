"""Train a Lab-space conditional GAN on your own photos and colorize whole archives."""

import os

# albumentations checks PyPI for a newer release on import; this pipeline runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# torch's OpenMP threads busy-wait ~300k spins after every parallel region before they sleep. When the
# main process then waits on worker processes (colorize's decoders and writers, the data loader), the
# spinning takes the cores those workers need: 1000 spins made `colorize` ~10% faster end to end on a
# 2-core machine and left training speed unchanged (measured with `make bench`). libgomp reads this
# once, when torch loads: it only takes effect if colorizer is imported first, as its commands do.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
