"""The one typed config: mirrors params.yaml, validated once when a stage starts.

An unknown key, a wrong type or an impossible value stops the stage with one line naming the key
(`ConfigError`), before any work is done. Every section lives here (not beside its code, as
nanoGPT's GPTConfig does) so that the data stages can validate params without importing torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class UserError(Exception):
    """A mistake the user can fix (bad params, missing input): the CLI prints it as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """A bad params.yaml; the message is one line that names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SPLITS = ("train", "val", "test")
# The image formats read (fetch) and written (colorize --format); Pillow opens MPO through JPEG.
FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF")
ImageFormat = Literal["JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF"]
Precision = Literal["auto", "fp32", "bf16"]


class SplitConfig(Section):
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)
    # the shares for photographs (not cut-outs), where they are few: a model is chosen on its val
    # photographs, so they must be enough to mean something; None: val and test
    photo_val: float | None = Field(None, ge=0.0, lt=1.0)
    photo_test: float | None = Field(None, ge=0.0, lt=1.0)
    # at most this many training photographs (cut-outs aside), the first in content-hash order, so a
    # smaller set is part of every larger one: a learning curve; the others get the split "unused"
    train_photos: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _leave_room_for_train(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must sum below 1 to leave photos for train (got {self.val + self.test})")
        val, test = self.shares("photo")
        if val + test >= 1.0:
            raise ValueError(f"photo_val + photo_test must sum below 1 to leave photos for train (got {val + test})")
        return self

    def shares(self, kind: str) -> tuple[float, float]:
        """(val, test) for images of `kind` (photo or cutout)."""
        if kind != "photo":
            return self.val, self.test
        return (self.val if self.photo_val is None else self.photo_val), (
            self.test if self.photo_test is None else self.photo_test
        )


class ArchiveConfig(Section):
    max_members: int = Field(100_000, gt=0)
    max_member_bytes: int = Field(200_000_000, gt=0)
    max_total_bytes: int = Field(20_000_000_000, gt=0)
    max_ratio: float = Field(200.0, gt=1.0)


class DownloadConfig(Section):
    workers: int = Field(8, gt=0)
    timeout_seconds: float = Field(15.0, gt=0.0)  # each wait for data
    max_seconds: float = Field(300.0, gt=0.0)  # one download in all
    retries: int = Field(2, ge=0)
    max_bytes: int = Field(100_000_000, gt=0)


class FetchConfig(Section):
    sources: list[Literal["samples", "data", "corpus"]] = Field(
        default_factory=lambda: ["samples", "data"], min_length=1
    )
    formats: list[ImageFormat] = Field(default_factory=lambda: list(FORMATS), min_length=1)
    min_side: int = Field(64, gt=0)
    max_pixels: int = Field(100_000_000, gt=0)
    min_chroma: float = Field(3.0, ge=0.0)
    split: SplitConfig = SplitConfig()
    archive: ArchiveConfig = ArchiveConfig()
    download: DownloadConfig = DownloadConfig()


class AugmentConfig(Section):
    image_size: int = Field(64, ge=32)
    copies_per_image: int = Field(8, gt=0)
    copies_per_cutout: int | None = Field(None, gt=0)  # None: copies_per_image; cut-outs are small and alike
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    rotate_degrees: float = Field(10.0, ge=0.0, le=180.0)
    scale_jitter: float = Field(0.1, ge=0.0, lt=1.0)
    affine_p: float = Field(0.5, ge=0.0, le=1.0)
    brightness_contrast_p: float = Field(0.0, ge=0.0, le=1.0)
    brightness_limit: float = Field(0.1, ge=0.0, le=1.0)
    contrast_limit: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two (got {self.image_size})")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1 (got {list(self.crop_scale)})")
        return self


class ShardConfig(Section):
    images_per_shard: int = Field(1024, gt=0)


PIX2PIX_WIDTHS = [64, 128, 256, 512, 512, 512, 512, 512]


class ModelConfig(Section):
    """Widths of both networks; `width_multiplier` scales them all (0.25 turns 64..512 into 16..128)."""

    generator_widths: list[int] = Field(default_factory=lambda: list(PIX2PIX_WIDTHS), min_length=1)
    discriminator_widths: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=1)
    width_multiplier: float = Field(1.0, gt=0.0, le=8.0)
    # regression: a*b* from a tanh, trained with L1 (the design document); bins: a distribution over
    # colour bins trained with a rebalanced cross-entropy (Zhang et al. 2016; see color_bins)
    head: Literal["regression", "bins"] = "regression"

    @model_validator(mode="after")
    def _positive(self) -> ModelConfig:
        if min(self.generator_widths + self.discriminator_widths) <= 0:
            raise ValueError("every width must be a positive integer")
        return self

    def scaled(self, widths: list[int]) -> list[int]:
        return [max(1, round(w * self.width_multiplier)) for w in widths]


class TrainConfig(Section):
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(16, gt=1)  # BatchNorm needs more than one image
    lr: float = Field(2.0e-4, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.999)
    l1_lambda: float = Field(100.0, ge=0.0)
    ce_lambda: float = Field(3.0, ge=0.0)  # model.head: bins: the cross-entropy's weight, in place of L1's
    l1_warmup_epochs: int = Field(0, ge=0)
    lr_decay_epochs: int = Field(0, ge=0)  # the last N epochs (all, if fewer) decay lr linearly towards 0 (pix2pix)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: validate and export an EMA of G's weights
    init: str = "none"  # none | shipped | a model folder: G starts from those weights (fine-tuning)
    precision: Precision = "auto"
    channels_last: bool = True
    device: str = "auto"
    threads: int = Field(0, ge=0)  # 0: torch's default (one per core)
    loader_workers: int = Field(0, ge=0)
    sample_count: int = Field(7, gt=0)
    nproc_per_node: int = Field(1, ge=1)  # torchrun ranks on this machine (the train stage's command)
    sync_batchnorm: bool = False  # CUDA only: BatchNorm statistics over all ranks' batches


class EvaluateConfig(Section):
    batch_size: int = Field(32, gt=0)
    device: str = "auto"  # the generator runs with train.precision, as in training's validation


class ColorizeOptions(Section):
    """How `colorizer colorize` runs: its command-line flags, and the showcase stage's `colorize:`."""

    size: int | None = Field(None, gt=0)  # model input size; None: the size it was trained at
    # images per model call: the generator's innermost layers cost about the same per call, so a CPU
    # runs it faster per photo at 16 than at 8 (`make bench`'s colorize rows)
    batch_size: int = Field(16, gt=0)
    workers: int | None = Field(None, ge=0)  # decoders/encoders; None: cores - 1, at least 2; 0: none
    worker_kind: Literal["auto", "threads", "processes"] = "auto"  # auto: threads beside a CPU model
    device: str = "auto"
    format: ImageFormat | None = None  # output format; None: the input's
    quality: int = Field(95, ge=1, le=100)  # JPEG/WebP
    overwrite: bool = False
    strict: bool = False  # exit 1 if any input failed
    max_pixels: int = Field(250_000_000, gt=0)  # decompression-bomb cap for one scan
    precision: Precision = "auto"
    report_seconds: bool = True  # the report's per-photo seconds (the showcase stage leaves them out)
    history: bool = True  # add this run's line to DST/colorize_history.csv (not in the showcase's DVC output)
    engine: Literal["local", "ray"] = "local"  # ray: Ray Data on a cluster (the `ray` extra)
    address: str | None = None  # the Ray cluster: auto, HOST:PORT; None: RAY_ADDRESS, else a local one
    actors: int | None = Field(None, gt=0)  # model actors; None: one per GPU in the cluster, else 1
    cpus_per_actor: float = Field(1.0, gt=0)  # the torch threads of each model actor, too
    gpus_per_actor: float | None = Field(None, ge=0)  # None: 1 where the cluster has GPUs, else 0

    @classmethod
    def from_flags(cls, **values: Any) -> ColorizeOptions:
        """Validated options whose error names the command-line flag, e.g. `--quality: ...`."""
        try:
            return cls(**values)
        except ValidationError as e:
            first = e.errors()[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-")
            raise UserError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from None


class ShowcaseConfig(Section):
    input: str = "test-split"  # greyscale copies of the test split, or a folder/archive of your scans
    thumbnail_height: int = Field(160, ge=16)
    contact_sheet_rows: int = Field(12, gt=0)
    colorize: ColorizeOptions = ColorizeOptions()


class Params(Section):
    seed: int = 0
    fetch: FetchConfig = FetchConfig()
    augment: AugmentConfig = AugmentConfig()
    shard: ShardConfig = ShardConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    showcase: ShowcaseConfig = ShowcaseConfig()


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if raw is None:
        raise ConfigError(f"{path}: empty (start from the repository's params.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    missing = [name for name in Params.model_fields if name not in raw]
    if missing:  # said, not silent: the built-in defaults are the design document's full-size settings
        logging.getLogger(__name__).warning(
            "%s: no %s section%s: using the built-in defaults for %s",
            *(path, ", ".join(missing), "s" if len(missing) > 1 else "", "them" if len(missing) > 1 else "it"),
        )
    return parse_params(raw, str(path))


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against params.yaml's documented keys)"
    got = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{error.error_count() - 1} more]" if error.error_count() > 1 else ""
    return f"{source}: {key}: {message}{shown}{more}"
