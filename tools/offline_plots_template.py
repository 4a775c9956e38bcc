"""Write DVC's HTML template for `dvc plots show/diff` with Vega, Vega-Lite and Vega-Embed inlined.

DVC's own page loads the three from a CDN, so offline (or behind a proxy) it draws nothing and says
nothing. This page carries them, at the versions DVC's renderer asks for, with their BSD licences.
Usage: python tools/offline_plots_template.py OUT.html PACKAGE.tgz... (the tarballs of `npm pack
vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2`, what `make plots-template` runs).
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

# the order the scripts must load in: vega-lite and vega-embed use the globals of the ones before
BUNDLES = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def package_files(tarball: Path) -> tuple[str, str, str, str]:
    """(name, version, minified bundle, licence) of one `npm pack` tarball."""
    import json

    with tarfile.open(tarball) as tar:
        manifest = json.load(tar.extractfile("package/package.json"))
        name = manifest["name"]
        bundle = tar.extractfile(f"package/build/{BUNDLES[name]}").read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    if "</script" in bundle.lower():
        raise ValueError(f"{tarball}: its bundle holds '</script', which would end the inline script")
    return name, manifest["version"], bundle, licence


def main(out: str, *tarballs: str) -> None:
    found = {
        name: (version, bundle, licence) for name, version, bundle, licence in map(package_files, map(Path, tarballs))
    }
    missing = set(BUNDLES) - set(found)
    if missing:
        raise SystemExit(f"missing the npm tarballs of {', '.join(sorted(missing))}")
    scripts = []
    for name in BUNDLES:
        version, bundle, licence = found[name]
        licence = licence.replace("--", "- -")  # an HTML comment may not hold "--"
        scripts.append(f"    <!-- {name} {version}\n{licence}\n    -->\n    <script>{bundle}</script>")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(PAGE.format(scripts="\n".join(scripts)))


if __name__ == "__main__":
    main(*sys.argv[1:])
