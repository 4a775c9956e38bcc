"""Training checkpoints (resume) and the exported generator (what `colorize` loads).

Both are loaded without unrestricted pickle: checkpoints with `torch.load(weights_only=True)`,
the generator from safetensors plus a small JSON that says how to rebuild it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from colorizer.config import UserError
from colorizer.data.lab import AB_SCALE, L_SCALE, L_SHIFT
from colorizer.files import atomic_path, atomic_write_bytes, atomic_write_json
from colorizer.training.models import Discriminator, Generator

CHECKPOINT_FORMAT = 2  # 2: with a checksum of its contents
CHECKSUM_KEY = "checksum"
# The model `colorizer colorize` uses without --model: trained on the corpus, shipped in the package
# (fp16 safetensors, model.json, MODEL_CARD.md).
PRETRAINED_DIR = Path(__file__).parents[1] / "pretrained"
M = TypeVar("M", bound=torch.nn.Module)
GENERATOR_FILE, DISCRIMINATOR_FILE, MODEL_INFO_FILE = "generator.safetensors", "discriminator.safetensors", "model.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or model file that can't be used; the message says which file and what to do."""


class OutdatedCheckpoint(CheckpointError):
    """A whole checkpoint of an older format: its training code has changed too, so it starts over."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically, with a checksum of everything in it that `load_checkpoint` verifies (torch.load
    reads a tensor with flipped bits without a word). Serialised in memory, then written: torch.save
    into a file reports a full disk as an opaque RuntimeError, and given a path it would also name
    the archive inside after the temp file, making the same state different bytes."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    payload[CHECKSUM_KEY] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as e:
        raise CheckpointError(
            f"{path}: could not save the checkpoint ({e.strerror or e}); the previous one is kept: "
            "make room and rerun to resume from it"
        ) from None


def content_digest(obj: Any) -> str:
    """sha256 over a checkpoint's contents: tensors by dtype, shape and bytes, other values by repr."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != CHECKSUM_KEY:
                    digest.update(f"<{key!r}>".encode())
                    walk(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"[{len(value)}".encode())
            for item in value:
                walk(item)
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())

    walk(obj)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle stream
        raise CheckpointError(
            f"{path}: corrupt or not a checkpoint ({type(e).__name__}: {str(e)[:120]}); delete it to start over"
        ) from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if isinstance(found, int) and 0 < found < CHECKPOINT_FORMAT:
        raise OutdatedCheckpoint(f"{path}: written by an older version (format {found})")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT}; delete it to start over"
        )
    if state.pop(CHECKSUM_KEY, None) != content_digest(state):
        raise CheckpointError(f"{path}: checksum mismatch, the file is damaged; delete it to start over")
    return state


def load_into(module: torch.nn.Module, state_dict: dict, source: Path | str, assign: bool = False) -> None:
    try:
        module.load_state_dict(state_dict, assign=assign)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(
            f"{source}: does not fit the model in params ({first[:160]}); delete it to start over"
        ) from None


def export_model(out_dir: Path, generator: Generator, discriminator: Discriminator, info: dict[str, Any]) -> dict:
    """Write the generator (+ discriminator, for evaluation) and model.json; returns model.json's content."""
    generator_path = out_dir / GENERATOR_FILE
    for module, path in ((generator, generator_path), (discriminator, out_dir / DISCRIMINATOR_FILE)):
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    info = {
        **info,
        "generator_widths": generator.widths,
        "discriminator_widths": [block.conv.out_channels for block in discriminator.blocks],
        "image_size": generator.image_size,
        "head": "bins" if generator.bins else "regression",
        **({"bins": generator.bins} if generator.bins else {}),
        "lab": {"L_scale": L_SCALE, "L_shift": L_SHIFT, "ab_scale": AB_SCALE},
        "model_sha256": sha256_of(generator_path),
    }
    atomic_write_json(out_dir / MODEL_INFO_FILE, info)
    return info


