"""MLflow and DVC outputs in one place: where runs go, what a run records, and how it ends.

The default store is `sqlite:///<repo>/mlflow.db`; `<repo>` is DVC_ROOT when DVC runs the stage
(for `dvc exp run --temp/--queue` that is the parent repository, not the temporary copy), so every
experiment lands in the one store. MLFLOW_TRACKING_URI overrides it (a real server, say), and
MLFLOW_EXPERIMENT_NAME the experiment (default `colorizer`). A run is found again by its model's
sha256 (a tag), so nothing run-specific has to live in the DVC-tracked model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from colorizer.config import UserError
from colorizer.files import atomic_write_bytes

DEFAULT_EXPERIMENT_NAME = "colorizer"
MODEL_SHA256_TAG = "model_sha256"
FINGERPRINT_TAG = "train_fingerprint"
RUN_KEY_TAG = "train_run_key"  # the fingerprint, every param (epochs too) and DVC's experiment name
EVALUATED_TAG = "evaluated_model_sha256"  # evaluate logged its scores of this model into the run
CONTINUED_FROM_TAG = "continued_from"  # the run whose checkpoint a training with other params resumed
OWNER_TAG = "trainer"  # host:pid of the process that runs a training run
DESCRIPTION_TAG = "mlflow.note.content"  # the run page's description


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT_NAME


def repo_root() -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; remember the value we put there so that
# it is not mistaken later for the user's choice (a test or a second stage with another DVC_ROOT).
_default_uri_we_set: str | None = None


def default_tracking_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env != _default_uri_we_set:
        return from_env
    return default_tracking_uri()


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


log = logging.getLogger(__name__)
SERVER_PROBE_SECONDS = 10.0


class TrackingUnavailable(UserError):
    """The tracking server does not answer."""


def check_server(uri: str) -> None:
    """A tracking server that does not answer is one line within seconds, not minutes of MLflow's
    retries followed by a traceback. Asks its /health endpoint (every `mlflow server` has one) before
    each use, so a server that stops mid-training is noticed at the next epoch's logging too."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_PROBE_SECONDS):
            pass
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLFLOW_TRACKING_URI={uri}: the tracking server does not answer ({reason}); start it, or unset "
            "MLFLOW_TRACKING_URI to log to the repository's mlflow.db (a training stopped by this keeps "
            "its checkpoint: rerun to resume it, in the same MLflow run)"
        ) from None


_stores_checked: set[str] = set()
# Where the default store records artifact locations (MLflow 3): the experiment's, each run's, each
# logged model's and each registered model version's.
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def relocate_artifacts(db_path: Path, experiment: str, here: str) -> None:
    """A copied or moved repository brings its mlflow.db, whose experiment still names the old
    folder's mlartifacts as its artifact location, so every later run would write there. Rewrite the
    recorded locations under that folder to this repository's `here`. By SQL on the file: MLflow has no
    API to change an experiment's artifact location, and this store is the repository's own file.
    Locations the user chose (not an mlartifacts folder of ours) are left alone."""
    if not db_path.is_file():
        return
    with closing(sqlite3.connect(db_path)) as db, db:
        try:
            row = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
        except sqlite3.OperationalError:  # a new, empty store: MLflow makes its tables
            return
        old = row[0] if row else None
        if not old or old == here or not (old.startswith("file://") and old.endswith("/mlartifacts")):
            return
        for table, column in _LOCATION_COLUMNS:
            db.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                (here, len(old) + 1, len(old), old),
            )
    log.info("mlflow: this repository was copied or moved: artifacts now go to %s (were %s)", here, old)


def check_store(db_path: Path) -> None:
    """A damaged mlflow.db is one line, not MLflow's 80-line traceback from deep in SQLAlchemy."""
    if not db_path.is_file():
        return
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):  # another process writes: nothing is wrong with the file
            raise UserError(
                f"{db_path}: the MLflow store is locked by another process ({e}); wait for it to finish, "
                "then rerun (nothing is damaged)"
            ) from None
        problem = str(e)
    except sqlite3.DatabaseError as e:
        problem = str(e)
    if problem != "ok":
        raise UserError(
            f"{db_path}: the MLflow store is damaged ({problem}); move it aside to start a new one "
            "(DVC's metrics and models do not depend on it)"
        )


