"""DVC stage `fetch`: photos from params' sources -> accepted sRGB images, a manifest and a summary."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def fetch(data: Path, corpus: Path, out: Path, cache: Path, summary: Path) -> None:
    """Gather, decode and judge every candidate photo (colorizer.data.fetch.fetch)."""
    import json

    from colorizer.config import load_params
    from colorizer.data import fetch as fetching  # imported after stage_main's process setup

    print(json.dumps(fetching.fetch(load_params().fetch, data, out, cache, summary, corpus_dir=corpus)))


if __name__ == "__main__":
    sys.exit(stage_main(fetch))
