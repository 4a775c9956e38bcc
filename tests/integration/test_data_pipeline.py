"""`make run` on a fresh copy of the repo (no data/, no DVC cache), then user photos picked up by `dvc repro`."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers import colourful, encode
from tests.integration.repo import TINY_PIPELINE, clone_repo, make_run, run, set_params

pytestmark = pytest.mark.slow


def test_fresh_clone_runs_offline_then_picks_up_user_photos(tmp_path):
    root = clone_repo(tmp_path / "repo")
    assert not (root / "data").exists() and (root / "data.dvc").is_file()
    set_params(root, **TINY_PIPELINE)

    make_run(root)  # no data/, no DVC cache: must still run
    summary = json.loads((root / "metrics" / "fetch.json").read_text())
    assert summary["ok"] >= 8 and summary["split"]["val"] >= 1 and summary["split"]["test"] >= 1
    index = json.loads((root / "work" / "shards" / "index.json").read_text())
    trained_on = summary["ok"] - summary["split"]["val"] - summary["split"]["test"]
    assert index["splits"]["train"]["count"] == 2 * trained_on
    assert run(root, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."

    (root / "data" / "album").mkdir(parents=True)
    for seed in range(3):
        (root / "data" / "album" / f"photo {seed}.png").write_bytes(encode(colourful(128, 96, seed=seed)))
    (root / "data" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    run(root, "dvc", "add", "data")
    run(root, "dvc", "repro")
    manifest = pd.read_parquet(root / "work" / "fetch" / "manifest.parquet")
    ours = manifest[manifest.path.str.startswith("data/")]
    assert len(ours) == 4 and (ours.status == "ok").sum() == 3
    assert ours.loc[ours.path == "data/broken.jpg", "reason"].item() in ("truncated", "not an image", "corrupt")
    shard = np.load(root / "work" / "shards" / "train-00000.npy", mmap_mode="r")
    assert shard.shape[1:] == (3, 32, 32)
    assert run(root, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
