"""evaluate on real shards and a real exported model: the grey baseline's figures by definition, the
summary's shape (photos and cut-outs apart), and strict JSON."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from colorizer.config import EvaluateConfig, TrainConfig
from colorizer.data.lab import AB_SCALE
from colorizer.data.shards import LabShardDataset
from colorizer.training.checkpoints import export_model
from colorizer.training.evaluate import evaluate
from colorizer.training.models import Discriminator, Generator


@pytest.fixture
def scored(tiny_shards, tmp_path, mlflow_store):
    torch.manual_seed(0)
    export_model(tmp_path / "model", Generator([8, 16, 16], 32).eval(), Discriminator([8, 16]).eval(), {})
    summary = evaluate(
        EvaluateConfig(batch_size=2),
        TrainConfig(precision="fp32"),
        tmp_path / "model",
        tiny_shards,
        tmp_path / "evaluate.json",
        tmp_path / "per_image.csv",
    )
    return summary, tmp_path


def test_grey_baseline_is_scored_by_definition(scored, tiny_shards):
    summary, _ = scored
    for split in ("val", "test"):
        _, ab = LabShardDataset(tiny_shards, split).get_batch(np.arange(len(LabShardDataset(tiny_shards, split))))
        baseline = summary[split]["baseline"]
        assert baseline["l1"] == pytest.approx(ab.abs().mean().item(), abs=1e-5)  # a*b* = 0: L1 is mean |ab|
        assert baseline["l1_lab"] == pytest.approx(ab.abs().mean().item() * AB_SCALE, abs=1e-3)
        assert baseline["hue_agreement"] == 0.0 and baseline["colourfulness"] == pytest.approx(0.0, abs=1e-6)


def test_summary_has_photos_apart_and_is_strict_json(scored):
    summary, tmp_path = scored
    assert summary["test"]["images"] == 3 and summary["test"]["photo"]["images"] == 3
    assert "cutout" not in summary["test"]  # the synthetic shards hold photos only
    assert set(summary["val"]["model"]) >= {"l1", "psnr", "ssim", "colourfulness_gap", "hue_agreement", "gan_loss"}
    json.loads((tmp_path / "evaluate.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert set(per_image.kind) == {"photo"} and len(per_image) == 2 * (4 + 3)


def test_evaluation_is_logged_once_into_the_run_that_trained_the_model(tiny_shards, tmp_path, mlflow_store):
    """A forced rerun of evaluate scores the same model again: its figures are not logged twice."""
    from mlflow.tracking import MlflowClient

    from colorizer import tracking

    torch.manual_seed(0)
    info = export_model(tmp_path / "model", Generator([8, 16, 16], 32).eval(), Discriminator([8, 16]).eval(), {})
    with tracking.training_run({"train": {"epochs": 1}}, "fingerprint", resume=False) as run_id:
        tracking.set_tags({tracking.MODEL_SHA256_TAG: info["model_sha256"]})
    for _ in range(2):
        evaluate(
            EvaluateConfig(batch_size=2),
            TrainConfig(precision="fp32"),
            *(tmp_path / "model", tiny_shards, tmp_path / "evaluate.json", tmp_path / "per_image.csv"),
        )
    history = MlflowClient(mlflow_store).get_metric_history(run_id, "eval/test/all/l1")
    assert len(history) == 1