def _mlflow():
    import mlflow  # slow to import: only stages that log pay for it

    global _default_uri_we_set
    uri = tracking_uri()
    check_server(uri)
    is_default = uri == default_tracking_uri()
    if is_default and uri not in _stores_checked:  # once per process: every tracking call comes here
        check_store(repo_root() / "mlflow.db")
        relocate_artifacts(repo_root() / "mlflow.db", experiment_name(), (repo_root() / "mlartifacts").as_uri())
        _stores_checked.add(uri)
    if uri.startswith(("http://", "https://")):
        # MLflow retries a failed request 7 times with growing pauses (minutes in all) before it
        # raises; a few seconds tell a server that went away (unless the user set these).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    mlflow.set_tracking_uri(uri)
    if is_default:
        _default_uri_we_set = uri
    name = experiment_name()
    if mlflow.get_experiment_by_name(name) is None:
        # With the default SQLite store, artifacts go beside it in the repo (not in the working
        # directory, which for `dvc exp run --temp` is a copy that is deleted afterwards).
        local = (repo_root() / "mlartifacts").as_uri() if is_default else None
        mlflow.create_experiment(name, artifact_location=local)
    mlflow.set_experiment(name)
    return mlflow


def run_tags() -> dict[str, str]:
    """DVC's experiment name and baseline; MLflow records the git commit itself (mlflow.source.git.commit)."""
    tags = {}
    for env_name, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env_name):
            tags[tag] = os.environ[env_name]
    return tags


