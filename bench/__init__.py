"""`make bench`: measured speed ratios (never run as tests)."""
