"""The `showcase` DVC stage: run bulk colorization on a small input (by default greyscale copies of
the test split) and lay out a contact sheet, greyscale | colorized | original, for a quick look.
Also the shipped model's before/after picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from colorizer.colorize.bulk import colorize
from colorizer.config import ColorizeOptions, ShowcaseConfig
from colorizer.data.images import read_rgb, save_png
from colorizer.files import atomic_write_json
from colorizer.training.visualize import tile

TEST_SPLIT = "test-split"


def greyscale_copies(fetched_dir: Path, out_dir: Path, kind: str | None = None) -> dict[str, Path]:
    """Write the test split (or its photos of one kind) as 8-bit greyscale PNGs; returns
    {file name: original colour photo}."""
    manifest = pd.read_parquet(fetched_dir / "manifest.parquet")
    test = manifest[(manifest.status == "ok") & (manifest.split == "test")]
    if kind is not None:
        test = test[test.kind == kind]
    out_dir.mkdir(parents=True, exist_ok=True)
    originals = {}
    for photo in test.itertuples():
        original = fetched_dir / "images" / photo.file
        save_png(out_dir / photo.file, np.asarray(Image.fromarray(read_rgb(original)).convert("L")))
        originals[photo.file] = original
    return originals


def thumbnail(rgb: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def contact_sheet(rows: list[list[np.ndarray]], height: int) -> np.ndarray:
    """One row per photo; thumbnails padded to the widest so the columns line up."""
    thumbs = [[thumbnail(image, height) for image in row] for row in rows]
    width = max(t.shape[1] for row in thumbs for t in row)
    padded = [
        [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in row] for row in thumbs
    ]
    return tile(padded, gap=4)


def showcase(
    cfg: ShowcaseConfig, fetched_dir: Path, model_dir: Path, out_dir: Path, sheet_path: Path, metrics_path: Path
) -> dict:
    """Colorize cfg.input (the test split in grey by default) into out_dir/output, draw the contact
    sheet at sheet_path (an image plot) and write the done and failed counts to metrics_path."""
    originals: dict[str, Path] = {}
    if cfg.input == TEST_SPLIT:
        source = out_dir / "input"
        originals = greyscale_copies(fetched_dir, source)
    else:
        source = Path(cfg.input)
    outputs = out_dir / "output"
    # Without the report's seconds and the run history, which differ on every run: a second run
    # changes nothing DVC hashes.
    options = cfg.colorize.model_copy(update={"overwrite": True, "report_seconds": False, "history": False})
    summary = colorize(source, outputs, model_dir, options)
    rows = []
    for relative, outcome in sorted(summary.rows.values(), key=lambda row: row[0])[: cfg.contact_sheet_rows]:
        if outcome.status != "done":
            continue
        row = [read_rgb(source / relative) if source.is_dir() else None, read_rgb(outputs / relative)]
        if relative in originals:
            row.append(read_rgb(originals[relative]))
        rows.append([image for image in row if image is not None])
    # Nothing colorized: a blank sheet, so that the stage's outputs exist and the counts say why.
    sheet = contact_sheet(rows, cfg.thumbnail_height) if rows else np.full((16, 16, 3), 255, np.uint8)
    save_png(sheet_path, sheet)
    counts = {status: summary.count(status) for status in ("done", "skipped", "failed")}
    atomic_write_json(metrics_path, {k: counts[k] for k in ("done", "failed")})  # skipped: a rerun's state
    return counts


def before_after(
    fetched_dir: Path, model_dir: Path, out_path: Path, work_dir: Path, kind: str = "photo", height: int = 160
) -> int:
    """The model card's picture: the test split's photos of one kind, greyscale | colorized | original,
    colorized at full resolution as `colorizer colorize` does; returns how many rows it drew."""
    originals = greyscale_copies(fetched_dir, work_dir / "input", kind)
    colorize(work_dir / "input", work_dir / "output", model_dir, ColorizeOptions(overwrite=True))
    rows = [
        [read_rgb(work_dir / "input" / name), read_rgb(work_dir / "output" / name), read_rgb(original)]
        for name, original in sorted(originals.items())
    ]
    if rows:
        sheet = contact_sheet(rows, height)
        Image.fromarray(sheet).save(out_path, quality=88)  # a JPEG keeps the picture in git small
    return len(rows)
