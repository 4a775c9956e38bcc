"""A throwaway copy of this repository, as a fresh clone would have it, for real `dvc`/`make` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# params.yaml overrides that make the whole pipeline take seconds
TINY_PIPELINE = {
    "augment": {"image_size": 32, "copies_per_image": 2},
    "model": {"width_multiplier": 0.125},
    "train": {"epochs": 2, "batch_size": 4},
}


def clone_repo(target: Path) -> Path:
    """Copy what git would hand a new user (tracked + untracked-not-ignored files): no data/, no DVC cache."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git(target, "init", "-q")
    git(target, "add", "-A")
    git(target, "-c", "user.email=t@example.com", "-c", "user.name=test", "commit", "-qm", "clone")
    return target


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment['PATH']}"
    environment["NO_ALBUMENTATIONS_UPDATE"] = "1"
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


def run(
    cwd: Path, *command: str, check: bool = True, timeout: float = 900, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    environment = env() | (env_extra or {})
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def set_params(root: Path, **sections: dict) -> None:
    """Overwrite keys of params.yaml (section -> {key: value}) in the copy."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_run(root: Path) -> subprocess.CompletedProcess:
    """`make run` with this test's venv (STAMP= skips the install step, which the venv already had)."""
    return run(root, "make", "run", f"VENV={VENV_BIN.parent}", "STAMP=")