def read_model_info(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no trained model here (run `dvc repro train` or pass --model)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    lab = info.get("lab", {})
    if (lab.get("L_scale"), lab.get("L_shift"), lab.get("ab_scale")) != (L_SCALE, L_SHIFT, AB_SCALE):
        raise CheckpointError(f"{path}: trained with another Lab normalisation ({lab}); retrain it with this version")
    return info


def load_generator(
    model_dir: Path, memory_format: torch.memory_format = torch.contiguous_format
) -> tuple[Generator, dict[str, Any]]:
    """The generator in fp32 (shipped weights are stored in fp16), its convolution weights in
    `memory_format`, after checking its bytes against model.json's sha256: a damaged file must not
    colorize an archive white."""
    info = read_model_info(model_dir)
    path = Path(model_dir) / GENERATOR_FILE
    # hashed on a second core while the module is built (hashlib lets go of the GIL): half of loading
    # a full-width generator, which a bulk run waits for
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(sha256_of, path) if path.is_file() and info.get("model_sha256") else None
        bins = info.get("bins", 0)  # a model.json without "head" is a regression model
        generator = _built_from(
            lambda: Generator(info["generator_widths"], info["image_size"], bins), path, memory_format
        )
        if digest is not None and digest.result() != info["model_sha256"]:
            raise CheckpointError(
                f"{path}: sha256 differs from {MODEL_INFO_FILE}'s model_sha256 (damaged or replaced); "
                "restore it or retrain"
            )
    return generator, info


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ship_generator(model_dir: Path, out_dir: Path, extra_info: dict[str, Any] | None = None) -> dict:
    """Copy a trained generator as fp16 safetensors (half the bytes; colorize computes in fp32 or
    bf16 anyway) with its model.json, for shipping in git; returns the new model.json content."""
    generator, info = load_generator(model_dir)
    path = Path(out_dir) / GENERATOR_FILE
    with atomic_path(path) as tmp:
        tensors = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in generator.state_dict().items()
        }
        save_file(tensors, str(tmp))
    info = info | (extra_info or {})
    info |= {"weights_dtype": "float16", "model_sha256": sha256_of(path)}
    atomic_write_json(Path(out_dir) / MODEL_INFO_FILE, info)
    return info


def load_discriminator(model_dir: Path) -> Discriminator:
    info = read_model_info(model_dir)
    path = Path(model_dir) / DISCRIMINATOR_FILE
    return _built_from(lambda: Discriminator(info["discriminator_widths"]), path)


def _built_from(build: Callable[[], M], path: Path, memory_format: torch.memory_format = torch.contiguous_format) -> M:
    """Build a module without initialising it (a random init that the weights would all overwrite) and
    take the saved tensors as its own; in eval mode."""
    with torch.device("meta"):
        module = build()
    load_into(module, _load_safetensors(path, memory_format), path, assign=True)
    tensors = list(itertools.chain(module.parameters(), module.buffers()))
    if any(t.is_meta for t in tensors):
        raise CheckpointError(f"{path}: does not hold every tensor of the model; delete it to start over")
    # one sum per tensor: NaN or inf in any element makes it non-finite (and finite weights don't add
    # up to 3e38): a sum per tensor reads the weights once, where an isfinite mask writes one as large
    sums = [t.sum(dtype=torch.float32) for t in tensors if t.is_floating_point()]
    if sums and not torch.isfinite(torch.stack(sums)).all():
        raise CheckpointError(f"{path}: weights hold NaN or inf (a diverged training?); retrain it")
    return module.eval()


def _load_safetensors(
    path: Path, memory_format: torch.memory_format = torch.contiguous_format
) -> dict[str, torch.Tensor]:
    """The file's tensors, fp16 ones as fp32; 4-D ones (convolution weights) in `memory_format`, in
    the same copy (rather than a second pass over the weights after loading)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read model weights ({e})") from None

    def converted(tensor: torch.Tensor) -> torch.Tensor:  # itself where nothing changes
        dtype = torch.float32 if tensor.dtype == torch.float16 else tensor.dtype
        return tensor.to(dtype, memory_format=memory_format if tensor.dim() == 4 else torch.preserve_format)

    return {name: converted(tensor) for name, tensor in tensors.items()}
