import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from colorizer import tracking
from colorizer.models import Generator
from tests.test_train import run_train, tiny_params


def test_default_store_is_the_repo_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "parent-repo"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'parent-repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"


def test_flatten_params():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_a_stray_mlruns_folder_does_not_break_a_run(tiny_shards, tmp_path, mlflow_store, monkeypatch):
    (tmp_path / "mlruns" / "0").mkdir(parents=True)  # what an old file-store run leaves behind
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    monkeypatch.chdir(tmp_path)
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path / "out")
    [run] = MlflowClient(mlflow_store).search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_logged_generator_loads_back_and_colorizes_another_size(tmp_path, mlflow_store):
    generator = Generator([8, 16, 16, 16, 16], 32).eval()
    with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False):
        model_uri = tracking.log_generator(generator, 32)
    loaded = mlflow.pytorch.load_model(model_uri)
    for shape in [(1, 1, 32, 32), (2, 1, 64, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), generator(x), atol=1e-5, rtol=1e-4)
    assert np.asarray(mlflow.pyfunc.load_model(model_uri).predict(np.zeros((1, 1, 64, 64), np.float32))).shape == (
        1,
        2,
        64,
        64,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"mlflow server exited: {server.stderr.read()[-2000:]}") from None
            time.sleep(0.3)
    else:
        server.kill()
        raise AssertionError("mlflow server did not come up in 90 s")
    yield url
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def test_training_logs_through_a_real_mlflow_server(tiny_shards, tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    final = run_train(tiny_params(epochs=2), tiny_shards, tmp_path / "out")
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_g_l1"] == pytest.approx(final["val_g_l1"])
    assert (tmp_path / "server-artifacts").is_dir() and not (tmp_path / "mlflow.db").exists()


def test_a_tracking_server_that_does_not_answer_is_one_line_at_once(monkeypatch, tiny_shards, tmp_path):
    import socket
    import time

    from colorizer.config import UserError, parse_params
    from colorizer.train import train

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    params = parse_params({"model": {"width_multiplier": 0.125}, "train": {"epochs": 1, "batch_size": 4}})
    started = time.monotonic()
    with pytest.raises(UserError, match="does not answer"):
        train(params, tiny_shards, tmp_path / "model", tmp_path / "state", tmp_path / "p.csv", tmp_path / "m.json")
    assert time.monotonic() - started < 30
