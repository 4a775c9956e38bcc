"""The `register` stage: the trained model logged into the MLflow run that trained it, as a model MLflow
serves (`pyfunc`), and registered as a new version of `colorizer` tagged with the choice rule's
figures. A stage of its own, after train: training runs no inference or serving code, so an edit to
those re-runs this stage and not the training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from colorizer import tracking
from colorizer.serving import pyfunc
from colorizer.training.checkpoints import read_model_info

log = logging.getLogger(__name__)


def register(model_dir: Path, train_metrics: Path) -> str | None:
    """Log `model_dir` into the run that exported it (found by the model's sha256) with the choice
    scores of `train_metrics` (the train stage's metrics/train.json); returns the model's URI, or None
    where this tracking store has no such run (a model trained elsewhere)."""
    sha256 = read_model_info(model_dir)["model_sha256"]
    run_id = tracking.run_of_model(sha256)
    if run_id is None:
        where = tracking.tracking_uri()
        log.warning(
            "register: no MLflow run in %s exported %s (sha256 %s); nothing registered", where, model_dir, sha256[:12]
        )
        return None
    scores = json.loads(train_metrics.read_text()).get("choice", {}) if train_metrics.is_file() else {}
    with tracking.continued_run(run_id):
        uri = pyfunc.log_model(model_dir, scores=scores)
    log.info("register: %s logged to run %s as %s", model_dir, run_id, uri)
    return uri
