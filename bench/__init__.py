"""`make bench`: measured speed ratios (never run as tests)."""

import colorizer  # noqa: F401 (before torch: the package sets torch's OpenMP spin policy, as its commands run)
