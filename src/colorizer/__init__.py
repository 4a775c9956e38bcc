"""Train a Lab-space conditional GAN on your own photos and colorize whole archives.

Importing the library changes nothing process-wide: entry points call `runtime.setup_process()`.
"""

__version__ = "0.1.0"
