"""DVC stage `register`: the trained model into its MLflow run, as a served and registered model."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def register(model: Path, train_metrics: Path) -> None:
    """Log and register the model (colorizer.serving.register.register)."""
    from colorizer.serving import (
        register as registering,  # imported after stage_main's process setup: mlflow loads here
    )

    registering.register(model, train_metrics)


if __name__ == "__main__":
    sys.exit(stage_main(register))
