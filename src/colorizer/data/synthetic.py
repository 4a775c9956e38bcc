"""Synthetic photos and Lab shards for the tests and `make bench`: generated, so nothing is read from
outside the repository, and made through the real writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def colourful(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth, saturated RGB image (gradients + a coloured block) with plenty of chroma."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / width * np.pi * (1 + seed % 3))
    g = 127 + 120 * np.cos(y / height * np.pi * 2)
    b = 127 + 120 * np.sin((x + y) / (width + height) * np.pi * 3 + seed)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def synthetic_shards(root: Path, size: int = 32, counts=(("train", 16), ("val", 4), ("test", 3))) -> Path:
    """Real Lab shards (through the real writer) from generated photos: what train/evaluate read."""
    import pandas as pd

    from colorizer.data.shards import write_shards

    packs = Path(root) / "packs"
    packs.mkdir(parents=True, exist_ok=True)
    rows, seed = [], 0
    for split, count in counts:
        images = []
        for i in range(count):
            images.append(colourful(size, size, seed=seed))
            rows.append({"split": split, "row": i, "id": f"{split}-{i}", "kind": "photo"})
            seed += 1
        np.save(packs / f"{split}.npy", np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8))
    pd.DataFrame(rows).to_parquet(packs / "index.parquet")
    write_shards(packs, Path(root) / "shards", images_per_shard=8)
    return Path(root) / "shards"
