"""The logged model serves from a fresh virtual environment built from its own requirements.txt alone:
no colorizer installed there, the code travels with the model (models-from-code), the packages come
from the registries pip is configured with (pip's cache makes a rerun quick)."""

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from colorizer import tracking
from colorizer.colorize.bulk import colorize
from colorizer.config import ColorizeOptions
from colorizer.serving import pyfunc as serving
from colorizer.training.checkpoints import PRETRAINED_DIR
from tests.helpers import PROGRAMS, colourful, encode


@pytest.mark.slow
def test_the_logged_model_serves_from_a_fresh_venv_of_its_own_requirements(tmp_path, mlflow_store):
    with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False):
        model_uri = serving.log_model(PRETRAINED_DIR)
    model = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "logged")))
    assert "loaders.code_model" in (model / "MLmodel").read_text()  # code, not a pickled object

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "-r", model / "requirements.txt"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert subprocess.run([venv / "bin" / "python", "-c", "import colorizer"], env=env).returncode != 0

    photo = tmp_path / "scan.jpg"
    photo.write_bytes(encode(Image.fromarray(colourful(150, 100)).convert("L"), "JPEG", quality=90))
    served = subprocess.run(
        [venv / "bin" / "python", str(PROGRAMS / "predict_with_the_logged_model.py"), model, photo],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    refused, answered = json.loads(served.stdout.strip().splitlines()[-1])
    assert refused["colorized"] is None and "not an image" in refused["error"].lower()
    assert answered["error"] == ""

    colorize(photo, tmp_path / "out", PRETRAINED_DIR, ColorizeOptions(format="PNG", workers=1))
    expected = np.asarray(Image.open(tmp_path / "out" / "scan.png"))
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(answered["colorized"]))))
    np.testing.assert_array_equal(picture, expected)  # what `colorizer colorize` writes, from another env
