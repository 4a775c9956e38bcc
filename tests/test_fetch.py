import zipfile

import pandas as pd
import pytest

from colorizer.config import FetchConfig, SplitConfig
from colorizer.data.fetch import MANIFEST_COLUMNS, fetch, split_for
from tests.helpers import colourful, encode


def run_fetch(tmp_path, data, **overrides):
    cfg = FetchConfig(sources=["data"], min_side=32, **overrides)
    out = tmp_path / "out"
    summary = fetch(cfg, data, out, tmp_path / "cache", tmp_path / "summary.json", workers=2)
    return summary, pd.read_parquet(out / "manifest.parquet"), out


def test_manifest_rows_reasons_and_outputs(tmp_path):
    data = tmp_path / "data"
    (data / "nested" / "deeper").mkdir(parents=True)
    (data / "nested" / "deeper" / "a.png").write_bytes(encode(colourful(seed=1)))
    (data / "b.jpg").write_bytes(encode(colourful(seed=2), "JPEG", quality=95))
    (data / "copy of a.png").write_bytes(encode(colourful(seed=1)))  # same pixels as a.png
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.txt").write_text("not a photo")
    (data / "tiny.png").write_bytes(encode(colourful(20, 20)))
    with zipfile.ZipFile(data / "more.zip", "w") as archive:
        archive.writestr("c.png", encode(colourful(seed=3)))
        archive.writestr("../evil.png", encode(colourful(seed=4)))

    summary, manifest, out = run_fetch(tmp_path, data)

    assert list(manifest.columns) == MANIFEST_COLUMNS
    reasons = dict(zip(manifest.path.str.rsplit("/", n=1).str[-1], manifest.reason, strict=True))
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["notes.txt"] == "not an image"
    assert reasons["tiny.png"] == "too small"
    # files are walked in sorted order, so "copy of a.png" comes first and nested/deeper/a.png is the copy
    assert reasons["copy of a.png"] == "" and reasons["a.png"] == "duplicate"
    assert manifest.loc[manifest.reason == "duplicate", "detail"].item().endswith("copy of a.png")
    assert reasons["evil.png"] == "unsafe path (..)"
    assert summary["ok"] == 3 and summary["candidates"] == 8
    assert summary["reasons"] == {
        "duplicate": 1,
        "empty file": 1,
        "not an image": 1,
        "too small": 1,
        "unsafe path (..)": 1,
    }
    ok = manifest[manifest.status == "ok"]
    assert set(ok.split) <= {"train", "val", "test"} and ok.split.notna().all()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(ok.file)
    assert (ok.width == 96).all() and (ok.height == 80).all() and set(ok["mode"]) == {"RGB"}


def test_splits_do_not_move_when_photos_are_added(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(12):
        (data / f"{seed}.png").write_bytes(encode(colourful(seed=seed)))
    _, before, _ = run_fetch(tmp_path, data, split=SplitConfig(val=0.3, test=0.3))
    for seed in range(12, 30):
        (data / f"{seed}.png").write_bytes(encode(colourful(seed=seed)))
    _, after, _ = run_fetch(tmp_path, data, split=SplitConfig(val=0.3, test=0.3))
    merged = before.merge(after, on="id", suffixes=("_before", "_after"))
    assert len(merged) == 12
    assert (merged.split_before == merged.split_after).all()
    assert set(after.split) == {"train", "val", "test"}
    assert after.groupby("id").split.nunique().max() == 1  # one split per photo


def test_train_photos_keeps_the_first_training_photos_by_hash_and_smaller_sets_nest(tmp_path):
    """split.train_photos (a learning curve): at most N training photographs, the first in hash
    order, so 3 of them are among the 6; val and test do not move; the rest are 'unused'."""
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(16):
        (data / f"{seed}.png").write_bytes(encode(colourful(seed=seed)))
    _, every, _ = run_fetch(tmp_path, data, split=SplitConfig(val=0.2, test=0.2))
    sets = {}
    for n in (3, 6):
        summary, manifest, _ = run_fetch(tmp_path, data, split=SplitConfig(val=0.2, test=0.2, train_photos=n))
        sets[n] = set(manifest.id[manifest.split == "train"])
        assert len(sets[n]) == n and summary["split"]["unused"] == (every.split == "train").sum() - n
        assert sets[n] == set(sorted(every.id[every.split == "train"])[:n])
        held_out = manifest.split.isin(["val", "test"])
        assert manifest[held_out].id.tolist() == every[every.split.isin(["val", "test"])].id.tolist()
    assert sets[3] < sets[6]


@pytest.mark.parametrize("image_id", ["0" * 32, "f" * 32, "7" + "0" * 31])
def test_split_for_is_a_function_of_the_hash(image_id):
    split = SplitConfig(val=0.1, test=0.1)
    assert split_for(image_id, split) == split_for(image_id, split)
    assert split_for("0" * 32, split) == "val" and split_for("f" * 32, split) == "train"


def test_photographs_can_have_shares_of_their_own():
    """split.photo_val/photo_test: photographs (few, and what a model is chosen on) get their own
    shares; cut-outs keep val/test. Unset, both kinds share val/test."""
    split = SplitConfig(val=0.1, test=0.1, photo_val=0.3, photo_test=0.2)
    at_0_25, at_0_45 = "4" + "0" * 31, "73" + "3" * 30  # hash positions 0.25 and 0.45
    assert [split_for(at_0_25, split, kind) for kind in ("photo", "cutout")] == ["val", "train"]
    assert [split_for(at_0_45, split, kind) for kind in ("photo", "cutout")] == ["test", "train"]
    assert split_for(at_0_25, SplitConfig(val=0.1, test=0.1), "photo") == "train"
    with pytest.raises(ValueError, match="photo_val \\+ photo_test must sum below 1"):
        SplitConfig(photo_val=0.6, photo_test=0.5)


def test_a_file_name_that_is_not_utf8_is_fetched_and_shown_escaped(tmp_path):
    import os

    data = tmp_path / "data"
    data.mkdir()
    (data / "x.png").write_bytes(encode(colourful(96, 80)))
    os.rename(data / "x.png", os.fsencode(data) + b"/caf\xe9.png")
    _, manifest, _ = run_fetch(tmp_path, data)
    row = manifest[manifest.path.str.endswith("caf\\xe9.png")]
    assert row.status.tolist() == ["ok"]
