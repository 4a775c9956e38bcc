"""Lab shards: writing them from RGB packs, and reading them back as a torch Dataset.

A shard is one `.npy` file holding (N, 3, S, S) float16 Lab (L in 0..100, a*b* in Lab units),
memory-mapped on read, so training never decodes an image nor converts a colour space.
`index.json` lists the shards of each split, the image ids in order and each image's kind
(photo or cut-out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset

from colorizer.config import SPLITS, UserError
from colorizer.data.lab import normalize_ab, normalize_L, rgb_to_lab
from colorizer.files import atomic_path, atomic_write_json, progress

INDEX_NAME = "index.json"
_CONVERT_BATCH = 64  # images converted per numpy call: big enough to vectorise, small enough for cache


def write_shards(augmented_dir: Path, out_dir: Path, images_per_shard: int) -> dict:
    """Convert every `<split>.npy` RGB pack to Lab shards; returns (and writes) the index."""
    ids = pd.read_parquet(augmented_dir / "index.parquet")
    index: dict = {"format": "lab-float16-nchw", "splits": {}}
    for split in SPLITS:
        pack = np.load(augmented_dir / f"{split}.npy", mmap_mode="r")
        rows = ids[ids.split == split].sort_values("row")
        shards = []
        for number, start in enumerate(range(0, len(pack), images_per_shard)):
            name = f"{split}-{number:05d}.npy"
            _write_one(pack[start : start + images_per_shard], out_dir / name, split)
            shards.append({"file": name, "count": min(images_per_shard, len(pack) - start)})
        size = int(pack.shape[1]) if pack.ndim == 4 else 0
        index["splits"][split] = {
            "shards": shards,
            "count": len(pack),
            "image_size": size,
            "ids": rows.id.tolist(),
            "kinds": rows.kind.tolist() if "kind" in rows else ["photo"] * len(rows),
        }
    atomic_write_json(out_dir / INDEX_NAME, index)
    return index


def _write_one(rgb: np.ndarray, path: Path, split: str) -> None:
    count, size = rgb.shape[0], rgb.shape[1]
    with atomic_path(path) as tmp:
        shard = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, 3, size, size))
        for start in progress(range(0, count, _CONVERT_BATCH), desc=f"shard {split}", unit="batch"):
            lab = rgb_to_lab(np.asarray(rgb[start : start + _CONVERT_BATCH]))
            shard[start : start + len(lab)] = lab.transpose(0, 3, 1, 2)
        shard.flush()
        del shard


class ShardError(UserError):
    """A shard that is missing, cut short or not what the index says."""


def open_shard(path: Path, count: int, size: int) -> np.ndarray:
    """A shard, memory-mapped, checked against the index: numpy's own errors name no file."""
    redo = "rerun `dvc repro shard` (or `dvc checkout work/shards`)"
    try:
        shard = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise ShardError(f"{path}: shard missing; {redo}") from None
    except (ValueError, OSError, EOFError) as e:  # a cut-short file: "mmap length is greater than file size"
        raise ShardError(f"{path}: truncated or not a shard ({e}); {redo}") from None
    if shard.shape != (count, 3, size, size) or shard.dtype != np.float16:
        raise ShardError(f"{path}: holds {shard.dtype}{list(shard.shape)}, the index says {count} images; {redo}")
    return shard


def read_index(shard_dir: Path) -> dict:
    path = Path(shard_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index (run `dvc repro shard` first)")
    return json.loads(path.read_text())


class LabShardDataset(Dataset):
    """(L, ab) pairs of one split, in the model's scale: L (1, S, S) and ab (2, S, S) in [-1, 1].

    Random access into memory-mapped shards; `get_batch` reads many rows with one fancy-index per
    shard, which is what the training loader uses (far fewer Python calls than per-item access).
    """

    def __init__(self, shard_dir: Path, split: str):
        self.shard_dir = Path(shard_dir)
        info = read_index(self.shard_dir)["splits"][split]
        self.split, self.image_size, self.ids = split, info["image_size"], info["ids"]
        self.kinds = info.get("kinds") or ["photo"] * len(self.ids)  # "photo" or "cutout", per image
        self.shards = [open_shard(self.shard_dir / s["file"], s["count"], self.image_size) for s in info["shards"]]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def nonfinite_shards(self) -> list[str]:
        """The shard files holding NaN or inf (read through once: only when training found a bad loss)."""
        bad = []
        for shard in self.shards:
            if any(not np.isfinite(shard[i : i + 256]).all() for i in range(0, len(shard), 256)):
                bad.append(Path(shard.filename).name)
        return bad

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        L, ab = self.get_batch(np.array([i]))
        return L[0], ab[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get_batch(np.asarray(indices))  # DataLoader's batched fetch: one call per batch

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices)
        lab = np.empty((len(indices), 3, self.image_size, self.image_size), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for shard_number in np.unique(shard_of):
            where = np.nonzero(shard_of == shard_number)[0]
            rows = indices[where] - self.offsets[shard_number]
            order = np.argsort(rows)  # sorted reads are sequential on disk
            lab[where[order]] = self.shards[shard_number][rows[order]]
        lab_t = torch.from_numpy(lab)
        return normalize_L(lab_t[:, :1]), normalize_ab(lab_t[:, 1:])
