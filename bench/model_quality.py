"""The model card's quality figures: models colorize a split's natural photographs at full resolution
through `colorizer colorize`, scored against the originals beside the grey input. The grey input
keeps each original's CIE L* and has a*b* = 0 (evaluate's baseline), so the figures measure colour
alone. Not a speed benchmark: `make bench` does not run it.

usage: python -m bench.model_quality FETCHED SPLIT MODEL_DIR [MODEL_DIR ...]
prints one JSON line: per model, the means over the photographs and each photo's figures, its
choice score (hue agreement + a tenth of the PSNR gain) and, for every model after the first, the
difference of scores from the first with a paired bootstrap 95% interval over the photographs (the
model card's rule: a challenger replaces the first only when that interval is above 0)
"""

from colorizer.runtime import setup_process

setup_process()  # as the `colorizer` command does, before torch loads

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from colorizer.colorize.bulk import colorize
from colorizer.config import ColorizeOptions
from colorizer.data.lab import lab_to_rgb_uint8, rgb_to_lab
from colorizer.training.metrics import colourfulness, hue_agreement, psnr


def photographs(fetched: Path, split: str) -> pd.DataFrame:
    manifest = pd.read_parquet(fetched / "manifest.parquet")
    chosen = (manifest.status == "ok") & (manifest.split == split) & (manifest.kind == "photo")
    return manifest[chosen].sort_values("id")


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """The photo with its own L* and a*b* = 0, in sRGB."""
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = 0
    return lab_to_rgb_uint8(lab)


def score(originals: dict[str, np.ndarray], colorized_dir: Path) -> dict:
    rows = {}
    for name, original in originals.items():
        colorized = np.asarray(Image.open(colorized_dir / name).convert("RGB"))
        grey = grey_of(original)
        rows[name] = {
            "hue_agreement": hue_agreement(colorized, original),
            "psnr_gain": psnr(colorized, original) - psnr(grey, original),
            "colourfulness_gap": abs(colourfulness(colorized) - colourfulness(original)),
            "colourfulness_gap_grey": colourfulness(original),
        }
    frame = pd.DataFrame(rows).T.astype(float)
    return {
        "photos": len(frame),
        "hue_agreement": round(float(np.nanmean(frame.hue_agreement)), 4),
        "psnr_gain": round(float(frame.psnr_gain.mean()), 3),
        "colourfulness_gap_ratio": round(
            float(frame.colourfulness_gap.mean() / frame.colourfulness_gap_grey.mean()), 4
        ),  # noqa: E501
        "per_photo": {name: {k: round(v, 4) for k, v in row.items()} for name, row in rows.items()},
    }


def main(fetched: Path, split: str, model_dirs: list[Path]) -> dict:
    photos = photographs(fetched, split)
    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "grey"
        src.mkdir()
        originals = {}
        for row in photos.itertuples():
            original = np.asarray(Image.open(fetched / "images" / row.file).convert("RGB"))
            originals[row.file] = original
            Image.fromarray(grey_of(original)[..., 0]).save(src / row.file)
        results = {}
        for index, model_dir in enumerate(model_dirs):
            out = Path(work) / f"model-{index}"
            colorize(src, out, model_dir, ColorizeOptions(workers=1, report_seconds=False))
            results[str(model_dir)] = score(originals, out)
    first = results[str(model_dirs[0])]["per_photo"]
    for model_dir in model_dirs:
        found = results[str(model_dir)]
        found["score"] = round(choice_score(found["per_photo"], np.arange(len(first))), 4)
        if model_dir != model_dirs[0]:
            found["vs_first"] = paired_difference(found["per_photo"], first)
    return results


def choice_score(per_photo: dict, picks: np.ndarray) -> float:
    """Hue agreement (photos with colourful pixels) plus a tenth of the PSNR gain, over `picks`."""
    names = sorted(per_photo)
    hue = np.array([per_photo[names[i]]["hue_agreement"] for i in picks], dtype=float)
    gain = np.array([per_photo[names[i]]["psnr_gain"] for i in picks], dtype=float)
    return float(np.nanmean(hue) + 0.1 * gain.mean())


def paired_difference(challenger: dict, incumbent: dict, draws: int = 2000, seed: int = 0) -> dict:
    """The challenger's score minus the incumbent's, and a 95% interval from resampling the photos
    (the same resample for both: the photos, not the models, vary most)."""
    rng = np.random.default_rng(seed)
    count = len(incumbent)
    every = np.arange(count)
    differences = []
    for _ in range(draws):
        picks = rng.integers(0, count, count)
        differences.append(choice_score(challenger, picks) - choice_score(incumbent, picks))
    low, high = np.percentile(differences, [2.5, 97.5])
    difference = choice_score(challenger, every) - choice_score(incumbent, every)
    return {"difference": round(difference, 4), "ci95": [round(float(low), 4), round(float(high), 4)]}


if __name__ == "__main__":
    fetched, split, *models = sys.argv[1:]
    print(json.dumps(main(Path(fetched), split, [Path(m) for m in models])))
