from pathlib import Path

import pytest
import yaml

from colorizer.config import ConfigError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.augment.image_size >= 32


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"fetch": {"min_sid": 3}}, "fetch.min_sid"),
        ({"augment": {"image_size": "big"}}, "augment.image_size"),
        ({"augment": {"image_size": -64}}, "augment.image_size"),
        ({"augment": {"image_size": 48}}, "augment"),
        ({"fetch": {"split": {"val": 0.6, "test": 0.5}}}, "fetch.split"),
        ({"fetch": {"sources": ["dropbox"]}}, "fetch.sources.0"),
        ({"shard": {"images_per_shard": 0}}, "shard.images_per_shard"),
        ({"bogus": 1}, "bogus"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"fetch": {"split": {"photo_val": 0.6, "photo_test": 0.5}}}, "fetch.split"),
        ({"showcase": {"colorize": {"quality": 0}}}, "showcase.colorize.quality"),
        ({"augment": {"copies_per_cutout": 0}}, "augment.copies_per_cutout"),
    ],
)
def test_bad_params_name_the_key_in_one_line(raw, key):
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert f"params.yaml: {key}:" in message and "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("fetch: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_an_empty_params_file_is_refused_and_missing_sections_are_said(tmp_path, caplog):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty.yaml: empty"):
        load_params(empty)
    partial = tmp_path / "partial.yaml"
    partial.write_text((REPO / "params.yaml").read_text().split("\nshowcase:")[0] + "\n")
    assert load_params(partial).train.epochs == load_params(REPO / "params.yaml").train.epochs
    assert "partial.yaml: no showcase section: using the built-in defaults for it" in caplog.text
    caplog.clear()
    load_params(REPO / "params.yaml")
    assert "built-in defaults" not in caplog.text  # the repository's file has every section


def test_floats_written_as_pyyaml_strings_still_parse(tmp_path):
    # PyYAML reads 2e-4 as the string "2e-4"; the typed config still turns it into the float DVC sees.
    raw = yaml.safe_load("fetch:\n  min_chroma: 2e-4\n")
    assert raw["fetch"]["min_chroma"] == "2e-4"
    assert parse_params(raw).fetch.min_chroma == pytest.approx(2e-4)
