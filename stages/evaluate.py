"""DVC stage `evaluate`: the trained generator against the greyscale baseline on val and test."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def evaluate(model: Path, shards: Path, metrics: Path, per_image: Path) -> None:
    """Score every val/test image, model and grey baseline (colorizer.training.evaluate.evaluate)."""
    from colorizer.config import load_params
    from colorizer.training import evaluate as evaluation  # imported after stage_main's process setup: torch loads here

    params = load_params()
    summary = evaluation.evaluate(params.evaluate, params.train, model, shards, metrics, per_image)
    print(evaluation.describe(summary))


if __name__ == "__main__":
    sys.exit(stage_main(evaluate))
