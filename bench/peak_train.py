"""Peak memory of two training steps at the design document's 256 px preset (run by `make bench` in
a fresh interpreter); prints the max RSS in KiB."""

from colorizer.runtime import setup_process

setup_process()  # as the stage scripts do, before torch loads

import resource

import torch

from colorizer.config import ModelConfig, TrainConfig
from colorizer.devices import pick_device
from colorizer.train import build_gan

if __name__ == "__main__":
    gan = build_gan(ModelConfig(), TrainConfig(), 256, pick_device("auto"))
    L, ab = torch.zeros(8, 1, 256, 256), torch.zeros(8, 2, 256, 256)
    for _ in range(2):
        gan.train_step(gan.to_device(L), gan.to_device(ab))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
