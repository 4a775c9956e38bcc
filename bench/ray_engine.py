"""`colorize --engine ray` against the local engine on the same 64 photos on this one machine (Ray's
overhead on one node), and Ray at 1 vs 2 model actors (run by `make bench`; also
`python -m bench.ray_engine`). Where there is a GPU, one GPU actor too.

Each figure is the median of 2 whole `colorize` calls into an empty folder, interleaved, model
loading and the actors' start included (as a user waits for them), Ray's own start-up not.
"""

from colorizer.runtime import setup_process

if __name__ == "__main__":  # run alone; `make bench` imports it after its own set-up
    setup_process()  # before torch loads, as the entry points do

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_jpegs

PHOTOS, BATCH, REPEATS = 64, 8, 2


def main(root: Path, model_dir: Path) -> dict:
    try:
        import ray
    except ImportError:
        print("  Ray is not installed (pip install 'colorizer[ray]'): skipped", file=sys.stderr)
        return {}
    import torch

    from colorizer.colorize.bulk import colorize
    from colorizer.config import ColorizeOptions

    write_jpegs(root / "scans", PHOTOS)
    actor_cpus = max(1, (os.cpu_count() or 2) - 1)  # one CPU left for the decode and write tasks
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    engines = {
        "local": ColorizeOptions(batch_size=BATCH),
        "ray_1actor": ColorizeOptions(
            batch_size=BATCH, engine="ray", actors=1, cpus_per_actor=actor_cpus, gpus_per_actor=0
        ),
        # two actors on the CPUs one had, as each actor's CPUs must leave room for the decode and write tasks
        "ray_2actor": ColorizeOptions(
            batch_size=BATCH, engine="ray", actors=2, cpus_per_actor=actor_cpus / 2, gpus_per_actor=0
        ),
    }
    if torch.cuda.is_available():
        engines["ray_gpu_actor"] = ColorizeOptions(batch_size=BATCH, engine="ray", actors=1, gpus_per_actor=1)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for run in range(REPEATS):
            for name, options in engines.items():
                started = time.perf_counter()
                summary = colorize(root / "scans", root / f"out-{name}-{run}", model_dir, options)
                seconds[name].append(time.perf_counter() - started)
                assert summary.count("done") == PHOTOS, f"{name}: some benchmark photos failed"
                print(f"  {name}: {PHOTOS / seconds[name][-1]:.2f} img/s", file=sys.stderr)
    finally:
        ray.shutdown()
    figures = {f"{name}_img_s": PHOTOS / statistics.median(times) for name, times in seconds.items()}
    figures["ray_vs_local"] = figures["ray_1actor_img_s"] / figures["local_img_s"]
    figures["ray_actor_scaling"] = figures["ray_2actor_img_s"] / figures["ray_1actor_img_s"]
    return {("colorize_" + k if k.startswith("local") else k): v for k, v in figures.items()}


def table_rows(f: dict) -> list[tuple[str, str, str]]:
    if "ray_1actor_img_s" not in f:
        return []
    rows = [
        (
            "colorize engines, 64 JPEGs: local / ray 1 actor (img/s)",
            f"{f['colorize_local_img_s']:.2f} / {f['ray_1actor_img_s']:.2f}",
            f"ray {f['ray_vs_local']:.2f}x local (Ray's overhead on one node)",
        ),
        (
            "colorize on ray: 1 / 2 CPU actors (img/s)",
            f"{f['ray_1actor_img_s']:.2f} / {f['ray_2actor_img_s']:.2f}",
            f"{f['ray_actor_scaling']:.2f}x with 2 actors",
        ),
    ]
    if "ray_gpu_actor_img_s" in f:
        rows.append(("colorize on ray: 1 GPU actor (img/s)", f"{f['ray_gpu_actor_img_s']:.2f}", ""))
    return rows


if __name__ == "__main__":
    from bench.common import DISCRIMINATOR_WIDTHS, SIZE
    from colorizer.config import PIX2PIX_WIDTHS
    from colorizer.training.checkpoints import export_model
    from colorizer.training.models import Discriminator, Generator

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        export_model(model, Generator(PIX2PIX_WIDTHS, SIZE).eval(), Discriminator(DISCRIMINATOR_WIDTHS), {})
        figures = main(Path(tmp), model)
    for row in table_rows(figures):
        print(*row, sep="  |  ")
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))
