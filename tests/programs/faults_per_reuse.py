"""Page faults of reusing freed memory, with or without `keep_freed_memory` (argv 1: keep or
default; run by tests/test_parallel.py)."""

import resource
import sys

import numpy as np

from colorizer.runtime import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()
np.ones(16_000_000, np.float32)  # 64 MB (a batch's activations), freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(16_000_000, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
