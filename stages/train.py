"""DVC stage `train`: the GAN on the Lab shards; resumes from its checkpoint; exports the generator.
With train.nproc_per_node > 1 the script hands itself over to torchrun (see stage_main)."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def train(shards: Path, model: Path, state: Path, plots: Path, samples: Path, metrics: Path) -> None:
    """Train (or resume) and export the generator (colorizer.training.train.train)."""
    import json

    from colorizer.config import load_params
    from colorizer.training import train as training  # imported after stage_main's process setup: torch loads here

    print(json.dumps(training.train(load_params(), shards, model, state, plots, metrics, samples_path=samples)))


if __name__ == "__main__":
    sys.exit(stage_main(train, distributed=True))
