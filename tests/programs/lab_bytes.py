"""numpy's BLAS kernel, its SIMD level, and the sha256 of rgb_to_lab on random pixels (run by
tests/test_lab.py under other kernels: the bytes must not change)."""

import hashlib

import numpy as np
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
from threadpoolctl import threadpool_info

from colorizer.data.lab import rgb_to_lab

rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
print([pool.get("architecture") for pool in threadpool_info() if "numpy" in pool["filepath"]][0])
print(",".join(f for f in __cpu_dispatch__ if __cpu_features__[f]) or "baseline")
print(hashlib.sha256(rgb_to_lab(rgb).tobytes()).hexdigest())
