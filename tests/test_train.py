import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from colorizer import tracking
from colorizer.config import ConfigError, UserError
from colorizer.devices import autocast_dtype, cpu_has_native_bf16
from colorizer.training import train as train_module
from colorizer.training.checkpoints import CheckpointError, load_checkpoint, load_generator, save_checkpoint
from colorizer.training.gan import build_gan, colour_counts
from colorizer.training.resume import CHECKPOINT_NAME, training_code_files
from colorizer.training.train import train
from tests.helpers import PROGRAMS, TINY, run_train, tiny_params, wait_for_files


def run_of(state: dict) -> str:
    """The MLflow run of a checkpoint: found by its training fingerprint, as a resume finds it."""
    return tracking.newest_run_tagged(tracking.FINGERPRINT_TAG, state["fingerprint"])


def test_train_writes_model_plots_samples_and_mlflow_run(tiny_shards, tmp_path, mlflow_store):
    final = run_train(tiny_params(), tiny_shards, tmp_path)
    assert final["epoch"] == 2 and np.isfinite(final["val_g_l1"])
    plots = pd.read_csv(tmp_path / "plots.csv")
    assert plots.epoch.tolist() == [1, 2]
    assert {"train_g_gan", "train_g_l1", "train_d_real", "train_d_fake", "val_g_l1"} <= set(plots.columns)
    grid = Image.open(tmp_path / "state" / "samples" / "epoch_002.png")
    assert grid.size == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2)  # 3 samples x (grey, colorized, original)
    # the image plot DVC compares: the final model's grid
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "samples.png")), np.asarray(grid))

    generator, info = load_generator(tmp_path / "model")
    assert info["image_size"] == 32 and generator(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)

    assert "mlflow_run_id" not in info  # nothing run-specific in the DVC-tracked model
    client = MlflowClient(mlflow_store)
    state = load_checkpoint(tmp_path / "state" / CHECKPOINT_NAME)
    assert "mlflow_run_id" not in state  # the checkpoint is the same bytes on every run
    run = client.get_run(run_of(state))
    assert run.info.status == "FINISHED" and run.data.tags["model_sha256"] == info["model_sha256"]
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["model.width_multiplier"] == "1.0"
    assert "train_images_per_second" not in final and "train_images_per_second" not in plots
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/images_per_second")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/g_l1")] == [1, 2]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(p.split("+")[2] for p in images if p.startswith("images/samples+step+")) == ["1", "2"]


def test_resumed_run_matches_an_uninterrupted_one(tiny_shards, tmp_path, mlflow_store):
    straight = run_train(tiny_params(epochs=3), tiny_shards, tmp_path / "straight")
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path / "resumed")
    resumed = run_train(tiny_params(epochs=3), tiny_shards, tmp_path / "resumed")
    curve_a = pd.read_csv(tmp_path / "straight" / "plots.csv")
    curve_b = pd.read_csv(tmp_path / "resumed" / "plots.csv")
    np.testing.assert_allclose(curve_a.to_numpy(), curve_b.to_numpy(), rtol=1e-3, atol=1e-5)
    assert resumed["val_g_l1"] == pytest.approx(straight["val_g_l1"], rel=1e-3)

    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("colorizer").experiment_id], order_by=["start_time"])
    # three trainings, three runs: the one of 3 epochs resumed the 1-epoch checkpoint under other params
    assert [r.data.params["train.epochs"] for r in runs] == ["3", "1", "3"]
    one_epoch, resumed_run = runs[1], runs[2]
    assert resumed_run.data.tags[tracking.CONTINUED_FROM_TAG] == one_epoch.info.run_id
    assert tracking.CONTINUED_FROM_TAG not in one_epoch.data.tags
    history = client.get_metric_history(resumed_run.info.run_id, "train/g_l1")
    assert [m.step for m in history] == [1, 2, 3]  # epoch 1 copied from the run it continued
    assert history[0].value == client.get_metric_history(one_epoch.info.run_id, "train/g_l1")[0].value
    assert [m.step for m in client.get_metric_history(one_epoch.info.run_id, "train/g_l1")] == [1]


def test_other_params_start_over(tiny_shards, tmp_path, mlflow_store, caplog):
    caplog.set_level(logging.INFO, logger="colorizer")
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path)
    run_train(tiny_params(epochs=1, lr=1.0e-3), tiny_shards, tmp_path)
    assert "other params, data or number of ranks; starting over" in caplog.text
    assert pd.read_csv(tmp_path / "plots.csv").epoch.tolist() == [1]


