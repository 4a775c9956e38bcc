import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.models
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from colorizer import tracking
from colorizer.colorize.bulk import colorize
from colorizer.config import ColorizeOptions
from colorizer.serving import pyfunc as serving
from colorizer.training.checkpoints import load_checkpoint
from tests.helpers import (
    PROGRAMS,
    colourful,
    encode,
    free_port,
    run_train,
    start_server,
    stop_server,
    tiny_params,
    wait_for_files,
    wait_until_up,
)


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


def test_the_logged_model_is_registered_and_served_over_http_as_colorize_writes_it(tmp_path, mlflow_store):
    """`mlflow models serve` of the registered model answers a real HTTP request with the same pixels
    that `colorizer colorize --format PNG` writes for the photo (full size, its own L)."""
    from colorizer.training.checkpoints import PRETRAINED_DIR

    with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False):
        model_uri = serving.log_model(PRETRAINED_DIR)
    info = mlflow.models.get_model_info(model_uri)
    assert [(c.name, c.type.name) for c in info.signature.inputs.inputs] == [("image", "binary")]
    assert [(c.name, c.type.name) for c in info.signature.outputs.inputs] == [
        ("colorized", "binary"),
        ("error", "string"),
    ]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"torch", "numba", "numpy", "pillow", "mlflow"}
    assert not any("+" in r for r in requirements)  # a version PyPI serves: no local label such as +cpu
    [version] = MlflowClient(mlflow_store).search_model_versions("name='colorizer'")
    assert int(version.version) == 1

    photo = tmp_path / "in" / "scan.jpg"
    photo.parent.mkdir()
    photo.write_bytes(encode(Image.fromarray(colourful(150, 100)).convert("L"), "JPEG", quality=90))
    colorize(photo, tmp_path / "out", PRETRAINED_DIR, ColorizeOptions(format="PNG", workers=1))
    expected = np.asarray(Image.open(tmp_path / "out" / "scan.png"))

    port = free_port()
    venv_bin = os.path.dirname(sys.executable)  # it starts `uvicorn` from PATH, as in an activated venv
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "models:/colorizer/1", "-p", str(port), "--env-manager", "local"],
        env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_store, "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", server, seconds=120)
        rows = [[base64.b64encode(b"not an image").decode()], [base64.b64encode(photo.read_bytes()).decode()]]
        body = {"dataframe_split": {"columns": ["image"], "data": rows}}
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            [refused, prediction] = json.load(response)["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert refused.get("colorized") is None and refused["error"]  # the bad row says why; the good one is answered
    assert prediction["error"] == "" and "not an image" in refused["error"].lower()
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["colorized"]))))
    assert served.shape == (100, 150, 3)
    np.testing.assert_array_equal(served, expected)
    assert np.abs(served.astype(int) - served.mean(axis=2, keepdims=True)).mean() > 1  # colours, not grey


@pytest.fixture
def mlflow_server(tmp_path):
    server, url = start_server(tmp_path, free_port())
    yield url
    stop_server(server)


def test_a_server_that_stops_mid_training_is_one_line_and_the_rerun_continues_its_run(
    tiny_shards, tmp_path, monkeypatch
):
    port = free_port()
    server, url = start_server(tmp_path, port)
    environment = os.environ | {"MLFLOW_TRACKING_URI": url, "DVC_ROOT": str(tmp_path)}
    trainer = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "train_until_stopped.py"), str(tiny_shards), str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_files(trainer, tmp_path / "state" / "checkpoint.pt")
        stop_server(server)
        started = time.monotonic()
        code = trainer.wait(timeout=120)
    finally:
        trainer.kill()
    errors = trainer.stderr.read()
    assert code == 2 and time.monotonic() - started < 30, errors[-2000:]
    lines = [line for line in errors.splitlines() if line.startswith("colorizer train:")]
    assert len(lines) == 1 and "the tracking server does not answer" in lines[0] and "Traceback" not in errors
    kept = load_checkpoint(tmp_path / "state" / "checkpoint.pt")["epoch"]

    server, url = start_server(tmp_path, port)  # the same store, back up
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))
        run_train(tiny_params(epochs=kept + 1), tiny_shards, tmp_path)
        client = MlflowClient(url)
        stopped, run = client.search_runs(
            [client.get_experiment_by_name("colorizer").experiment_id], order_by=["start_time"]
        )
        # fewer epochs than the stopped training's params: a run of its own, continuing that one's history
        assert run.info.status == "FINISHED" and run.data.tags["continued_from"] == stopped.info.run_id
        assert stopped.info.status == "KILLED"  # its trainer is gone: closed by the next training
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/g_l1")]
        assert steps == list(range(1, kept + 2))
    finally:
        stop_server(server)


