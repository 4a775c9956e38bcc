"""`dvc plots show` draws the project's loss curves with no network: real DVC, real headless Chromium.

The page is rendered by Chromium with every host name unresolvable; the curves are found in the
screenshot by the colour DVC gives the workspace's lines. DVC's default page, which loads Vega from a CDN,
is rendered the same way as the control: it must draw nothing (else the test could not fail).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WORKSPACE_LINE = (148, 93, 214)  # #945dd6: DVC's colour for the first revision's lines


def browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium here (Debian: apt-get install chromium-headless-shell; .ci/run does)")


def project_plots(tmp_path: Path, template: bool) -> Path:
    """A DVC project with this one's dvc.yaml and .dvc/config (and so its template), and a training's
    plots/train.csv; returns `dvc plots show`'s page."""
    project = tmp_path / ("offline" if template else "cdn")
    (project / "plots").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", project)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    if template:
        shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
        shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    # the columns a training writes (an L1-only epoch has no discriminator: nan)
    rows = [
        "epoch,train_d_fake,train_d_real,train_g_gan,train_g_l1,val_d_fake,val_d_real,val_g_gan,val_g_l1,"
        "val_hue_agreement,val_psnr_gain"
    ]
    rows += [f"{e},nan,nan,0,{0.3 / e},0.7,0.69,0.69,{0.35 / e},{0.1 * e},{0.5 * e}" for e in range(1, 9)]
    (project / "plots" / "train.csv").write_text("\n".join(rows) + "\n")
    for picture in ("samples.png", "contact_sheet.png"):  # the image plots
        Image.new("RGB", (8, 8), (200, 30, 30)).save(project / "plots" / picture)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "page"], cwd=project, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "failed to load" not in shown.stderr, shown.stderr
    return project / "page" / "index.html"


def screenshot(page: Path, out: Path) -> np.ndarray:
    subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: a CDN script fails to load
            "--virtual-time-budget=15000",
            "--window-size=1000,2000",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image - np.array(colour)).max(axis=-1) <= 12).sum())


@pytest.mark.slow
def test_plots_show_draws_the_loss_curves_offline_and_the_default_page_does_not(tmp_path):
    offline_page = project_plots(tmp_path, template=True)
    html = offline_page.read_text()
    assert "<script src=" not in html and "cdn.jsdelivr" not in html  # Vega is in the page itself
    for title in ("L1 of a*b* per epoch", "Hue agreement on the val photographs", "L1 (a*b* / 110)"):
        assert title in html
    drawn = screenshot(offline_page, tmp_path / "offline.png")
    assert pixels_of(drawn, WORKSPACE_LINE) > 1000  # ~1,800 with the four charts drawn

    cdn_page = project_plots(tmp_path, template=False)
    assert "cdn.jsdelivr" in cdn_page.read_text()
    blank = screenshot(cdn_page, tmp_path / "cdn.png")
    assert pixels_of(blank, WORKSPACE_LINE) == 0