def newest_run_tagged(tag: str, value: str) -> str | None:
    """The id of the newest run of the experiment with tag = value, or None."""
    mlflow = _mlflow()
    runs = mlflow.search_runs(
        experiment_names=[experiment_name()],
        filter_string=f"tags.{tag} = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def run_of_model(model_sha256: str) -> str | None:
    """The training run that exported this model (evaluate logs its scores there), or None."""
    return newest_run_tagged(MODEL_SHA256_TAG, model_sha256)


@contextmanager
def continued_run(run_id: str) -> Iterator[None]:
    """Log into a run that has ended (the register stage logs the model into its training run)."""
    mlflow = _mlflow()
    with _signals_after_mlflow():
        mlflow.start_run(run_id=run_id, log_system_metrics=False)
    try:
        yield
    finally:
        with _signals_after_mlflow():
            mlflow.end_run()


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    with _signals_after_mlflow():
        mlflow = _mlflow()
        if run_id is None:
            mlflow.set_tags(tags)
        else:
            client = mlflow.tracking.MlflowClient()
            for key, value in tags.items():
                client.set_tag(run_id, key, value)


def evaluated_already(run_id: str, model_sha256: str) -> bool:
    """Whether evaluate logged its scores of this model into the run already (a forced rerun of the
    stage gives the same figures: logged again they would be a second point of each)."""
    with _signals_after_mlflow():
        return _mlflow().tracking.MlflowClient().get_run(run_id).data.tags.get(EVALUATED_TAG) == model_sha256


def close_orphaned_runs(keep: str | None = None) -> list[str]:
    """Mark KILLED the runs left RUNNING by a trainer of this host that no longer exists (kill -9, a
    power cut): a trainer can't close its own run then. Runs of other hosts are left alone."""
    mlflow = _mlflow()
    host = socket.gethostname()
    closed = []
    for run in mlflow.search_runs(
        experiment_names=[experiment_name()], filter_string="attributes.status = 'RUNNING'", output_format="list"
    ):
        owner = run.data.tags.get(OWNER_TAG, "")
        owner_host, _, pid = owner.rpartition(":")
        if run.info.run_id == keep or owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        mlflow.tracking.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def run_key(params: dict[str, Any], fingerprint: str) -> str:
    """What makes two trainings one MLflow run: the same checkpoint lineage (fingerprint), the same
    params, every one (MLflow's params can't change), and the same DVC experiment."""
    payload = {"fingerprint": fingerprint, "params": params, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_description(params: dict[str, Any], continued_from: str | None = None) -> str:
    """The run page's description (Markdown): which experiment, data and recipe, and where to look."""
    model, train, fetch = params.get("model", {}), params.get("train", {}), params.get("fetch", {})
    size = params.get("augment", {}).get("image_size")
    name = os.environ.get("DVC_EXP_NAME")
    lines = [
        f"Training of the DVC experiment `{name}`." if name else "A training outside `dvc exp run`.",
        f"Photos from {', '.join(map(str, fetch.get('sources', []))) or '?'}, at {size} px; "
        f"{model.get('head', 'regression')} head, widths x {model.get('width_multiplier')}, "
        f"{train.get('epochs')} epochs ({train.get('l1_warmup_epochs', 0)} without the GAN term), "
        f"EMA {train.get('ema_decay', 0)}, init {train.get('init', 'none')}.",
        "Metrics: `train/` and `val/` per epoch (`val/hue_agreement`, `val/psnr_gain`: the choice rule), "
        "`eval/` from the evaluate stage; the sample grid per epoch under the images; the model under "
        "Logged models (registered as `colorizer`, alias `best`: the highest choice score).",
    ]
    if continued_from:
        lines.append(f"Continues run `{continued_from}` (its checkpoint, other params): its history is copied in.")
    return "\n\n".join(lines)


@contextmanager
def training_run(params: dict[str, Any], fingerprint: str, resume: bool, resumed_epoch: int = 0) -> Iterator[str]:
    """One MLflow run per training. A training interrupted and rerun as it was (same params, same DVC
    experiment) continues its own run; one that resumes another's checkpoint with other params (more
    epochs, another experiment name) starts a run of its own, tagged `continued_from` that run, with
    its per-epoch history up to `resumed_epoch` copied in. The run ends FINISHED, FAILED on an error,
    KILLED on Ctrl-C/SIGTERM."""
    key = run_key(params, fingerprint)
    with _signals_after_mlflow():
        mlflow = _mlflow()
        resume_id = _unfinished_run_at(key, resumed_epoch) if resume else None
        predecessor = newest_run_tagged(FINGERPRINT_TAG, fingerprint) if resume and resume_id is None else None
        close_orphaned_runs(keep=resume_id)
        # System metrics (CPU, memory, GPU where pynvml is installed) every 10 s, beside the training metrics.
        run = mlflow.start_run(run_id=resume_id, run_name=os.environ.get("DVC_EXP_NAME"), log_system_metrics=True)
    try:
        with _signals_after_mlflow():
            tags = run_tags() | {FINGERPRINT_TAG: fingerprint, RUN_KEY_TAG: key}
            if resume_id is None:
                mlflow.log_params(flatten(params))
                tags[DESCRIPTION_TAG] = run_description(params, predecessor)
                if predecessor:
                    tags[CONTINUED_FROM_TAG] = predecessor
                    _copy_history(predecessor, run.info.run_id, resumed_epoch)
            mlflow.set_tags(tags | {OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}"})
        yield run.info.run_id
    except TrackingUnavailable:
        _leave_run_open()
        raise
    except KeyboardInterrupt:
        with _signals_after_mlflow():
            mlflow.end_run("KILLED")
        raise
    except BaseException:
        try:  # an MLflow call that failed because the server went away while it ran
            check_server(tracking_uri())
        except TrackingUnavailable as gone:
            _leave_run_open()
            raise gone from None
        with _signals_after_mlflow():
            mlflow.end_run("FAILED")
        raise
    with _signals_after_mlflow():
        mlflow.end_run("FINISHED")


def _unfinished_run_at(key: str, epoch: int) -> str | None:
    """The newest run of this training (`run_key`) that was stopped (not FINISHED) after logging
    exactly `epoch` epochs: the run the checkpoint being resumed was written by."""
    from mlflow.tracking import MlflowClient

    mlflow, client = _mlflow(), MlflowClient()
    for run in mlflow.search_runs(
        experiment_names=[experiment_name()],
        filter_string=f"tags.{RUN_KEY_TAG} = '{key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    ):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/g_l1")]
        if max(steps, default=0) == epoch:
            return run.info.run_id
    return None


def _copy_history(source_run: str, target_run: str, up_to_step: int) -> None:
    """The per-epoch metrics of `source_run` up to `up_to_step` (the epochs the resumed checkpoint
    holds) into `target_run`, so its curves start at epoch 1; not its evaluation, which scored
    another model."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    copied = []
    for name in client.get_run(source_run).data.metrics:
        if name.startswith(("eval", "system/")):
            continue
        copied += [
            Metric(name, m.value, m.timestamp, m.step)
            for m in client.get_metric_history(source_run, name)
            if 1 <= m.step <= up_to_step
        ]
    for start in range(0, len(copied), 1000):  # MLflow's batch limit
        client.log_batch(target_run, metrics=copied[start : start + 1000])


def _leave_run_open() -> None:
    """The server is gone, so the run can't be closed: the same training rerun continues it (it is
    found by its run key). MLflow still tries to end it at exit: make that attempt fail at once instead
    of retrying for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"


@contextmanager
def _signals_after_mlflow() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive during the MLflow calls inside take effect as soon as they are
    done. Raised as SQLite returns from one of MLflow's statements (a write, or a read whose cursor
    is left open), a KeyboardInterrupt makes SQLAlchemy drop the connection without rolling back:
    this process then holds a lock on the store, ending the run KILLED fails with "database is
    locked", and the run stays RUNNING (2 of 4 runs interrupted at random while logging metrics).
    Only for an SQLite store: a call to a tracking server that does not answer can take minutes, and
    Ctrl-C must stop it at once; a second signal does here too. Handlers can only be set in the main
    thread; other threads are never interrupted by signals."""
    if threading.current_thread() is not threading.main_thread() or not tracking_uri().startswith("sqlite:"):
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    caught: list[int] = []

    def after_the_call(signum: int, _frame: object) -> None:
        if caught:  # asked twice: stop now
            raise KeyboardInterrupt(f"signal {signum}")
        caught.append(signum)

    previous = [signal.signal(signum, after_the_call) for signum in held]
    try:
        yield
    finally:
        for signum, handler in zip(held, previous, strict=True):
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if caught:
            os.kill(os.getpid(), caught[0])  # again, to the process's own handler: KeyboardInterrupt here


def sectioned(key: str) -> str:
    """A per-epoch metric's MLflow name, its split as a section the UI groups by: `train_g_l1` ->
    `train/g_l1`, `val_hue_agreement` -> `val/hue_agreement` (plots/train.csv keeps the flat names)."""
    split, _, name = key.partition("_")
    return f"{split}/{name}" if split in ("train", "val") and name else key


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    with _signals_after_mlflow():
        mlflow = _mlflow()
        if run_id is None:
            mlflow.log_metrics(metrics, step=step)
        else:
            client = mlflow.tracking.MlflowClient()
            for key, value in metrics.items():
                client.log_metric(run_id, key, value, step=step or 0)


def log_artifact(path: Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    with _signals_after_mlflow():
        mlflow = _mlflow()
        if run_id is None:
            mlflow.log_artifact(str(path), artifact_path)
        else:
            mlflow.tracking.MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_image(path: Path, key: str, step: int) -> None:
    """An image per step (sample grids): the MLflow UI shows them with a step slider."""
    from PIL import Image

    with Image.open(path) as image, _signals_after_mlflow():
        _mlflow().log_image(image.convert("RGB"), key=key, step=step)


def write_plot_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """The per-epoch loss table DVC plots (a CSV, rewritten whole so a resumed run keeps its history)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
