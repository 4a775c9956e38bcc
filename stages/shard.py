"""DVC stage `shard`: the augmented RGB packs -> memory-mappable CIE Lab shards."""

import sys
from pathlib import Path

from colorizer.runtime import stage_main


def shard(augmented: Path, out: Path) -> None:
    """Convert every split's pack to Lab shards (colorizer.data.shards.write_shards)."""
    import json

    from colorizer.config import load_params
    from colorizer.data.shards import write_shards  # imported after stage_main's process setup

    index = write_shards(augmented, out, load_params().shard.images_per_shard)
    print(json.dumps({split: info["count"] for split, info in index["splits"].items()}))


if __name__ == "__main__":
    sys.exit(stage_main(shard))