def test_the_fingerprint_hashes_every_module_the_model_runs():
    """A checkpoint trained by other model code must start over, not be resumed: the code hashed
    covers the modules the model's blocks call into (config changes show in the params instead)."""
    from colorizer.training import models

    called = {
        sys.modules[value.__module__]
        for value in vars(models).values()
        if getattr(value, "__module__", "").startswith("colorizer.") and value.__module__ != "colorizer.config"
    }
    assert sys.modules["colorizer.training.fused_blocks"] in called
    assert {Path(module.__file__) for module in called} <= set(training_code_files())


def test_a_checkpoint_of_an_older_format_starts_over(tiny_shards, tmp_path, mlflow_store, caplog):
    caplog.set_level(logging.INFO, logger="colorizer")
    (tmp_path / "state").mkdir()
    torch.save({"format": 1, "epoch": 1}, tmp_path / "state" / CHECKPOINT_NAME)  # as the previous version wrote
    assert run_train(tiny_params(epochs=1), tiny_shards, tmp_path)["epoch"] == 1
    assert "written by an older version (format 1); starting over" in caplog.text


def test_corrupt_checkpoint_is_a_clear_error(tiny_shards, tmp_path, mlflow_store):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint.*delete it to start over"):
        run_train(tiny_params(), tiny_shards, tmp_path)


def test_checkpoint_that_does_not_fit_the_model(tiny_shards, tmp_path, mlflow_store):
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path)
    path = tmp_path / "state" / CHECKPOINT_NAME
    state = load_checkpoint(path)
    state["generator"] = {k: v[:1] if v.ndim else v for k, v in state["generator"].items()}
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="does not fit the model"):
        run_train(tiny_params(epochs=2), tiny_shards, tmp_path)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_resumes(
    tiny_shards, tmp_path, mlflow_store, small_disk, capsys
):
    from colorizer.runtime import run_entry

    state = small_disk(4096)
    root = tmp_path / "run"

    def train_into_state(epochs):
        return train(
            tiny_params(epochs=epochs), tiny_shards, root / "model", state, root / "p.csv", root / "m.json", False
        )

    train_into_state(1)
    checkpoint_bytes = (state / CHECKPOINT_NAME).stat().st_size
    free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
    (state / "filler").write_bytes(b"x" * (free - checkpoint_bytes // 2))  # room for half a checkpoint
    assert run_entry("train", lambda: train_into_state(2)) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("colorizer train:")]
    assert len(error) == 1 and "No space left on device" in error[0], error
    assert load_checkpoint(state / CHECKPOINT_NAME)["epoch"] == 1  # the last one, whole
    assert not [p for p in state.iterdir() if p.name.startswith(f".{CHECKPOINT_NAME}")]  # no temp left
    (state / "filler").unlink()
    assert train_into_state(2)["epoch"] == 2  # resumed from epoch 1
    assert pd.read_csv(root / "p.csv").epoch.tolist() == [1, 2]


def test_a_second_trainer_on_the_same_state_is_refused_and_says_who_holds_it(tiny_shards, tmp_path, mlflow_store):
    repo = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "long_training.py"), str(tiny_shards), str(tmp_path)],
        cwd=repo,
        env=os.environ | {"DVC_ROOT": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_files(first, tmp_path / "state" / ".trainer", seconds=60)
        with pytest.raises(UserError, match=rf"pid {first.pid} on .* is training on this state already"):
            run_train(tiny_params(epochs=1), tiny_shards, tmp_path)
    finally:
        first.kill()
        first.wait(timeout=60)
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path)  # the lock went with the killed process


def test_a_crash_marks_the_run_failed(tiny_shards, tmp_path, mlflow_store, monkeypatch):
    def broken_samples(*args, **kwargs):
        raise RuntimeError("disk full")  # an injected failure in the middle of an epoch

    monkeypatch.setattr(train_module, "write_samples", broken_samples)
    with pytest.raises(RuntimeError, match="disk full"):
        run_train(tiny_params(), tiny_shards, tmp_path)
    [run] = MlflowClient(mlflow_store).search_runs(["1"])
    assert run.info.status == "FAILED"


def test_bad_batch_size_and_device_name_the_key(tiny_shards, tmp_path, mlflow_store):
    with pytest.raises(ConfigError, match="train.batch_size"):
        run_train(tiny_params(batch_size=64), tiny_shards, tmp_path)
    with pytest.raises(ConfigError, match="train.device"):
        run_train(tiny_params(device="tpu"), tiny_shards, tmp_path)