def test_training_logs_through_a_real_mlflow_server(tiny_shards, tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # 10 s by default: longer than this run
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    final = run_train(tiny_params(epochs=2), tiny_shards, tmp_path / "out")
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/g_l1"] == pytest.approx(final["val_g_l1"])
    assert "system/cpu_utilization_percentage" in run.data.metrics  # system metrics are on
    assert (tmp_path / "server-artifacts").is_dir() and not (tmp_path / "mlflow.db").exists()


def test_a_tracking_server_that_does_not_answer_is_one_line_at_once(monkeypatch, tiny_shards, tmp_path):
    import time

    from colorizer.config import UserError, parse_params
    from colorizer.training.train import train

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    params = parse_params({"model": {"width_multiplier": 0.125}, "train": {"epochs": 1, "batch_size": 4}})
    started = time.monotonic()
    with pytest.raises(UserError, match="does not answer"):
        train(params, tiny_shards, tmp_path / "model", tmp_path / "state", tmp_path / "p.csv", tmp_path / "m.json")
    assert time.monotonic() - started < 30


def test_a_copied_workspace_logs_artifacts_under_its_own_root(tiny_shards, tmp_path, monkeypatch):
    import shutil

    first, second = tmp_path / "repo", tmp_path / "copy"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(first))
    run_train(tiny_params(epochs=1), tiny_shards, first / "out")
    shutil.copytree(first, second)
    before = sorted(p.relative_to(first) for p in (first / "mlartifacts").rglob("*"))
    monkeypatch.setenv("DVC_ROOT", str(second))
    run_train(tiny_params(epochs=1, lr=1.0e-3), tiny_shards, second / "out")
    assert sorted(p.relative_to(first) for p in (first / "mlartifacts").rglob("*")) == before  # untouched
    client = MlflowClient(f"sqlite:///{second / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])
    assert len(runs) == 2
    for run in runs:  # the new run, and the copied one too, point into the copy
        assert run.info.artifact_uri.startswith((second / "mlartifacts").as_uri() + "/")
        assert [a.path for a in client.list_artifacts(run.info.run_id, "images")]  # and find their files there


def test_a_damaged_store_is_one_line(tiny_shards, tmp_path, mlflow_store):
    from colorizer.config import UserError

    (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    with pytest.raises(UserError, match=r"mlflow.db: the MLflow store is damaged .*move it aside"):
        run_train(tiny_params(epochs=1), tiny_shards, tmp_path / "out")


def test_a_locked_store_is_called_locked_not_damaged(tmp_path, mlflow_store):
    import sqlite3

    from colorizer.config import UserError

    with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False):
        pass  # the store exists, with MLflow's tables
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    try:
        with pytest.raises(
            UserError, match=r"mlflow.db: the MLflow store is locked by another process .*nothing is damaged"
        ):
            tracking.check_store(tmp_path / "mlflow.db")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_sigterm_in_the_middle_of_an_mlflow_write_still_ends_the_run_killed(mlflow_store):
    """SIGTERM (a cluster's time limit, a killed `dvc repro`) delivered while SQLite executes one of
    MLflow's writes takes effect once the write is done, and the run ends KILLED. Raised as SQLite
    returned, the KeyboardInterrupt made SQLAlchemy drop the connection without rolling back, so this
    very process held the store's write lock, ending the run failed with "database is locked" and the
    run stayed RUNNING; raised inside SQLite's callback here, it was lost (sqlite3 ignores errors
    there): either way the write must finish first."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from colorizer.runtime import setup_process

    setup_process()  # SIGTERM -> KeyboardInterrupt, as in the stage scripts
    fired = []

    def on_statement(statement: str) -> None:  # called by SQLite itself, inside the write
        if statement.lstrip().upper().startswith("INSERT INTO METRICS") and not fired:
            fired.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)

    def trace_writes(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.set_trace_callback(on_statement)

    event.listen(Engine, "connect", trace_writes)
    try:
        with pytest.raises(KeyboardInterrupt):
            with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False) as run_id:
                for step in range(100):
                    tracking.log_metrics({"loss": 1.0 / (step + 1)}, step)
    finally:
        event.remove(Engine, "connect", trace_writes)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert fired, "the signal was never sent: no metric was written"
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics["loss"] == 1.0  # the write under way when the signal came, then no more


def test_registry_versions_carry_their_scores_and_the_alias_best_follows_the_highest(
    tmp_path, mlflow_store, monkeypatch
):
    from colorizer.training.checkpoints import PRETRAINED_DIR

    client = MlflowClient(mlflow_store)
    holders = []
    for number, score in enumerate((0.3, 0.2, 0.5), start=1):
        monkeypatch.setenv("DVC_EXP_NAME", f"exp-{number}")
        params = {"model": {"head": "bins"}, "train": {"epochs": number}, "fetch": {"sources": ["corpus"]}}
        with tracking.training_run(params, f"fingerprint-{number}", resume=False) as run_id:
            serving.log_model(PRETRAINED_DIR, scores={"score": score, "hue": 0.4, "psnr_gain": 1.0, "hue_spread": 0.1})
        holders.append(client.get_model_version_by_alias("colorizer", serving.BEST_ALIAS).version)
        version = client.get_model_version("colorizer", str(number))
        assert version.tags["choice_score"] == f"{score:.4f}" and version.tags["dvc_exp_name"] == f"exp-{number}"
        assert "choice_hue_spread" not in version.tags
        note = client.get_run(run_id).data.tags["mlflow.note.content"]
        assert f"`exp-{number}`" in note and "corpus" in note and "bins head" in note and f"{number} epochs" in note
    assert [int(v) for v in holders] == [1, 1, 3]


def test_the_served_model_bounds_pixels_and_photos_at_once(tmp_path, mlflow_store, monkeypatch):
    import threading

    import pandas as pd

    from colorizer.training.checkpoints import PRETRAINED_DIR

    monkeypatch.setenv(serving.MAX_PIXELS_VARIABLE, "1000000")
    with tracking.training_run({"model": {"x": 1}}, "fingerprint", resume=False):
        model = mlflow.pyfunc.load_model(serving.log_model(PRETRAINED_DIR, registered_model_name=None))
    big, small = (encode(Image.new("L", size, 90)) for size in ((1250, 1000), (64, 48)))
    rows = model.predict(pd.DataFrame({"image": [big, small]}))
    assert rows.colorized[0] is None and "1250x1000" in rows.error[0] and serving.MAX_PIXELS_VARIABLE in rows.error[0]
    assert rows.error[1] == "" and rows.colorized[1]

    slots = model.unwrap_python_model().slots  # COLORIZER_SERVE_CONCURRENCY unset: one photo at a time
    slots.acquire()  # a photo being colorized
    answered = threading.Event()
    waiting = threading.Thread(target=lambda: (model.predict(pd.DataFrame({"image": [small]})), answered.set()))
    waiting.start()
    assert not answered.wait(2.0)  # the second photo waits for the slot
    slots.release()
    assert answered.wait(60.0)
    waiting.join()


def test_register_logs_the_trained_model_into_its_training_run(tiny_shards, tmp_path, mlflow_store, caplog):
    """The register stage: training logs no model; register finds the run that exported the model
    (by its sha256) and logs it there as a served model, a registered version tagged with the choice
    scores of metrics/train.json. A model no run of this store exported is one warning, no version."""
    from colorizer.serving.register import register
    from colorizer.training.checkpoints import PRETRAINED_DIR

    run_train(tiny_params(epochs=1), tiny_shards, tmp_path)
    client = MlflowClient(mlflow_store)
    [run] = client.search_runs(client.get_experiment_by_name(tracking.experiment_name()).experiment_id)
    assert not client.search_registered_models()  # training alone registers nothing
    uri = register(tmp_path / "model", tmp_path / "train.json")
    model = mlflow.models.get_model_info(uri)
    assert model.run_id == run.info.run_id
    [version] = client.search_model_versions("name='colorizer'")
    scores = json.loads((tmp_path / "train.json").read_text())["choice"]
    assert version.run_id == run.info.run_id and version.tags["choice_score"] == f"{scores['score']:.4f}"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    with caplog.at_level("WARNING", logger="colorizer"):
        assert register(PRETRAINED_DIR, tmp_path / "train.json") is None
    assert "no MLflow run in" in caplog.text and "nothing registered" in caplog.text
    assert len(client.search_model_versions("name='colorizer'")) == 1
