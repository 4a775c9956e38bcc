"""The trained model as an MLflow pyfunc: image files in, colorized PNG files out.

`mlflow models serve -m models:/colorizer/<version> --env-manager local` answers
POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<base64 of a photo>"]]}}
with {"predictions": [{"colorized": "<base64 of a PNG>", "error": ""}]}: any size, the photo's own
full-resolution L kept and a*b* predicted at the model's size, as `colorizer colorize` does. A row
whose image can't be colorized gets no image and the reason in `error`; the other rows are answered.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

REGISTERED_MODEL_NAME = "colorizer"
INPUT_COLUMN, OUTPUT_COLUMN, ERROR_COLUMN = "image", "colorized", "error"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
    outputs=Schema([ColSpec("binary", OUTPUT_COLUMN, required=False), ColSpec("string", ERROR_COLUMN, required=False)]),
)
# What the logged code imports when it serves (see `requirements`), pinned to the versions installed here.
RUNTIME_PACKAGES = (
    *("torch", "numpy", "numba", "pandas", "pillow", "opencv-python-headless", "pydantic", "pyyaml"),
    *("safetensors", "tqdm", "mlflow"),
)


# A server's bounds (its environment sets them): a photo's pixels (a small PNG can hold 89 MP, ~0.7 GB
# to colorize) and the photos colorized at once (requests come on the server's threads).
MAX_PIXELS_VARIABLE, CONCURRENCY_VARIABLE = "COLORIZER_SERVE_MAX_PIXELS", "COLORIZER_SERVE_CONCURRENCY"
DEFAULT_MAX_PIXELS, DEFAULT_CONCURRENCY = 40_000_000, 1


class ColorizerModel(mlflow.pyfunc.PythonModel):
    """Loads the exported generator (model.json + generator.safetensors, checked against its sha256).
    At most COLORIZER_SERVE_CONCURRENCY photos (1) are colorized at once, each of at most
    COLORIZER_SERVE_MAX_PIXELS (40 MP): a larger one is that row's error."""

    def load_context(self, context) -> None:
        import os
        import threading

        from colorizer.colorize.inference import ModelRunner

        self.runner = ModelRunner(Path(context.artifacts["model"]))
        self.max_pixels = int(os.environ.get(MAX_PIXELS_VARIABLE, DEFAULT_MAX_PIXELS))
        self.slots = threading.BoundedSemaphore(int(os.environ.get(CONCURRENCY_VARIABLE, DEFAULT_CONCURRENCY)))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from colorizer.colorize.inference import colorize_image

        colorized, errors = [], []
        for data in model_input[INPUT_COLUMN]:
            try:
                with self.slots:  # the others wait: memory stays that of this many photos
                    colorized.append(colorize_image(self.runner, bytes(data), max_pixels=self.max_pixels))
                errors.append("")  # not None: the schema's string column would turn it into NaN
            except Exception as e:  # this row's answer; the request's other photos still get theirs
                colorized.append(None)
                why = str(e) or type(e).__name__
                errors.append(f"{why} ({MAX_PIXELS_VARIABLE})" if "-pixel cap" in why else why)
        return pd.DataFrame({OUTPUT_COLUMN: colorized, ERROR_COLUMN: errors})


BEST_ALIAS = "best"  # models:/colorizer@best: the version with the highest choice score


def log_model(
    model_dir: Path, registered_model_name: str | None = REGISTERED_MODEL_NAME, scores: dict[str, float] | None = None
) -> str:
    """Log the exported model in `model_dir` to the active run (and register a new version of
    `registered_model_name`, tagged with `scores`, the choice rule's figures); returns the model's
    URI. The colorizer package's code goes with it, so it serves from any environment that has the
    packages of `requirements()`."""
    # MLflow checks the input example by downloading the model it just logged, with a progress bar per
    # file that would land in the middle of `dvc exp run`'s output; a user's own setting wins
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "colorizer"
        # The package's modules only: not the shipped weights beside them (12 MB) nor bytecode.
        shutil.copytree(Path(__file__).parents[1], code, ignore=shutil.ignore_patterns("__pycache__", "pretrained"))
        info = mlflow.pyfunc.log_model(
            name="colorizer",
            python_model=str(Path(__file__).with_name("model_from_code.py")),  # code, not a pickle
            artifacts={"model": str(model_dir)},
            code_paths=[str(code)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({INPUT_COLUMN: [example_photo()]}),
            pip_requirements=requirements(),
            registered_model_name=registered_model_name,
        )
    if registered_model_name and info.registered_model_version is not None:
        _tag_version(registered_model_name, str(info.registered_model_version), model_dir, scores or {})
    return info.model_uri


def _tag_version(name: str, version: str, model_dir: Path, scores: dict[str, float]) -> None:
    """What the registry shows beside a version: which model bytes, which DVC experiment, the choice
    rule's figures; and the alias `best` moved here when its score beats the holder's."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from colorizer.tracking import MODEL_SHA256_TAG, run_tags
    from colorizer.training.checkpoints import read_model_info

    client = MlflowClient()
    tags = {MODEL_SHA256_TAG: read_model_info(model_dir)["model_sha256"]}
    tags |= {key: value for key, value in run_tags().items() if key == "dvc_exp_name"}
    tags |= {f"choice_{key}": f"{value:.4f}" for key, value in scores.items() if key in ("score", "hue", "psnr_gain")}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if "score" not in scores:
        return
    try:
        holder = client.get_model_version_by_alias(name, BEST_ALIAS)
        best_so_far = float(holder.tags.get("choice_score", "-inf"))
    except MlflowException:  # no version holds it yet
        best_so_far = float("-inf")
    if scores["score"] > best_so_far:
        client.set_registered_model_alias(name, BEST_ALIAS, version)


def requirements() -> list[str]:
    """The serving environment's pins. torch without its local label (`2.13.0+cpu` is the CPU build's
    name on PyTorch's own index, which PyPI does not serve): pip then takes PyPI's build; add
    `--extra-index-url https://download.pytorch.org/whl/cpu` to the environment for the CPU-only one."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def example_photo() -> bytes:
    """A small grey PNG: the input example MLflow stores with the model and runs once to check it."""
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    buffer = io.BytesIO()
    Image.fromarray((128 + 60 * np.sin(x / 7.0 + y / 11.0)).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