def test_sigterm_marks_killed_and_a_rerun_resumes(tiny_shards, tmp_path, mlflow_store):
    params = yaml.safe_load(yaml.safe_dump(TINY))
    params["train"]["epochs"] = 500
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
        sys.executable,
        "-m",
        "colorizer.cli",
        "train",
        "--shards",
        str(tiny_shards),
        "--model",
        "model",
        "--state",
        "state",
        "--plots",
        "plots.csv",
        "--metrics",
        "train.json",
    ]
    environment = dict(os.environ, DVC_ROOT=str(tmp_path))
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "state" / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    state = load_checkpoint(checkpoint)  # whole, despite the kill
    client = MlflowClient(mlflow_store)
    assert client.get_run(run_of(state)).info.status == "KILLED"

    killed_run = run_of(state)

    # rerun as it was: the same run goes on (and is stopped again after another epoch)
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)
    while load_checkpoint(checkpoint)["epoch"] == state["epoch"] and time.monotonic() < deadline + 120:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "resuming from" in stderr, stderr
    state = load_checkpoint(checkpoint)
    assert run_of(state) == killed_run and len(client.search_runs([client.get_run(killed_run).info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(killed_run, "train/g_l1")] == list(range(1, state["epoch"] + 1))

    # rerun with fewer epochs: other params, so a run of its own that continues the killed one
    params["train"]["epochs"] = state["epoch"] + 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from state/{CHECKPOINT_NAME} after epoch {state['epoch']}" in rerun.stderr
    run = client.get_run(run_of(state))
    assert run.info.status == "FINISHED" and run.data.tags[tracking.CONTINUED_FROM_TAG] == killed_run
    assert run.data.params["train.epochs"] == str(state["epoch"] + 1)
    assert client.get_run(killed_run).info.status == "KILLED"
    assert len(pd.read_csv(tmp_path / "plots.csv")) == state["epoch"] + 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/g_l1")] == list(
        range(1, state["epoch"] + 2)
    )


def test_precision_choice():
    cpu = torch.device("cpu")
    native = cpu_has_native_bf16()
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert autocast_dtype("bf16", cpu) == torch.bfloat16  # asked for: given, warned where slow
    assert [str(w.message) for w in caught if "without native bf16" in str(w.message)] == (
        []
        if native
        else ["precision bf16 on a cpu without native bf16 runs many times slower than fp32 (use precision: auto)"]
    )
    gan = build_gan(tiny_params().model, tiny_params().train, 32, torch.device("cpu"))
    losses = gan.train_step(torch.zeros(4, 1, 32, 32), torch.zeros(4, 2, 32, 32))
    assert set(losses) == {"d_real", "d_fake", "g_gan", "g_l1"}
    warmup = gan.train_step(torch.zeros(4, 1, 32, 32), torch.zeros(4, 2, 32, 32), adversarial=False)
    assert set(warmup) == {"g_gan", "g_l1"} and float(warmup["g_gan"]) == 0.0


def test_nan_in_the_shards_stops_training_with_one_clear_error(tmp_path, mlflow_store):
    from colorizer.config import UserError
    from colorizer.data.synthetic import synthetic_shards

    shards = synthetic_shards(tmp_path / "data")
    shard = np.load(shards / "train-00000.npy", mmap_mode="r+")
    shard[0, 1] = np.nan  # one image's a* plane
    shard.flush()
    del shard
    with pytest.raises(UserError, match=r"epoch 1/1: loss .* not finite \(NaN or inf in the shards train-00000.npy"):
        run_train(tiny_params(epochs=1), shards, tmp_path)
    assert not (tmp_path / "state" / CHECKPOINT_NAME).exists() and not (tmp_path / "model").exists()


def test_a_truncated_or_missing_shard_is_named(tmp_path, mlflow_store):
    from colorizer.data.shards import LabShardDataset, ShardError
    from colorizer.data.synthetic import synthetic_shards

    shards = synthetic_shards(tmp_path / "data")
    path = shards / "train-00000.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"train-00000.npy: truncated or not a shard .*dvc repro shard"):
        LabShardDataset(shards, "train")
    path.unlink()
    with pytest.raises(ShardError, match="train-00000.npy: shard missing"):
        run_train(tiny_params(epochs=1), shards, tmp_path)


def test_lr_schedule_is_constant_then_decays_linearly_like_pix2pix():
    from colorizer.config import TrainConfig
    from colorizer.training.train import lr_at

    constant = TrainConfig(epochs=4, lr=1.0)
    assert [lr_at(e, constant) for e in range(1, 5)] == [1.0] * 4
    decaying = TrainConfig(epochs=6, lr=1.0, lr_decay_epochs=3)
    assert [lr_at(e, decaying) for e in range(1, 7)] == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25])
    longer_than_training = TrainConfig(epochs=2, lr=1.0, lr_decay_epochs=15)  # decays over all epochs
    assert [lr_at(e, longer_than_training) for e in (1, 2)] == pytest.approx([2 / 3, 1 / 3])


