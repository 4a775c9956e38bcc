"""The corpus: selection by the reviewed list, provenance and licences from real .deb packages that
the tests build with dpkg-deb (placed in the download cache, so nothing is downloaded), and the
fetch source that reads the corpus back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from colorizer.config import FetchConfig, UserError
from colorizer.data.corpus import PackageSelection, build_corpus, license_of, selected
from colorizer.data.fetch import fetch
from tests.helpers import colourful

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build test packages")

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test-photos

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: photos/lake_by_Someone.jpg
Copyright: 2021 Someone Else
License: CC-BY-4.0

Files: debian/*
Copyright: 2022 A Packager
License: Expat
"""


def test_selected_applies_include_then_exclude():
    paths = [
        "usr/share/stamps/animals/cat.png",
        "usr/share/stamps/animals/cartoon/cat.png",
        "usr/share/stamps/animals/cat_mirror.png",
        "usr/share/stamps/symbols/a.png",
        "usr/share/doc/x/copyright",
    ]
    selection = PackageSelection(
        version="1", include=["usr/share/stamps/animals/*.png"], exclude=["*/cartoon/*", "*_mirror.png"]
    )
    assert selected(paths, selection) == ["usr/share/stamps/animals/cat.png"]


def test_license_prefers_the_paragraph_naming_the_file():
    assert license_of(COPYRIGHT, "usr/share/backgrounds/lake_by_Someone.jpg") == "CC-BY-4.0"
    assert license_of(COPYRIGHT, "usr/share/backgrounds/other.jpg") == "GPL-2+"  # Files: *
    assert license_of("not a DEP-5 file\n", "usr/share/x.jpg") == "unknown"


def cutout(size: int = 120) -> np.ndarray:
    """A colourful disc on a transparent background: 70% of the pixels are transparent."""
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colourful(size, size, seed=3)
    y, x = np.mgrid[0:size, 0:size]
    rgba[..., 3] = np.where((x - size / 2) ** 2 + (y - size / 2) ** 2 < (size * 0.3) ** 2, 255, 0)
    return rgba


def build_deb(root: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    tree = root / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: test photos\n"
    )
    for relative, data in {f"usr/share/doc/{package}/copyright": COPYRIGHT.encode(), **files}.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(data)
    deb = root / "cache" / f"{package}_{version.replace(':', '%3a')}_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def encoded(array: np.ndarray, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def corpus_packages(tmp_path):
    build_deb(
        tmp_path,
        "test-photos",
        "1:1.0-1",
        {
            "usr/share/backgrounds/lake_by_Someone.jpg": encoded(colourful(200, 150, seed=1), "JPEG"),
            "usr/share/backgrounds/abstract.jpg": encoded(colourful(200, 150, seed=2), "JPEG"),
            "usr/share/stamps/animals/disc.png": encoded(cutout(), "PNG"),
            "usr/share/stamps/animals/cartoon/drawn.png": encoded(cutout(), "PNG"),
        },
    )
    spec = tmp_path / "corpus.yaml"
    spec.write_text(
        "packages:\n"
        "  test-photos:\n"
        '    version: "1:1.0-1"\n'
        "    include: [usr/share/backgrounds/lake_by_Someone.jpg, 'usr/share/stamps/*.png']\n"
        "    exclude: ['*/cartoon/*']\n"
    )
    return tmp_path, spec


@needs_dpkg
def test_build_corpus_selects_with_provenance_and_fetch_reads_it(corpus_packages, monkeypatch):
    root, spec = corpus_packages
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")  # apt-get itself is never called here
    summary = build_corpus(spec, root / "corpus", root / "cache")
    assert summary.photos == 2 and summary.by_package == {"test-photos": 2}
    manifest = pd.read_csv(root / "corpus" / "manifest.csv", dtype=str)
    assert manifest.to_dict("records") == [
        {
            "file": "test-photos/usr/share/backgrounds/lake_by_Someone.jpg",
            "package": "test-photos",
            "version": "1:1.0-1",
            "path": "usr/share/backgrounds/lake_by_Someone.jpg",
            "license": "CC-BY-4.0",
        },
        {
            "file": "test-photos/usr/share/stamps/animals/disc.png",
            "package": "test-photos",
            "version": "1:1.0-1",
            "path": "usr/share/stamps/animals/disc.png",
            "license": "GPL-2+",
        },
    ]
    assert sorted(p.name for p in (root / "corpus").rglob("*") if p.is_file()) == [
        "disc.png",
        "lake_by_Someone.jpg",
        "manifest.csv",
    ]

    cfg = FetchConfig(sources=["corpus"], min_side=96, min_chroma=40.0)  # the disc: 24 over all pixels, 86 opaque
    out = root / "fetch"
    fetch(cfg, root / "no-data", out, root / "dl", root / "fetch.json", workers=1, corpus_dir=root / "corpus")
    fetched = pd.read_parquet(out / "manifest.parquet").set_index("path")
    lake, disc = (
        "corpus:test-photos/usr/share/backgrounds/lake_by_Someone.jpg",
        "corpus:test-photos/usr/share/stamps/animals/disc.png",
    )
    assert fetched.loc[lake, ["status", "kind"]].tolist() == ["ok", "photo"]
    # Its chroma is measured on the opaque disc: over every pixel, the white background would drag it
    # below min_chroma and reject it as near-greyscale.
    assert fetched.loc[disc, ["status", "kind"]].tolist() == ["ok", "cutout"]


@needs_dpkg
def test_rebuild_removes_photos_no_longer_listed(corpus_packages, monkeypatch):
    root, spec = corpus_packages
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    build_corpus(spec, root / "corpus", root / "cache")
    spec.write_text(spec.read_text().replace(", 'usr/share/stamps/*.png'", ""))
    assert build_corpus(spec, root / "corpus", root / "cache").photos == 1
    assert not list((root / "corpus").rglob("disc.png"))


def test_without_apt_the_command_says_so_in_one_line(tmp_path):
    spec = tmp_path / "corpus.yaml"
    spec.write_text("packages:\n  x:\n    version: '1'\n    include: ['*']\n")
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "colorizer.cli", "corpus", "--spec", str(spec), "--out", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bare_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "needs apt-get and dpkg-deb" in result.stderr


def test_a_bad_list_names_the_problem(tmp_path):
    spec = tmp_path / "corpus.yaml"
    spec.write_text("packages:\n  x:\n    include: ['*']\n")
    with pytest.raises(UserError, match="version"):
        build_corpus(spec, tmp_path / "c", tmp_path / "cache")


def test_fetch_without_a_built_corpus_says_how_to_build_it(tmp_path):
    cfg = FetchConfig(sources=["corpus"])
    with pytest.raises(UserError, match="make corpus"):
        fetch(cfg, tmp_path, tmp_path / "out", tmp_path / "dl", tmp_path / "s.json", workers=1, corpus_dir=tmp_path)
