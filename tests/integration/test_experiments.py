"""The whole pipeline with real DVC and MLflow in a temp copy: `make run`, then `dvc exp run -S`."""

import json
import sqlite3
import subprocess
from pathlib import Path

import dvc.api
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.repo import TINY_PIPELINE, clone_repo, env, make_run, run, set_params

pytestmark = pytest.mark.slow
# README's comparison of experiments: what changed, and the headline figures
COMPARE_COMMAND = ("dvc", "exp", "show", "--only-changed", "--drop", "Created|work/")


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    root = clone_repo(tmp_path_factory.mktemp("exp") / "repo")
    set_params(root, **TINY_PIPELINE)
    run(root, "git", "commit", "-qam", "tiny params")
    make_run(root)
    run(root, "git", "add", "-A")  # as a user would: commit dvc.lock and the metrics of the baseline
    run(root, "git", "commit", "-qm", "baseline results")
    return root


def mlflow_runs(root):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("colorizer").experiment_id])


def test_make_run_trains_evaluates_and_tracks(pipeline_repo):
    root = pipeline_repo
    headline = json.loads((root / "metrics" / "evaluate.json").read_text())
    evaluation = json.loads((root / "work" / "evaluate" / "summary.json").read_text())
    for split in ("val", "test"):
        figures = evaluation[split].get("photo", evaluation[split])["model"]
        assert headline.get(split, {"hue": figures["hue_agreement"]})["hue"] == figures["hue_agreement"]
        assert {"images", "model", "baseline", "photo"} <= set(evaluation[split])
        for method in ("model", "baseline"):
            assert {"l1", "l1_lab", "gan_loss", "psnr", "ssim", "colourfulness_gap", "hue_agreement"} <= set(
                evaluation[split][method]
            )
    photos = evaluation["test"]["photo"]
    assert set(headline) == {"test"} and set(headline["test"]) == {"hue", "psnr_gain", "cf_ratio"}
    assert headline["test"]["psnr_gain"] == pytest.approx(
        photos["model"]["psnr"] - photos["baseline"]["psnr"], abs=1e-3
    )
    assert evaluation["val"]["baseline"]["colourfulness"] < 1.0  # ab = 0 is grey
    assert (root / "plots" / "train.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert sorted(p.name for p in (root / "work" / "train" / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    colorized = json.loads((root / "metrics" / "showcase.json").read_text())
    assert colorized["done"] == evaluation["test"]["images"] and colorized["failed"] == 0
    assert (root / "plots" / "contact_sheet.png").stat().st_size > 0
    assert (root / "plots" / "samples.png").stat().st_size > 0
    # the model artifact, once a version is registered (GTO tags), as another project would find it
    run(root, "gto", "register", "colorizer")
    assert dvc.api.artifacts_show("colorizer", repo=str(root))["path"] == "work/model"
    [mlflow_run] = mlflow_runs(root)
    assert mlflow_run.info.status == "FINISHED"
    assert "eval/val/all/l1" in mlflow_run.data.metrics and "val/g_l1" in mlflow_run.data.metrics
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [version] = client.search_model_versions("name='colorizer'")  # the trained model, registered
    assert version.run_id == mlflow_run.info.run_id
    assert run(root, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."


def test_a_second_fresh_clone_reproduces_every_tracked_output(pipeline_repo, tmp_path):
    """Nothing run-specific (run ids, images/s) in what DVC tracks: a second `make run` on a fresh clone
    writes the same dvc.lock, metrics and plots, so `git status` stays clean."""
    root = clone_repo(tmp_path / "again")
    set_params(root, **TINY_PIPELINE)
    run(root, "git", "commit", "-qam", "tiny params")
    make_run(root)
    for tracked in ("dvc.lock", "metrics/train.json", "metrics/evaluate.json", "plots/train.csv"):
        baseline = run(pipeline_repo, "git", "show", f"HEAD:{tracked}").stdout
        assert (root / tracked).read_text() == baseline, f"{tracked} differs between two runs"


def test_an_s3_remote_carries_the_pipeline_to_a_fresh_clone(pipeline_repo, tmp_path, s3_server):
    """README's "Data and models in a bucket": the baseline's data, shards and model pushed to a DVC
    remote in a bucket; a fresh clone pulls them and has nothing to re-run. The credentials live in
    each clone's .dvc/config.local (never committed), not in the environment."""
    root = pipeline_repo
    fs = s3_server.bucket("dvc-remote")
    without_aws = {k: v for k, v in env().items() if not k.startswith("AWS_")}

    def dvc(cwd, *args):
        done = subprocess.run(["dvc", *args], cwd=cwd, env=without_aws, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def credentials(cwd):
        dvc(cwd, "remote", "modify", "--local", "store", "access_key_id", "testing")
        dvc(cwd, "remote", "modify", "--local", "store", "secret_access_key", "testing")

    dvc(root, "remote", "add", "-d", "store", "s3://dvc-remote/cache")
    dvc(root, "remote", "modify", "store", "endpointurl", s3_server.endpoint)
    credentials(root)
    run(root, "git", "commit", "-qm", "a remote in a bucket", ".dvc/config")
    dvc(root, "push")
    assert fs.find("dvc-remote/cache")

    fresh = tmp_path / "fresh"
    run(tmp_path, "git", "clone", "-q", str(root), str(fresh))
    assert not (fresh / ".dvc" / "config.local").exists()  # the credentials stayed out of git
    credentials(fresh)
    dvc(fresh, "pull")
    for output in ("work/model/generator.safetensors", "work/shards"):
        assert (fresh / output).exists(), output
    model = "work/model/generator.safetensors"
    assert (fresh / model).read_bytes() == (root / model).read_bytes()
    assert dvc(fresh, "status").strip() == "Data and pipelines are up to date."
    assert "Running stage" not in dvc(fresh, "repro")


def test_exp_run_and_exp_show_side_by_side(pipeline_repo):
    root = pipeline_repo
    ran = run(root, "dvc", "exp", "run", "-S", "train.epochs=1", "-n", "one-epoch")
    said = ran.stdout + ran.stderr  # no MLflow noise: the model is logged as code, without download bars
    assert "CloudPickle" not in said and "Downloading artifacts" not in said, said[-3000:]
    shown = json.loads(run(root, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "one-epoch" in text and "metrics/evaluate.json" in text and "metrics/train.json" in text
    # the table a person reads (README's command) fits a 160-column terminal, every cell whole
    table = run(root, *COMPARE_COMMAND, "--no-pager", env_extra={"COLUMNS": "160"}).stdout
    assert "one-epoch" in table and "train.epochs" in table and "…" not in table, table
    assert max(len(line) for line in table.splitlines()) <= 160, table
    metrics_lines = run(root, "dvc", "metrics", "show").stdout.splitlines()
    assert max(len(line) for line in metrics_lines) < 200, metrics_lines
    trainings = [node for node in _walk(shown) if isinstance(node, dict) and "epochs" in node]
    assert {1, 2} <= {node["epochs"] for node in trainings}  # the baseline's 2 epochs and the experiment's 1
    rendered = run(root, "dvc", "plots", "show", "--json").stdout
    assert "train_g_l1" in rendered
    # the image plots of the baseline and the experiment, side by side
    compared = json.loads(run(root, "dvc", "plots", "diff", "HEAD", "one-epoch", "--json").stdout)["data"]
    for image in ("plots/samples.png", "plots/contact_sheet.png"):
        images = {entry["revisions"][0]: Path(entry["url"]) for entry in compared[image]}
        assert sorted(images) == ["HEAD", "one-epoch"], image
        assert all(path.stat().st_size > 0 for path in images.values()), image


def test_temp_experiment_lands_in_the_repo_store(pipeline_repo):
    root = pipeline_repo
    before = len(mlflow_runs(root))
    run(root, "dvc", "exp", "run", "--temp", "-S", "train.lr=1.0e-3", "-n", "in-a-temp-copy")
    runs = mlflow_runs(root)
    assert len(runs) == before + 1
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.data.tags.get("dvc_exp_name") == "in-a-temp-copy" and newest.info.status == "FINISHED"
    assert newest.data.params["train.lr"] == "0.001"
    with sqlite3.connect(root / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == before + 1


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_exp_run_trains_on_two_ranks(pipeline_repo):
    """The train stage runs under torchrun: `-S train.nproc_per_node=2` is two DDP ranks (gloo)."""
    root = pipeline_repo
    done = run(root, "dvc", "exp", "run", "-S", "train.nproc_per_node=2", "-n", "two-ranks")
    assert "--nproc-per-node=2" in done.stdout + done.stderr
    shown = json.dumps(json.loads(run(root, "dvc", "exp", "show", "--json").stdout))
    assert "two-ranks" in shown
    [two_ranks] = [r for r in mlflow_runs(root) if r.data.tags.get("dvc_exp_name") == "two-ranks"]
    assert two_ranks.info.status == "FINISHED" and two_ranks.data.params["train.nproc_per_node"] == "2"


def test_an_experiment_that_resumes_another_is_a_run_of_its_own(pipeline_repo):
    """`dvc exp run -S train.epochs=3 -n quick`, then `-S train.epochs=5 -n quick5`: the second resumes
    the first one's checkpoint (same recipe, more epochs) but is another training, so another MLflow
    run, with its own params, name and registered version."""
    root = pipeline_repo
    run(root, "dvc", "exp", "run", "-S", "train.epochs=3", "-n", "quick")
    run(root, "dvc", "exp", "run", "-S", "train.epochs=5", "-n", "quick5")
    runs = {r.data.tags.get("dvc_exp_name"): r for r in mlflow_runs(root)}
    quick, quick5 = runs["quick"], runs["quick5"]
    assert quick.info.run_id != quick5.info.run_id
    assert (quick.data.params["train.epochs"], quick5.data.params["train.epochs"]) == ("3", "5")
    assert quick.info.run_name == "quick" and quick5.info.run_name == "quick5"
    assert quick5.data.tags["continued_from"] == quick.info.run_id
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(quick.info.run_id, "val/g_l1")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(quick5.info.run_id, "val/g_l1")] == [1, 2, 3, 4, 5]
    for experiment in (quick, quick5):  # evaluation logged once, into its own run
        assert len(client.get_metric_history(experiment.info.run_id, "eval/test/all/l1")) == 1
    versions = {v.run_id: v for v in client.search_model_versions("name='colorizer'")}
    for experiment in (quick, quick5):
        version = versions[experiment.info.run_id]
        assert version.tags["dvc_exp_name"] == experiment.data.tags["dvc_exp_name"]
        assert version.tags["model_sha256"] == experiment.data.tags["model_sha256"]
