"""One `colorize` call in a fresh interpreter, as under the `colorizer` command (run by `make bench`):
first the model alone for 1.5 s on its own copy (its wall and core time per photo), then colorize end
to end; prints one JSON line.

usage: python -m bench.colorize_e2e SRC DST MODEL DEVICE BATCH
"""

from colorizer.runtime import setup_process

setup_process()  # as the `colorizer` command does, before torch loads

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import time_calls
from colorizer.colorize.bulk import colorize
from colorizer.colorize.inference import ModelRunner
from colorizer.config import ColorizeOptions


def inference_seconds(runner: ModelRunner, batch: int) -> tuple[float, float]:
    """Wall seconds per batch (median), and this process's core seconds per batch (mean of 3)."""
    L = np.random.default_rng(0).uniform(-1, 1, (batch, 1, 256, 256)).astype(np.float32)
    step = time_calls(lambda: runner.predict(L), runner.device, repeats=1, min_seconds=1.5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(3):
        runner.predict(L)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return step, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / 3


def main(src: Path, dst: Path, model: Path, device: str, batch: int) -> dict:
    options = ColorizeOptions(device=device, batch_size=batch)
    step, core_seconds = inference_seconds(ModelRunner(model, device=device), batch)  # its copy is freed on return
    started = time.perf_counter()
    summary = colorize(src, dst, model, options)
    seconds = time.perf_counter() - started
    assert summary.count("done") == len(list(src.iterdir())), "colorize failed on some benchmark images"
    return {"seconds": seconds, "infer_img_s": batch / step, "model_core_ms": 1000 * core_seconds / batch}


if __name__ == "__main__":
    src, dst, model, device, batch = sys.argv[1:6]
    print(json.dumps(main(Path(src), Path(dst), Path(model), device, int(batch))))
