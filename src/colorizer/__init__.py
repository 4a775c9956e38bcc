"""Train a Lab-space conditional GAN on your own photos and colorize whole archives."""

import os

# albumentations checks PyPI for a newer release on import; this pipeline runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
