import numpy as np
import pandas as pd
import pytest

from colorizer.config import AugmentConfig, FetchConfig, SplitConfig
from colorizer.data.augment import augment, jitter_luminance, variants
from colorizer.data.fetch import fetch
from colorizer.data.lab import rgb_to_lab
from tests.helpers import colourful, encode

CFG = AugmentConfig(image_size=32, copies_per_image=3)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    data = root / "data"
    data.mkdir()
    for seed in range(10):
        (data / f"{seed}.png").write_bytes(encode(colourful(120, 90, seed=seed)))
    cfg = FetchConfig(sources=["data"], min_side=32, split=SplitConfig(val=0.3, test=0.3))
    fetch(cfg, data, root / "fetch", root / "cache", root / "summary.json", workers=1)
    return root


def test_same_params_same_bytes(fetched, tmp_path):
    counts_a = augment(CFG, 7, fetched / "fetch", tmp_path / "a")
    counts_b = augment(CFG, 7, fetched / "fetch", tmp_path / "b")
    assert counts_a == counts_b
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.npy").read_bytes() == (tmp_path / "b" / f"{split}.npy").read_bytes()
    augment(CFG, 8, fetched / "fetch", tmp_path / "c")
    assert (tmp_path / "a" / "train.npy").read_bytes() != (tmp_path / "c" / "train.npy").read_bytes()


def test_pack_shapes_and_index(fetched, tmp_path):
    counts = augment(CFG, 0, fetched / "fetch", tmp_path)
    manifest = pd.read_parquet(fetched / "fetch" / "manifest.parquet")
    per_split = manifest[manifest.status == "ok"].split.value_counts()
    assert counts["train"] == per_split["train"] * CFG.copies_per_image
    assert counts["val"] == per_split.get("val", 0)
    train = np.load(tmp_path / "train.npy")
    assert train.shape == (counts["train"], 32, 32, 3) and train.dtype == np.uint8
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert len(index) == sum(counts.values())


def test_eval_crop_is_deterministic_and_centred():
    rgb = colourful(200, 100)
    [first] = variants(rgb, "id", "val", CFG, seed=1)
    [second] = variants(rgb, "id", "val", CFG, seed=2)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (32, 32, 3)


def test_train_variants_differ_but_keep_colour_statistics():
    rgb = colourful(160, 120, seed=3)
    out = variants(rgb, "abc", "train", CFG, seed=0)
    assert len(out) == 3 and not np.array_equal(out[0], out[1])
    # geometry only: the mean a*b* of a crop stays near the photo's (no hue or saturation shift)
    photo_ab = rgb_to_lab(rgb)[..., 1:].reshape(-1, 2)
    for variant in out:
        ab = rgb_to_lab(variant)[..., 1:].reshape(-1, 2)
        assert ab.min(0).min() >= photo_ab.min() - 5 and ab.max() <= photo_ab.max() + 5


def test_luminance_jitter_keeps_a_and_b():
    rgb = colourful(64, 64)
    cfg = AugmentConfig(brightness_limit=0.1, contrast_limit=0.1)
    jittered = jitter_luminance(rgb, np.random.default_rng(0), cfg)
    before, after = rgb_to_lab(rgb), rgb_to_lab(jittered)
    assert np.abs(after[..., 0] - before[..., 0]).mean() > 1.0  # L moved
    inside = (before[..., 0] > 15) & (before[..., 0] < 85)  # away from gamut clipping at the ends
    assert np.median(np.abs(after[..., 1:] - before[..., 1:])[inside]) < 2.0  # a*b* did not
