"""Faults of the pipeline's own processes, with real `dvc` and real signals in a temp copy."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import wait_for_files
from tests.integration.repo import TINY_PIPELINE, clone_repo, env, git, run, set_params

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    """Running, not exited (an exited child of a dead parent may linger as a zombie until reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_killing_dvc_stops_its_trainer_and_the_next_repro_resumes(tmp_path):
    root = clone_repo(tmp_path / "repo")
    set_params(root, **TINY_PIPELINE)
    set_params(root, train={"epochs": 300})  # minutes: it must not end by itself during the test
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=test", "commit", "-qam", "long tiny training")
    (root / "data").mkdir()
    run(root, "dvc", "repro", "shard")

    state = root / "work" / "train"
    # /bin/sh as the stage's shell, as where SHELL is unset: dash stays between dvc and torchrun (bash exec's)
    dvc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=root,
        env={**env(), "SHELL": "/bin/sh"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_files(dvc, state / "checkpoint.pt", state / ".trainer")
    trainer = int(re.match(r"pid (\d+)", (state / ".trainer").read_text()).group(1))
    assert alive(trainer)

    dvc.send_signal(signal.SIGKILL)  # only dvc: its trainer is left without a parent
    dvc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(trainer):
        assert time.monotonic() < deadline, "the trainer went on alone after dvc died"
        time.sleep(0.2)

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [killed] = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])
    assert killed.info.status == "KILLED"  # closed by the trainer itself on its way out
    epochs_done = len(list((state / "samples").glob("epoch_*.png")))
    assert 1 <= epochs_done < 10
    # fewer epochs: the checkpoint is resumed (the epoch count is not part of its fingerprint), in an
    # MLflow run of its own (its params differ) that continues the killed one
    set_params(root, train={"epochs": 10})
    resumed = run(root, "dvc", "repro", "train")
    assert "resuming from" in resumed.stderr + resumed.stdout
    runs = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id], order_by=["start_time"])
    assert [r.info.run_id for r in runs][0] == killed.info.run_id and len(runs) == 2
    assert runs[1].info.status == "FINISHED" and runs[1].data.tags["continued_from"] == killed.info.run_id
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert os.path.getsize(root / "metrics" / "train.json") > 0