def test_a_run_left_running_by_kill_9_is_closed_by_the_next_training(tiny_shards, tmp_path, mlflow_store):
    params = yaml.safe_load(yaml.safe_dump(TINY))
    params["train"]["epochs"] = 500
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "colorizer.cli", "train", "--shards", str(tiny_shards), "--model", "model"]
    command += ["--state", "state", "--plots", "plots.csv", "--metrics", "train.json"]
    environment = dict(os.environ, DVC_ROOT=str(tmp_path))
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "state" / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no chance to close its MLflow run
    process.wait()
    client = MlflowClient(mlflow_store)
    orphan = run_of(load_checkpoint(checkpoint))
    assert client.get_run(orphan).info.status == "RUNNING"

    run_train(tiny_params(epochs=1, lr=1.0e-3), tiny_shards, tmp_path / "other")  # other params: a new run
    assert client.get_run(orphan).info.status == "KILLED"


def test_the_ema_is_what_is_validated_and_exported_and_a_resume_keeps_it(tiny_shards, tmp_path, mlflow_store):
    """train.ema_decay > 0: the exported model is the average, not the last step's weights; the
    checkpoint keeps both, so a resumed training exports the same average as an uninterrupted one."""
    straight = run_train(tiny_params(epochs=3, ema_decay=0.9), tiny_shards, tmp_path / "straight")
    run_train(tiny_params(epochs=1, ema_decay=0.9), tiny_shards, tmp_path / "resumed")
    resumed = run_train(tiny_params(epochs=3, ema_decay=0.9), tiny_shards, tmp_path / "resumed")
    assert resumed["val_g_l1"] == pytest.approx(straight["val_g_l1"], rel=1e-3)
    state = load_checkpoint(tmp_path / "straight" / "state" / CHECKPOINT_NAME)
    exported, _ = load_generator(tmp_path / "straight" / "model")
    exported_weights = exported.state_dict()
    averaged = {k.removeprefix("module."): v for k, v in state["generator_ema"].items() if k.startswith("module.")}
    for name, value in exported_weights.items():
        torch.testing.assert_close(value, averaged[name].to(value.dtype))
    raw = state["generator"]
    assert any(not torch.allclose(exported_weights[k], raw[k].float()) for k in raw if raw[k].is_floating_point())
    resumed_export, _ = load_generator(tmp_path / "resumed" / "model")
    for name, value in resumed_export.state_dict().items():
        torch.testing.assert_close(value, exported_weights[name], rtol=1e-3, atol=1e-5)


def test_without_ema_the_last_weights_are_exported(tiny_shards, tmp_path, mlflow_store):
    run_train(tiny_params(epochs=1, ema_decay=0.0), tiny_shards, tmp_path)
    state = load_checkpoint(tmp_path / "state" / CHECKPOINT_NAME)
    assert state["generator_ema"] is None
    exported, _ = load_generator(tmp_path / "model")
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, state["generator"][name].to(value.dtype))


@pytest.mark.parametrize("fast_paths", [True, False])
def test_the_ema_averages_as_its_formula_says(fast_paths):
    """After the first update copies the weights, each update moves the average a share
    1 - min(decay, (1 + n) / (10 + n)) of the way to the current weights (on torch's foreach kernels,
    and on the plain path, tensor by tensor)."""
    from colorizer import fast
    from colorizer.training.ema import warmed_up_decay, weight_average

    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.999, 90) == pytest.approx(0.91)
    assert warmed_up_decay(0.5, 90) == 0.5
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    average = weight_average(model, decay=0.5)
    expected = None
    for step, value in enumerate([1.0, 3.0, 7.0, -1.0]):
        with torch.no_grad():
            model[0].weight.fill_(value)
        with fast.enabled_as(fast_paths):
            average.update_parameters(model)
        expected = value if step == 0 else expected + (1 - warmed_up_decay(0.5, step)) * (value - expected)
        assert average.module[0].weight.item() == pytest.approx(expected)
    assert average.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item()


