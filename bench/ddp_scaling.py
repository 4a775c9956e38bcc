"""Training images/s on 1 and 2 torchrun ranks, the same global batch and model (run by `make bench`).

`python -m bench.ddp_scaling` launches `torchrun --nproc-per-node=N -m bench.ddp_scaling --rank-worker`
for N = 1, 2 (one GPU per rank where there are GPUs enough, else the CPU with gloo); each run times
training steps of the pipeline's own DDP step after a warm-up and rank 0 prints one JSON line.
"""

import json
import os
import subprocess
import sys
import time

GLOBAL_BATCH, SIZE, WARMUP, STEPS = 16, 128, 2, 6


def rank_worker() -> None:
    import torch

    from colorizer.config import ModelConfig, TrainConfig
    from colorizer.devices import pick_device
    from colorizer.training.distributed import barrier, process_group, rank_device, world_from_env
    from colorizer.training.gan import build_gan, distribute

    world = world_from_env()
    device = rank_device(world, pick_device("auto"))
    with process_group(world, device):
        torch.manual_seed(0)
        gan = distribute(build_gan(ModelConfig(width_multiplier=0.5), TrainConfig(), SIZE, device), world, False)
        share = GLOBAL_BATCH // world.size
        L = gan.to_device(torch.rand(share, 1, SIZE, SIZE) * 2 - 1)
        ab = gan.to_device(torch.rand(share, 2, SIZE, SIZE) - 0.5)
        for _ in range(WARMUP):
            gan.train_step(L, ab)
        barrier(world)
        started = time.perf_counter()
        for _ in range(STEPS):
            gan.train_step(L, ab)
        barrier(world)
        seconds = time.perf_counter() - started
        if world.is_main:
            threads = torch.get_num_threads()
            print(
                json.dumps({"ranks": world.size, "threads_per_rank": threads, "img_s": GLOBAL_BATCH * STEPS / seconds})
            )


def images_per_second(ranks: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    done = subprocess.run(
        [*command, "-m", "bench.ddp_scaling", "--rank-worker"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    one, two = images_per_second(1), images_per_second(2)
    return {
        "ddp_1rank_img_s": one["img_s"],
        "ddp_2rank_img_s": two["img_s"],
        "ddp_threads_per_rank": f"{one['threads_per_rank']} / {two['threads_per_rank']}",
        "ddp_speedup": two["img_s"] / one["img_s"],
        "ddp_scaling_efficiency": two["img_s"] / (2 * one["img_s"]),
    }


if __name__ == "__main__":
    if "--rank-worker" in sys.argv:
        from colorizer.runtime import setup_process

        setup_process()  # before torch loads, as the stage scripts do
        rank_worker()
    else:
        print(json.dumps(main()))
