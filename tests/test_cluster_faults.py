"""The engines' promise that a lost machine costs only its work in flight, on real clusters on
loopback: a Ray cluster that loses the node running the model mid-job, and a 2-node torchrun
training that loses a rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorizer.colorize.report import REPORT_NAME

HERE = Path(__file__).parent
PHOTOS = 96


@pytest.mark.slow
def test_losing_the_ray_node_that_runs_the_model_costs_no_photo(tmp_path):
    pytest.importorskip("ray.data")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    # enough photos that the model actor is still at work when the first outputs are written
    for i in range(PHOTOS):
        Image.fromarray((rng.random((240, 320)) * 255).astype(np.uint8)).save(src / f"p{i:03d}.png")
    (src / "broken.png").write_bytes(b"not an image")
    done = subprocess.run(
        [sys.executable, HERE / "ray_node_loss.py", tmp_path, "4"],
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ | {"PYTHONPATH": str(HERE.parent)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    found = json.loads(line.removeprefix("RESULT "))
    print(json.dumps({k: v for k, v in found.items() if k != "rows"}))  # the figures, with -s
    assert "error" not in found, found.get("error")
    assert found["killed_the_model_actors_node"] and found["written_before_kill"] >= 4
    assert found["seconds_to_see_it_dead"] is not None
    rows = {row["path"]: row["status"] for row in found["rows"]}
    assert rows == {**{f"p{i:03d}.png": "done" for i in range(PHOTOS)}, "broken.png": "failed"}  # a row for each
    for i in range(PHOTOS):  # every output whole
        with Image.open(tmp_path / "dst" / f"p{i:03d}.png") as out:
            out.load()
            assert out.size == (320, 240)
    assert (tmp_path / "dst" / REPORT_NAME).is_file()


def two_node_command(port: int, node: str, params: Path, root: Path, shards: Path) -> list[str]:
    """One of two torchrun agents ("nodes", one rank each) meeting at a c10d rendezvous on loopback;
    node A hosts its store. A failed rank may be restarted once (both nodes' ranks restart)."""
    from tests.helpers import train_command

    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--max-restarts=1"),
        *("--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=faults"),
        f"--rdzv-conf=is_host={node == 'A'},join_timeout=120",
        "--monitor-interval=0.5",
        *train_command(params, root),
        *("--shards", str(shards)),
    ]


@pytest.mark.slow
def test_a_killed_rank_of_a_two_node_torchrun_resumes_to_the_uninterrupted_model(tiny_shards, tmp_path):
    import signal
    import time

    import psutil

    from colorizer.training.checkpoints import load_checkpoint, sha256_of
    from tests.helpers import REPO, free_port, torchrun, train_command, write_params

    # one thread per rank: the same arithmetic in both runs (a conv's sums depend on the threads)
    env = os.environ | {"DVC_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    params = write_params(tmp_path / "params.yaml", epochs=6, threads=1)
    torchrun(2, *train_command(params, tmp_path / "whole"), "--shards", str(tiny_shards), env=env)

    port, root = free_port(), tmp_path / "killed"
    agents = {
        node: subprocess.Popen(
            two_node_command(port, node, params, root, tiny_shards),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in "AB"
    }
    try:
        checkpoint = root / "state" / "checkpoint.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() and time.monotonic() < deadline:
            assert all(agent.poll() is None for agent in agents.values()), "an agent ended before the first epoch"
            time.sleep(0.1)
        [rank] = psutil.Process(agents["B"].pid).children()  # node B's one training process
        killed_after = load_checkpoint(checkpoint)["epoch"]
        rank.send_signal(signal.SIGKILL)
        codes = {node: agent.wait(timeout=600) for node, agent in agents.items()}
        errors = {node: agent.stderr.read() for node, agent in agents.items()}
    finally:
        for agent in agents.values():
            agent.kill()
    (tmp_path / "A.log").write_text(errors["A"])
    (tmp_path / "B.log").write_text(errors["B"])
    assert codes == {"A": 0, "B": 0}, errors["B"][-3000:] + errors["A"][-3000:]
    print(f"rank killed after epoch {killed_after} of 6; both ranks restarted and resumed")
    assert killed_after < 6
    assert "resuming from" in errors["A"] + errors["B"]  # the restarted ranks started from the checkpoint
    assert load_checkpoint(checkpoint)["epoch"] == 6
    assert sha256_of(root / "model" / "generator.safetensors") == sha256_of(
        tmp_path / "whole" / "model" / "generator.safetensors"
    )
