"""DVC stage `augment`: fetched photos -> fixed-size training variants and val/test crops."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def augment(fetched: Path, out: Path) -> None:
    """Write one RGB pack per split (colorizer.data.augment.augment)."""
    import json

    from colorizer.config import load_params
    from colorizer.data import augment as augmenting  # imported after stage_main's process setup

    params = load_params()
    print(json.dumps(augmenting.augment(params.augment, params.seed, fetched, out)))


if __name__ == "__main__":
    sys.exit(stage_main(augment))
