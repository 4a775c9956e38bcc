"""DVC stage `showcase`: bulk-colorize params' input (the test split in grey) and draw a contact sheet."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def showcase(fetched: Path, model: Path, out: Path, contact_sheet: Path, metrics: Path) -> None:
    """Colorize and lay out grey | colorized | original (colorizer.colorize.showcase.showcase)."""
    import json

    from colorizer.colorize import showcase as showing  # imported after stage_main's process setup: torch loads here
    from colorizer.config import load_params

    print(json.dumps(showing.showcase(load_params().showcase, fetched, model, out, contact_sheet, metrics)))


if __name__ == "__main__":
    sys.exit(stage_main(showcase))
