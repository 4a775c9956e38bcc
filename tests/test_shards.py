import json

import numpy as np
import pandas as pd
import pytest
import torch

from colorizer.data.lab import normalize_ab, normalize_L, rgb_to_lab
from colorizer.data.shards import LabShardDataset, write_shards
from tests.helpers import colourful


@pytest.fixture
def packs(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 11), ("val", 3), ("test", 0)):
        pack = (
            np.stack([colourful(16, 16, seed=int(s)) for s in rng.integers(0, 99, count)])
            if count
            else np.zeros((0, 16, 16, 3), np.uint8)
        )
        np.save(tmp_path / f"{split}.npy", pack)
        rows += [{"split": split, "row": i, "id": f"{split}{i}"} for i in range(count)]
    pd.DataFrame(rows).to_parquet(tmp_path / "index.parquet")
    return tmp_path


def test_shards_are_few_fixed_size_files(packs, tmp_path):
    out = tmp_path / "shards"
    index = write_shards(packs, out, images_per_shard=4)
    assert [s["count"] for s in index["splits"]["train"]["shards"]] == [4, 4, 3]
    assert index["splits"]["test"]["count"] == 0
    assert json.loads((out / "index.json").read_text()) == index
    shard = np.load(out / "train-00000.npy", mmap_mode="r")
    assert shard.dtype == np.float16 and shard.shape == (4, 3, 16, 16)


def test_dataset_returns_normalised_lab_by_random_access(packs, tmp_path):
    out = tmp_path / "shards"
    write_shards(packs, out, images_per_shard=4)
    dataset = LabShardDataset(out, "train")
    rgb = np.load(packs / "train.npy")
    assert len(dataset) == 11 and dataset.image_size == 16
    for i in (0, 5, 10):
        L, ab = dataset[i]
        lab = torch.from_numpy(rgb_to_lab(rgb[i]).transpose(2, 0, 1))
        assert L.shape == (1, 16, 16) and ab.shape == (2, 16, 16)
        torch.testing.assert_close(L, normalize_L(lab[:1]), atol=2e-3, rtol=0)  # float16 storage
        torch.testing.assert_close(ab, normalize_ab(lab[1:]), atol=2e-3, rtol=0)
    L_batch, ab_batch = dataset.get_batch(np.array([10, 0, 5, 4]))
    torch.testing.assert_close(L_batch[0], dataset[10][0])
    torch.testing.assert_close(ab_batch[3], dataset[4][1])
    assert L_batch.min() >= -1 and L_batch.max() <= 1
