"""The evaluate stage: the trained generator against the greyscale baseline (a*b* = 0) on val and test.

Writes DVC metrics (JSON, means per split and method, over all images and over photographs and
cut-outs separately), a per-image CSV, and the same means to the training run in MLflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from colorizer import tracking
from colorizer.config import EvaluateConfig, TrainConfig
from colorizer.data.shards import LabShardDataset
from colorizer.devices import autocast, autocast_dtype, pick_device
from colorizer.files import atomic_path, atomic_write_json, progress
from colorizer.training.checkpoints import load_discriminator, load_generator
from colorizer.training.losses import g_losses, generator_loss
from colorizer.training.metrics import colourfulness, hue_agreement, l1_lab_units, psnr, ssim
from colorizer.training.visualize import lab_batch_to_rgb

METHODS = ("model", "baseline")
SPLITS = ("val", "test")


@torch.no_grad()
def score_batch(
    generator, discriminator, L: torch.Tensor, ab: torch.Tensor, l1_lambda: float, amp_dtype: torch.dtype | None = None
) -> list[dict]:
    """Per-image metrics for the model and the greyscale baseline on one batch (CPU tensors)."""
    device = next(generator.parameters()).device
    true_rgb = lab_batch_to_rgb(L, ab)
    L_on_device = L.to(device)
    with autocast(device, amp_dtype):
        model_ab = generator(L_on_device).float().cpu()
    rows = []
    for method, pred in {"model": model_ab, "baseline": torch.zeros_like(ab)}.items():
        with autocast(device, amp_dtype):
            logits = discriminator(torch.cat([L_on_device, pred.to(device)], dim=1)).float().cpu()
        losses = g_losses(logits, pred, ab, per_image=True)
        l1, total = losses["g_l1"], generator_loss(losses, l1_lambda)
        pred_rgb = lab_batch_to_rgb(L, pred)
        for i in range(len(L)):
            cf_pred, cf_true = colourfulness(pred_rgb[i]), colourfulness(true_rgb[i])
            rows.append(
                {
                    "method": method,
                    "l1": float(l1[i]),
                    "l1_lab": l1_lab_units(float(l1[i])),
                    "gan_loss": float(total[i]),
                    "psnr": psnr(pred_rgb[i], true_rgb[i]),
                    "ssim": ssim(pred_rgb[i], true_rgb[i]),
                    "colourfulness": cf_pred,
                    "colourfulness_original": cf_true,
                    "colourfulness_gap": abs(cf_pred - cf_true),
                    "hue_agreement": hue_agreement(pred_rgb[i], true_rgb[i]),
                }
            )
    return rows


# The rule that chooses between trainings (and the epoch count of a recipe): the mean over the last
# CHOICE_EPOCHS epochs of the validation photographs' hue agreement plus a tenth of their PSNR gain
# over the grey input in dB (1 dB counts as 0.1 of hue agreement). Never one epoch's figure: with
# a few dozen validation photos it swings by more than the differences between recipes.
CHOICE_EPOCHS = 3
PSNR_GAIN_WEIGHT = 0.1


@torch.no_grad()
def photo_scores(
    generator: torch.nn.Module, dataset: LabShardDataset, batch_size: int, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Mean hue agreement and mean PSNR gain over the grey input (dB) on the photographs of `dataset`
    (on all its images when it has no photograph): the figures `choice_score` is made of."""
    photos = [i for i, kind in enumerate(dataset.kinds) if kind == "photo"] or list(range(len(dataset)))
    device = next(generator.parameters()).device
    hues, gains = [], []
    for start in range(0, len(photos), batch_size):
        L, ab = dataset.get_batch(np.asarray(photos[start : start + batch_size]))
        with autocast(device, amp_dtype):
            model_ab = generator(L.to(device)).float().cpu()
        true_rgb, grey_rgb, model_rgb = (lab_batch_to_rgb(L, x) for x in (ab, torch.zeros_like(ab), model_ab))
        for true, grey, model in zip(true_rgb, grey_rgb, model_rgb, strict=True):
            hues.append(hue_agreement(model, true))
            gains.append(psnr(model, true) - psnr(grey, true))
    return {"hue_agreement": float(np.nanmean(hues)), "psnr_gain": float(np.mean(gains))}


def choice_score(history: list[dict]) -> dict[str, float]:
    """The choice rule over a training's per-epoch rows (`val_hue_agreement`, `val_psnr_gain`):
    their means over the last CHOICE_EPOCHS epochs, their spread there, and the score."""
    last = history[-CHOICE_EPOCHS:]
    hue = np.array([row["val_hue_agreement"] for row in last], dtype=float)
    gain = np.array([row["val_psnr_gain"] for row in last], dtype=float)
    return {
        "score": round(float(hue.mean() + PSNR_GAIN_WEIGHT * gain.mean()), 4),
        "hue": round(float(hue.mean()), 4),
        "psnr_gain": round(float(gain.mean()), 4),
        "hue_spread": round(float(hue.max() - hue.min()), 4),
        "psnr_gain_spread": round(float(gain.max() - gain.min()), 4),
    }


