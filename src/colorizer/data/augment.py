"""The augment stage: accepted photos -> fixed-size uint8 RGB packs, one per split.

Training photos get `copies_per_image` seeded albumentations variants (geometry on RGB; optional
brightness/contrast on L only, so hue and saturation never move); val/test get one deterministic
resize + centre crop. Packs are `.npy` arrays (N, S, S, 3), so the stage writes a handful of files
whatever the collection size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import albumentations as A  # its check for a newer release is off: runtime.setup_process, before this import
import cv2
import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from colorizer.config import SPLITS, AugmentConfig
from colorizer.data.images import read_rgb
from colorizer.data.lab import lab_to_rgb_uint8, rgb_to_lab
from colorizer.files import atomic_path, progress


def train_transform(cfg: AugmentConfig, seed: int) -> A.Compose:
    size = cfg.image_size
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(size / cfg.crop_scale[0] ** 0.5) + 1, interpolation=cv2.INTER_AREA),
            A.RandomResizedCrop(size=(size, size), scale=tuple(cfg.crop_scale), interpolation=cv2.INTER_AREA),
            A.HorizontalFlip(p=cfg.hflip_p),
            A.Affine(
                rotate=(-cfg.rotate_degrees, cfg.rotate_degrees),
                scale=(1.0 - cfg.scale_jitter, 1.0 + cfg.scale_jitter),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.affine_p,
            ),
        ],
        seed=seed,
    )


def eval_transform(size: int) -> A.Compose:
    return A.Compose([A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA), A.CenterCrop(size, size)])


def jitter_luminance(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness/contrast on L only: a* and b* are kept, so the colour the model learns is untouched."""
    lab = rgb_to_lab(rgb)
    contrast = 1.0 + rng.uniform(-cfg.contrast_limit, cfg.contrast_limit)
    brightness = 100.0 * rng.uniform(-cfg.brightness_limit, cfg.brightness_limit)
    lab[..., 0] = np.clip((lab[..., 0] - 50.0) * contrast + 50.0 + brightness, 0.0, 100.0)
    return lab_to_rgb_uint8(lab)


def image_seed(base_seed: int, image_id: str) -> int:
    """Per-photo seed: adding photos does not change the variants of the ones already there."""
    digest = hashlib.sha256(f"{base_seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def copies_of(kind: str, split: str, cfg: AugmentConfig) -> int:
    if split != "train":
        return 1
    return cfg.copies_per_cutout if kind == "cutout" and cfg.copies_per_cutout else cfg.copies_per_image


def variants(
    rgb: np.ndarray, image_id: str, split: str, cfg: AugmentConfig, seed: int, kind: str = "photo"
) -> list[np.ndarray]:
    if split != "train":
        return [eval_transform(cfg.image_size)(image=rgb)["image"]]
    per_image = image_seed(seed, image_id)
    transform = train_transform(cfg, per_image)
    rng = np.random.default_rng(per_image)
    out = []
    for _ in range(copies_of(kind, split, cfg)):
        image = transform(image=rgb)["image"]
        if rng.random() < cfg.brightness_contrast_p:
            image = jitter_luminance(image, rng, cfg)
        out.append(np.ascontiguousarray(image, dtype=np.uint8))
    return out


def augment(cfg: AugmentConfig, seed: int, fetched_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write `<split>.npy` packs and `index.parquet` (split, row, id, kind); returns images per split."""
    manifest = pd.read_parquet(fetched_dir / "manifest.parquet")
    accepted = manifest[manifest.status == "ok"].sort_values("id")
    index_rows, counts = [], {}
    for split in SPLITS:
        photos = accepted[accepted.split == split]
        kinds = photos.kind if "kind" in photos else pd.Series("photo", index=photos.index)
        count = sum(copies_of(kind, split, cfg) for kind in kinds)
        size = cfg.image_size
        with atomic_path(out_dir / f"{split}.npy") as tmp:
            pack = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
            row = 0
            pairs = zip(photos.itertuples(), kinds, strict=True)
            for photo, kind in progress(pairs, desc=f"augment {split}", total=len(photos)):
                rgb = read_rgb(fetched_dir / "images" / photo.file)
                for variant in variants(rgb, photo.id, split, cfg, seed, kind):
                    pack[row] = variant
                    index_rows.append({"split": split, "row": row, "id": photo.id, "kind": kind})
                    row += 1
            pack.flush()
            del pack
        counts[split] = row
    with atomic_path(out_dir / "index.parquet") as tmp:
        pd.DataFrame(index_rows, columns=["split", "row", "id", "kind"]).to_parquet(tmp, index=False)
    return counts
