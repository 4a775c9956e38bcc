"""The photo corpus: photographs from pinned Debian packages, selected by a reviewed list.

`build_corpus` downloads each package of `corpus.yaml` at its exact version (`apt-get download`),
unpacks it with `dpkg-deb -x` (nothing is installed), copies the listed photos into the corpus
folder and writes `manifest.csv` with each photo's provenance: package, version, path inside the
package and the licence its DEP-5 copyright file gives. The fetch source `corpus` reads that
folder back. Downloaded packages are cached, so a re-run only copies.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from colorizer.config import UserError
from colorizer.files import atomic_path, atomic_write_bytes, progress

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["file", "package", "version", "path", "license"]


class PackageSelection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    include: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)


class CorpusSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    packages: dict[str, PackageSelection] = Field(min_length=1)


def load_spec(path: Path) -> CorpusSpec:
    if not path.is_file():
        raise UserError(f"{path}: not found (the corpus list lives at the repository root)")
    try:
        return CorpusSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as e:
        raise UserError(f"{path}: not a valid corpus list: {e}".replace("\n", " ")) from None


def selected(paths: list[str], selection: PackageSelection) -> list[str]:
    """The paths (inside a package, no leading '/') the include patterns match and no exclude pattern does."""
    chosen = [p for p in paths if any(fnmatch.fnmatchcase(p, pattern) for pattern in selection.include)]
    return sorted(p for p in chosen if not any(fnmatch.fnmatchcase(p, pattern) for pattern in selection.exclude))


def license_of(copyright_text: str, path: str) -> str:
    """The licence DEP-5 gives `path`, or "unknown". The Files: patterns name paths in the source
    tree, not where files are installed, so a paragraph that names the file itself (by its exact base
    name) wins over wildcard paragraphs such as `*`, which `find_files_paragraph` matches otherwise."""
    from debian.copyright import Copyright, NotMachineReadableError

    try:
        parsed = Copyright(copyright_text.splitlines(keepends=True), strict=False)
    except (NotMachineReadableError, ValueError):
        return "unknown"
    name = PurePosixPath(path).name
    chosen = None
    for paragraph in parsed.all_files_paragraphs():
        if any(PurePosixPath(p).name == name for p in paragraph.files):
            chosen = paragraph  # DEP-5: the last matching paragraph wins
    chosen = chosen or parsed.find_files_paragraph(path)
    if chosen is None or chosen.license is None:
        return "unknown"
    return chosen.license.synopsis or "unknown"


@dataclass(frozen=True)
class CorpusSummary:
    photos: int
    by_package: dict[str, int]


def require_apt() -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"corpus: needs {' and '.join(missing)} (a Debian or Ubuntu machine); "
            "build the corpus there and copy the corpus/ folder over"
        )


def download(package: str, version: str, cache_dir: Path) -> Path:
    """The .deb of package=version, from the cache or `apt-get download` (verified by apt against the
    signed package index)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    safe_version = version.replace(":", "%3a")
    deb = cache_dir / f"{package}_{safe_version}_all.deb"
    if deb.is_file():
        return deb
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        result = subprocess.run(
            ["apt-get", "download", f"{package}={version}"], cwd=tmp, capture_output=True, text=True
        )
        found = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or len(found) != 1:
            reason = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise UserError(f"corpus: apt-get download {package}={version} failed: {reason}")
        found[0].replace(deb)  # same folder's file system: complete or absent
    return deb


def unpack(deb: Path, into: Path) -> list[str]:
    """`dpkg-deb -x`; returns every regular file's path inside the package."""
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"corpus: dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
    return sorted(p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file() and not p.is_symlink())


def build_corpus(spec_path: Path, out_dir: Path, cache_dir: Path) -> CorpusSummary:
    """Download, unpack and select; writes out_dir/<package>/<path> and out_dir/manifest.csv."""
    spec = load_spec(spec_path)
    require_apt()
    rows = []
    for package, selection in spec.packages.items():
        deb = download(package, selection.version, cache_dir)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            unpacked = Path(tmp)
            paths = selected(unpack(deb, unpacked), selection)
            if not paths:
                raise UserError(f"corpus.yaml: {package}: no file matches its include patterns")
            copyright_file = unpacked / "usr/share/doc" / package / "copyright"
            copyright_text = copyright_file.read_text(encoding="utf-8", errors="replace")
            for path in progress(paths, desc=f"corpus {package}"):
                target = out_dir / package / path
                if not target.is_file():
                    atomic_write_bytes(target, (unpacked / path).read_bytes())
                rows.append(
                    {
                        "file": f"{package}/{path}",
                        "package": package,
                        "version": selection.version,
                        "path": path,
                        "license": license_of(copyright_text, path),
                    }
                )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    _remove_unlisted(out_dir, set(manifest.file))
    with atomic_path(out_dir / MANIFEST_NAME) as tmp:
        manifest.to_csv(tmp, index=False)
    return CorpusSummary(len(manifest), manifest.groupby("package").size().to_dict())


def _remove_unlisted(out_dir: Path, listed: set[str]) -> None:
    """Photos left from an older corpus.yaml would otherwise stay a fetch source."""
    for path in out_dir.rglob("*"):
        relative = path.relative_to(out_dir).as_posix()
        if path.is_file() and relative != MANIFEST_NAME and relative not in listed:
            path.unlink()


def read_manifest(corpus_dir: Path) -> pd.DataFrame:
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"fetch.sources: corpus: {path} not found (run `make corpus` first)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)
