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

from colorizer.colorize import REPORT_NAME

HERE = Path(__file__).parent


@pytest.mark.slow
def test_losing_the_ray_node_that_runs_the_model_costs_no_photo(tmp_path):
    pytest.importorskip("ray.data")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
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
    assert rows == {**{f"p{i:03d}.png": "done" for i in range(32)}, "broken.png": "failed"}  # a row for every input
    for i in range(32):  # every output whole
        with Image.open(tmp_path / "dst" / f"p{i:03d}.png") as out:
            out.load()
            assert out.size == (320, 240)
    assert (tmp_path / "dst" / REPORT_NAME).is_file()