def evaluate(
    cfg: EvaluateConfig,
    train_cfg: TrainConfig,
    model_dir: Path,
    shard_dir: Path,
    metrics_path: Path,
    per_image_path: Path,
) -> dict:
    """Score the model and the grey baseline on every val/test image, with training's precision and
    L1 weight (so that "val L1" means here what it means in training); returns the summary."""
    device = pick_device(cfg.device, "evaluate.device")
    batch_size, l1_lambda = cfg.batch_size, train_cfg.l1_lambda
    amp_dtype = autocast_dtype(train_cfg.precision, device)
    generator, info = load_generator(model_dir)
    generator, discriminator = generator.to(device), load_discriminator(model_dir).to(device)
    frames = []
    for split in SPLITS:
        dataset = LabShardDataset(shard_dir, split)
        for start in progress(range(0, len(dataset), batch_size), desc=f"evaluate {split}", unit="batch"):
            picks = np.arange(start, min(start + batch_size, len(dataset)))
            rows = score_batch(generator, discriminator, *dataset.get_batch(picks), l1_lambda, amp_dtype)
            frame = pd.DataFrame(rows)
            frame.insert(0, "kind", [dataset.kinds[i] for i in picks] * len(METHODS))
            frame.insert(0, "id", [dataset.ids[i] for i in picks] * len(METHODS))
            frame.insert(0, "split", split)
            frames.append(frame)
    empty = pd.DataFrame(columns=["split", "id", "kind", "method"])
    per_image = pd.concat(frames, ignore_index=True) if frames else empty
    with atomic_path(per_image_path) as tmp:
        per_image.to_csv(tmp, index=False)
    summary = summarize(per_image)
    atomic_write_json(Path(per_image_path).parent / DETAIL_NAME, summary)
    atomic_write_json(metrics_path, {"test": headline(summary)["test"]} if "test" in summary else {})
    run_id = tracking.run_of_model(info["model_sha256"])
    if run_id and not tracking.evaluated_already(run_id, info["model_sha256"]):  # once per model
        tracking.log_metrics(mlflow_metrics(summary), run_id=run_id)
        tracking.log_artifact(per_image_path, "evaluation", run_id=run_id)
        tracking.set_tags({tracking.EVALUATED_TAG: info["model_sha256"]}, run_id=run_id)
    return summary


KINDS = ("photo", "cutout")
DETAIL_NAME = "summary.json"  # beside the per-image CSV: every mean, of both methods and kinds


def headline(summary: dict) -> dict:
    """The figures that matter, per split: the model on the photographs
    (on all images where a split has none): hue agreement, PSNR gain over the grey input (dB) and
    the colourfulness gap as a share of the grey input's. DVC's metrics file has test's (val's are
    the choice rule's, in train's); every other mean is in DETAIL_NAME."""
    figures = {}
    for split, of_split in summary.items():
        scored = of_split.get("photo", of_split)
        model, grey = scored["model"], scored["baseline"]
        gain = None if model["psnr"] is None or grey["psnr"] is None else round(model["psnr"] - grey["psnr"], 4)
        ratio = None
        if model["colourfulness_gap"] is not None and grey["colourfulness_gap"]:
            ratio = round(model["colourfulness_gap"] / grey["colourfulness_gap"], 4)
        figures[split] = {"hue": model["hue_agreement"], "psnr_gain": gain, "cf_ratio": ratio}
    return figures


def mlflow_metrics(summary: dict) -> dict[str, float]:
    """What evaluate logs into the training's run: the model's means as `eval/<split>/<images>/<metric>`
    (images: all, photo or cutout) and the headline's `eval/<split>/psnr_gain` and `cf_ratio`; the
    grey baseline's are not logged (they depend on the data alone: see work/evaluate/summary.json)."""
    metrics, headlines = {}, headline(summary)
    for split, of_split in summary.items():
        for images, figures in (("all", of_split), *((kind, of_split[kind]) for kind in KINDS if kind in of_split)):
            for name, value in figures["model"].items():
                if value is not None:
                    metrics[f"eval/{split}/{images}/{name}"] = value
        for name in ("psnr_gain", "cf_ratio"):
            if headlines[split][name] is not None:
                metrics[f"eval/{split}/{name}"] = headlines[split][name]
    return metrics


def describe(summary: dict) -> str:
    """evaluate's few lines for a person: the headline per split."""
    lines = []
    for split, figures in headline(summary).items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        images = summary[split].get("photo", summary[split])["images"]
        lines.append(f"evaluate {split} ({images} images): {shown}")
    return "\n".join(lines)


def summarize(per_image: pd.DataFrame) -> dict:
    """{split: {images, model: {metric: mean}, baseline: {...}, photo: {images, model, baseline}, cutout: ...}}:
    the table `dvc exp show` lines up. A mean with no image behind it (hue agreement of an all-grey
    split) is null, never NaN (not JSON)."""
    summary: dict = {}
    for split, rows in per_image.groupby("split"):
        summary[split] = _means(rows)
        for kind in KINDS:
            of_kind = rows[rows.kind == kind] if "kind" in rows else rows.iloc[:0]
            if len(of_kind):
                summary[split][kind] = _means(of_kind)
    return summary


def _means(rows: pd.DataFrame) -> dict:
    metric_columns = [c for c in rows.columns if c not in ("split", "id", "kind", "method")]
    result: dict = {"images": int((rows.method == METHODS[0]).sum())}
    for method, group in rows.groupby("method"):
        means = group[metric_columns].astype(float).mean()
        result[method] = {c: (round(float(v), 6) if np.isfinite(v) else None) for c, v in means.items()}
    return result
