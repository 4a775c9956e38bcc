"""Object storage for real: a moto S3 server on 127.0.0.1 (the session's `s3_server`) as the place
colorize reads and writes with both engines, and as MLflow's artifact store."""

import io
import zipfile

import numpy as np
import pytest
import s3fs
from mlflow.tracking import MlflowClient
from PIL import Image

from colorizer.cli import main
from colorizer.colorize.bulk import colorize
from colorizer.colorize.report import HISTORY_NAME, REPORT_NAME
from colorizer.config import ColorizeOptions, UserError
from colorizer.serving.register import register
from colorizer.training.train import train
from tests.helpers import colourful, free_port, start_server, stop_server, tiny_params

pytestmark = pytest.mark.slow


def photos(folder):
    (folder / "roll 2").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(colourful(60 + 7 * i, 40, seed=i)).convert("L").save(
            folder / ("roll 2" if i % 2 else "") / f"{i}.jpg"
        )
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    return folder


def listing(fs, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path[len(root) + 1 :]: fs.cat_file(path) for path in fs.find(root)}


def test_colorize_reads_and_writes_s3_with_both_engines(tmp_path, model_dir, s3_server, ray_cluster):
    fs = s3_server.bucket("archive")
    src = photos(tmp_path / "src")
    fs.put(str(src), "archive/scans", recursive=True)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as z:
        for path in sorted(src.rglob("*.*")):
            z.write(path, path.relative_to(src).as_posix())
    fs.pipe_file("archive/scans.zip", packed.getvalue())
    on_disk = tmp_path / "on-disk"
    colorize(src, on_disk, model_dir, ColorizeOptions(workers=1))
    expected = {p.relative_to(on_disk).as_posix(): p.read_bytes() for p in on_disk.rglob("*.*")}
    del expected[REPORT_NAME], expected[HISTORY_NAME]

    runs = {
        "local": ("s3://archive/scans", {}),
        "ray": ("s3://archive/scans", {"engine": "ray"}),
        "zip-chain": ("zip::s3://archive/scans.zip", {}),
        "zip-object": ("s3://archive/scans.zip", {"engine": "ray"}),
    }
    for name, (source, options) in runs.items():
        summary = colorize(source, f"s3://archive/out-{name}", model_dir, ColorizeOptions(workers=1, **options))
        written = listing(fs, f"archive/out-{name}")
        report = written.pop(REPORT_NAME).decode()
        assert written.pop(HISTORY_NAME).decode().splitlines()[1].split(",")[1] == options.get("engine", "local")
        assert written == expected, name  # the same bytes as on a local disk, at the same relative paths
        assert "bad.png,failed,not an image" in report and (summary.count("done"), summary.count("failed")) == (5, 1)

    again = colorize("s3://archive/scans", "s3://archive/out-local", model_dir, ColorizeOptions(engine="ray"))
    assert (again.count("skipped"), again.count("done")) == (5, 0)  # known from one listing of DST


def test_storage_mistakes_are_one_line(tmp_path, model_dir, s3_server, capsys, monkeypatch):
    fs = s3_server.bucket("mistakes")
    fs.pipe_file("mistakes/in/a.jpg", b"x")
    assert main(["colorize", "s3://mistakes/in", "s3://mistakes/in/out", "--model", str(model_dir)]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["colorize", "s3://no-such-bucket/in", str(tmp_path / "out"), "--model", str(model_dir)]) == 2
    assert "s3://no-such-bucket/in: no such folder or archive" in capsys.readouterr().err
    with pytest.raises(UserError, match="gopher"):
        colorize("gopher://host/x", tmp_path / "out", model_dir)

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()  # the cached clients hold the credentials they found
    assert main(["colorize", "s3://mistakes/in", str(tmp_path / "out"), "--model", str(model_dir)]) == 2
    assert "s3://mistakes/in: cannot read it (NoCredentialsError" in capsys.readouterr().err
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_mlflow_server_keeps_the_runs_artifacts_in_the_bucket(tiny_shards, tmp_path, s3_server, monkeypatch):
    fs = s3_server.bucket("mlflow-artifacts")
    server, url = start_server(tmp_path, free_port(), artifacts="s3://mlflow-artifacts/runs")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))
        out = tmp_path / "out"
        train(tiny_params(epochs=1), tiny_shards, out / "model", out / "state", out / "plots.csv", out / "m.json")
        register(out / "model", out / "m.json")  # the register stage: the model into the training's run
        client = MlflowClient(url)
        [run] = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])
    finally:
        stop_server(server)
    stored = listing(fs, "mlflow-artifacts/runs")
    assert any(name.endswith("/MLmodel") for name in stored)  # the logged model, in the bucket
    [weights] = [data for name, data in stored.items() if name.endswith("generator.safetensors")]
    assert weights[:8] != b"\0" * 8 and len(weights) > 1000
    assert not (tmp_path / "server-artifacts").exists() and run.info.status == "FINISHED"
    assert np.isfinite(run.data.metrics["val/g_l1"])