def test_train_init_starts_the_generator_from_a_model_and_refuses_another_shape(tiny_shards, tmp_path, mlflow_store):
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path / "first")
    source, _ = load_generator(tmp_path / "first" / "model")
    params = tiny_params(init=str(tmp_path / "first" / "model"))
    gan = build_gan(params.model, params.train, 32, torch.device("cpu"))
    for name, value in source.state_dict().items():
        torch.testing.assert_close(gan.generator.state_dict()[name], value)
    fresh = build_gan(params.model, tiny_params().train, 32, torch.device("cpu"))
    assert not torch.equal(fresh.generator.state_dict()["head.weight"], source.state_dict()["head.weight"])

    with pytest.raises(
        ConfigError, match=r"^params.yaml: train.init: .* widths \[.*\] at 128 px with a regression head; this"
    ):
        build_gan(params.model, tiny_params(init="shipped").train, 32, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^params.yaml: train.init: .*no trained model here"):
        build_gan(params.model, tiny_params(init=str(tmp_path / "nowhere")).train, 32, torch.device("cpu"))


def test_the_choice_rule_takes_the_last_three_epochs():
    from colorizer.training.evaluate import choice_score

    history = [
        {"val_hue_agreement": 0.9, "val_psnr_gain": 9.0},  # an early lucky epoch does not count
        {"val_hue_agreement": 0.5, "val_psnr_gain": 1.0},
        {"val_hue_agreement": 0.6, "val_psnr_gain": 2.0},
        {"val_hue_agreement": 0.4, "val_psnr_gain": 0.0},
    ]
    assert choice_score(history) == {
        "score": 0.6,
        "hue": 0.5,
        "psnr_gain": 1.0,
        "hue_spread": 0.2,
        "psnr_gain_spread": 2.0,
    }


def test_per_epoch_photo_scores_of_a_grey_and_a_perfect_model(tiny_shards):
    from colorizer.data.shards import LabShardDataset
    from colorizer.training.evaluate import photo_scores

    val = LabShardDataset(tiny_shards, "val")

    class Constant(torch.nn.Module):
        def __init__(self, ab=None):
            super().__init__()
            self.anchor, self.ab = torch.nn.Parameter(torch.zeros(1)), ab

        def forward(self, L):
            return torch.zeros(len(L), 2, *L.shape[2:]) if self.ab is None else self.ab

    grey = photo_scores(Constant(), val, 4)
    assert grey == {"hue_agreement": 0.0, "psnr_gain": 0.0}
    L, ab = val.get_batch(np.arange(len(val)))
    perfect = photo_scores(Constant(ab), val, len(val))
    assert perfect["hue_agreement"] == pytest.approx(1.0) and perfect["psnr_gain"] > 5


def test_a_bins_head_trains_on_the_corpus_bins_exports_colorizes_and_fine_tunes(tiny_shards, tmp_path, mlflow_store):
    from colorizer.colorize.inference import ModelRunner
    from colorizer.data.shards import LabShardDataset
    from colorizer.training import color_bins

    final = run_train(tiny_params("bins", ema_decay=0.9), tiny_shards, tmp_path / "bins")
    assert np.isfinite(final["val_g_ce"]) and np.isfinite(final["val_g_l1"]) and "val_hue_agreement" in final
    assert {"train_g_ce", "val_g_ce"} <= set(pd.read_csv(tmp_path / "bins" / "plots.csv").columns)

    # the bins are the cells the training photos reach, and colorize reads them out of model.json's model
    generator, info = load_generator(tmp_path / "bins" / "model")
    counts = colour_counts(LabShardDataset(tiny_shards, "train"))
    centres, _ = color_bins.bin_set(counts)
    assert info["head"] == "bins" and info["bins"] == len(centres) == generator.bins
    torch.testing.assert_close(generator.bin_centres, centres)
    runner = ModelRunner(tmp_path / "bins" / "model", device="cpu", precision="fp32")
    ab = runner.predict(np.zeros((2, 1, 32, 32), dtype=np.float32))
    assert ab.shape == (2, 2, 32, 32) and np.isfinite(ab).all()

    # fine-tuning keeps the bins of the model it starts from; a regression model does not fit
    params = tiny_params("bins", init=str(tmp_path / "bins" / "model"))
    tuned = build_gan(params.model, params.train, 32, torch.device("cpu"), {(0, 0): 5})
    torch.testing.assert_close(tuned.generator.bin_centres, centres)
    torch.testing.assert_close(tuned.generator.state_dict()["head.weight"], generator.state_dict()["head.weight"])
    run_train(tiny_params(epochs=1), tiny_shards, tmp_path / "regression")
    with pytest.raises(ConfigError, match=r"train.init: .* with a regression head; this training .* with a bins head"):
        build_gan(
            params.model,
            tiny_params("bins", init=str(tmp_path / "regression" / "model")).train,
            32,
            torch.device("cpu"),
            counts,
        )
