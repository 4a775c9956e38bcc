"""The `colorizer` command's conventions: choices in --help, flags checked before torch is imported,
environment defaults, shell completion, and what a run leaves for the next one (report, history)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from colorizer.cli import build_parser
from colorizer.colorize.bulk import colorize
from colorizer.colorize.report import HISTORY_NAME, REPORT_NAME
from colorizer.config import ColorizeOptions
from tests.helpers import colourful, encode

COLORIZER = [sys.executable, "-m", "colorizer.cli"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*COLORIZER, *args], capture_output=True, text=True, env=os.environ | (env or {}))


def test_enumerated_flags_show_their_choices_and_the_environment_defaults():
    shown = run_cli("colorize", "--help").stdout
    for choices in ("{auto,threads,processes}", "{JPEG,PNG,TIFF,WEBP,BMP,GIF}", "{local,ray}"):
        assert choices in shown
    assert "COLORIZER_MODEL" in shown and "COLORIZER_DEVICE" in shown and "COLORIZER_WORKERS" in shown
    refused = run_cli("colorize", "a", "b", "--worker-kind", "fibres")
    assert refused.returncode == 2 and "invalid choice: 'fibres'" in refused.stderr


def test_a_bad_flag_is_one_line_before_torch_is_imported(tmp_path):
    probe = (
        "import sys\nfrom colorizer.cli import main\n"
        f"rc = main(['colorize', {str(tmp_path)!r}, {str(tmp_path / 'out')!r}, '--quality', '500'])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"]  # exit 2, and torch never loaded
    [line] = done.stderr.strip().splitlines()
    assert "quality" in line


def test_environment_variables_set_the_defaults_and_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("COLORIZER_MODEL", str(tmp_path / "my-model"))
    monkeypatch.setenv("COLORIZER_DEVICE", "cpu")
    monkeypatch.setenv("COLORIZER_WORKERS", "3")
    args = build_parser().parse_args(["colorize", "src", "dst"])
    assert (args.model, args.device, args.workers) == (tmp_path / "my-model", "cpu", 3)
    args = build_parser().parse_args(["colorize", "src", "dst", "--workers", "1", "--device", "auto"])
    assert (args.workers, args.device) == (1, "auto")

    photo = tmp_path / "src" / "a.png"
    photo.parent.mkdir()
    photo.write_bytes(encode(Image.fromarray(colourful(40, 30)).convert("L")))
    failed = run_cli(
        "colorize", str(photo.parent), str(tmp_path / "out"), env={"COLORIZER_MODEL": str(tmp_path / "my-model")}
    )
    assert failed.returncode == 2 and "my-model" in failed.stderr  # the model the variable named
    assert len(failed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_cover_the_commands_and_flags(shell, tmp_path):
    script = run_cli("completion", shell)
    assert script.returncode == 0
    assert "colorize" in script.stdout and "--worker-kind" in script.stdout
    if shell == "bash":  # and it is valid bash
        (tmp_path / "complete.sh").write_text(script.stdout)
        assert subprocess.run(["bash", "-n", str(tmp_path / "complete.sh")]).returncode == 0


def test_colorize_returns_its_rows_and_a_rerun_appends_to_the_run_history(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "b.png"):
        (src / name).write_bytes(encode(Image.fromarray(colourful(40, 30)).convert("L")))
    (src / "bad.png").write_bytes(b"not an image")
    summary = colorize(src, tmp_path / "out", options=ColorizeOptions(workers=1))
    rows = list(summary)
    assert [(row.path, row.status) for row in rows] == [("a.png", "done"), ("b.png", "done"), ("bad.png", "failed")]
    assert rows[0].width == 40 and len(summary) == 3
    with open(tmp_path / "out" / REPORT_NAME, newline="") as f:
        assert [(r["path"], r["status"]) for r in csv.DictReader(f)] == [(row.path, row.status) for row in rows]

    colorize(src, tmp_path / "out", options=ColorizeOptions(workers=1))
    with open(tmp_path / "out" / HISTORY_NAME, newline="") as f:
        history = list(csv.DictReader(f))
    assert [(h["engine"], h["done"], h["skipped"], h["failed"]) for h in history] == [
        ("local", "2", "0", "1"),
        ("local", "0", "2", "1"),
    ]
    assert all(h["finished_utc"].endswith("+00:00") for h in history)
    assert Path(tmp_path / "out" / "a.png").is_file()
