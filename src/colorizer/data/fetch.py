"""The fetch stage: candidates from every source -> accepted sRGB photos, a manifest and a summary.

Decoding runs in worker processes; deduplication and split assignment happen in the parent, in
source order, so the result does not depend on which worker finished first.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from colorizer.config import FetchConfig, SplitConfig
from colorizer.data.images import RejectedImage, content_id, decode, encode_png, kind_of, reject_reason
from colorizer.data.sources import (
    Candidate,
    Rejected,
    bundled_samples,
    corpus_candidates,
    folder_candidates,
)
from colorizer.files import atomic_path, atomic_write_bytes, atomic_write_json, progress
from colorizer.parallel import INLINE, OrderedMap, process_pool

# kind: "photo" or "cutout" (a subject on transparency); evaluate reports the two separately.
MANIFEST_COLUMNS = [
    "path",
    "id",
    "width",
    "height",
    "mode",
    "format",
    "kind",
    "status",
    "reason",
    "detail",
    "split",
    "file",
]


@dataclass(frozen=True)
class DecodeJob:
    path: str
    data: bytes
    images_dir: Path
    max_pixels: int
    formats: tuple[str, ...]
    min_side: int
    min_chroma: float


UNUSED_SPLIT = "unused"  # training photographs past fetch.split.train_photos


def split_for(image_id: str, split: SplitConfig, kind: str = "photo") -> str:
    """train/val/test from the content hash (with the shares of the image's kind): stable when photos
    are added, never two splits for one photo."""
    position = int(image_id[:12], 16) / float(16**12)
    val, test = split.shares(kind)
    if position < val:
        return "val"
    if position < val + test:
        return "test"
    return "train"


def decode_and_store(job: DecodeJob) -> dict:
    """Runs in a worker: decode, judge, and write the accepted photo as `<id>.png`."""
    row = {"path": job.path, "status": "rejected", "reason": "", "detail": ""}
    try:
        decoded = decode(job.data, job.max_pixels, job.formats)
    except RejectedImage as e:
        return row | {"reason": e.reason, "detail": e.detail[:200]}
    height, width = decoded.rgb.shape[:2]
    row |= {"width": width, "height": height, "mode": decoded.mode, "format": decoded.format, "kind": kind_of(decoded)}
    row["id"] = content_id(decoded.rgb)
    reason = reject_reason(decoded, job.min_side, job.min_chroma)
    if reason:
        return row | {"reason": reason}
    target = job.images_dir / f"{row['id']}.png"
    if not target.exists():
        atomic_write_bytes(target, encode_png(decoded.rgb))
    return row | {"status": "ok", "file": target.name}


def gather_candidates(
    cfg: FetchConfig, data_dir: Path, cache_dir: Path, corpus_dir: Path = Path("corpus")
) -> Iterator[Candidate | Rejected]:
    for source in cfg.sources:
        if source == "samples":
            yield from bundled_samples()
        elif source == "corpus":
            yield from corpus_candidates(corpus_dir)
        elif data_dir.is_dir():
            yield from folder_candidates(data_dir, cfg.archive, cfg.download, cache_dir)


def fetch(
    cfg: FetchConfig,
    data_dir: Path,
    out_dir: Path,
    cache_dir: Path,
    summary_path: Path,
    workers: int | None = None,
    corpus_dir: Path = Path("corpus"),
) -> dict:
    """Run the stage; returns the summary that is also written to `summary_path`."""
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    candidates = gather_candidates(cfg, data_dir, cache_dir, corpus_dir)
    rows = list(progress(_decode_all(cfg, candidates, images_dir, workers), desc="fetch"))
    manifest = _assign(rows, cfg.split)
    kept = set(manifest.loc[manifest.status == "ok", "file"])
    for stale in images_dir.iterdir():  # left by an earlier run by hand: not part of this manifest
        if stale.name not in kept:
            stale.unlink()
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    summary = summarize(manifest)
    # DVC's metrics: the counts; why photos were rejected varies by experiment (a column per reason)
    # and is in the manifest and the returned summary
    # and train's count is ok - val - test (dvc metrics show stays one readable line per file)
    counts = {
        "ok": summary["ok"],
        "rejected": summary["rejected"],
        "split": {s: summary["split"][s] for s in ("val", "test")},
    }
    atomic_write_json(summary_path, counts)
    return summary


def _decode_all(
    cfg: FetchConfig, candidates: Iterable[Candidate | Rejected], images_dir: Path, workers: int | None
) -> Iterator[dict]:
    """Rows in candidate order, decoded in worker processes (a few jobs ahead, so memory stays bounded)."""
    jobs = _jobs(candidates, cfg, images_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    with INLINE if workers == 1 else process_pool(workers) as pool:
        for _, row in OrderedMap(pool, decode_or_pass, jobs, window=4 * workers):
            if isinstance(row, Exception):  # a bug, not a bad photo (decode_and_store catches those): stop
                raise row
            yield row


def decode_or_pass(job: DecodeJob | dict) -> dict:
    """A candidate refused before decoding is already its row."""
    return job if isinstance(job, dict) else decode_and_store(job)


def _jobs(candidates: Iterable[Candidate | Rejected], cfg: FetchConfig, images_dir: Path) -> Iterator[DecodeJob | dict]:
    for candidate in candidates:
        if isinstance(candidate, Rejected):
            yield {"path": candidate.path, "status": "rejected", "reason": candidate.reason, "detail": candidate.detail}
            continue
        try:
            data = candidate.read()
        except OSError as e:
            yield {"path": candidate.path, "status": "rejected", "reason": "unreadable", "detail": str(e)}
            continue
        yield DecodeJob(
            candidate.path, data, images_dir, cfg.max_pixels, tuple(cfg.formats), cfg.min_side, cfg.min_chroma
        )


def _assign(rows: list[dict], split: SplitConfig) -> pd.DataFrame:
    """Mark exact duplicates (first one wins) and give every accepted photo its split."""
    first_path: dict[str, str] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        if row["id"] in first_path:
            row.update(status="rejected", reason="duplicate", detail=f"same pixels as {first_path[row['id']]}")
            row.pop("file", None)
            continue
        first_path[row["id"]] = row["path"]
        row["split"] = split_for(row["id"], split, row["kind"])
    if split.train_photos is not None:
        training = sorted(
            (row["id"], i) for i, row in enumerate(rows) if row.get("split") == "train" and row["kind"] == "photo"
        )
        for _, i in training[split.train_photos :]:
            rows[i]["split"] = UNUSED_SPLIT
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for column in ("width", "height"):
        manifest[column] = manifest[column].astype("Int64")
    return manifest


def summarize(manifest: pd.DataFrame) -> dict:
    ok = manifest[manifest.status == "ok"]
    rejected = manifest[manifest.status == "rejected"]
    return {
        "candidates": len(manifest),
        "ok": len(ok),
        "rejected": len(rejected),
        "reasons": dict(sorted(Counter(rejected.reason).items())),
        "split": {name: int((ok.split == name).sum()) for name in ("train", "val", "test", UNUSED_SPLIT)},
        "kind": {name: int((ok.kind == name).sum()) for name in ("photo", "cutout")},
    }
