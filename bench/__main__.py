"""`make bench`: ours vs a naive reference vs the machine's limit, all measured in this one run.

Prints a table, then ONE line of JSON with every figure (images/s unless the key says otherwise).
Absolute times on shared machines are noisy; the ratios are what we track.
"""

from __future__ import annotations

from colorizer.runtime import setup_process

# OpenMP's spin setting before torch loads; freed memory is kept only after the naive references ran
# with the process defaults (see main).
setup_process(keep_memory=False)

import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import ddp_scaling, photo_costs, profile_train, ray_engine
from bench.common import BATCH, DISCRIMINATOR_WIDTHS, SIZE, matmul_gflops, sync, time_calls, write_jpegs
from colorizer import fast
from colorizer.colorize.inference import ModelRunner
from colorizer.config import PIX2PIX_WIDTHS, ColorizeOptions, ModelConfig, TrainConfig, parse_params
from colorizer.data.shards import LabShardDataset, write_shards
from colorizer.data.synthetic import synthetic_shards
from colorizer.devices import autocast_dtype, pick_device
from colorizer.runtime import keep_freed_memory
from colorizer.training.checkpoints import export_model
from colorizer.training.gan import build_gan
from colorizer.training.models import Discriminator, Generator
from colorizer.training.train import make_loader, train

COLORIZE_BATCH = ColorizeOptions().batch_size  # colorize's default, and the model's alongside it


def naive_train_step(generator, discriminator, opt_g, opt_d, L, ab) -> None:
    """What a tutorial pix2pix step does: fp32, eager, NCHW, default optimizer settings."""
    fake = generator(L)
    opt_d.zero_grad()
    real_logits = discriminator(torch.cat([L, ab], 1))
    fake_logits = discriminator(torch.cat([L, fake.detach()], 1))
    d_loss = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad()
    fake_logits = discriminator(torch.cat([L, fake], 1))
    g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)) + 100 * F.l1_loss(fake, ab)
    g_loss.backward()
    opt_g.step()


def bench_naive(device: torch.device, repeats: int) -> dict:
    """The references, run first: a tutorial's training step and inference, with the process defaults
    (before `keep_freed_memory`, which `train` and `colorize` call, changes how this process allocates)."""
    torch.manual_seed(0)
    generator = Generator(PIX2PIX_WIDTHS, SIZE).to(device).eval()  # inference first, as a fresh script would
    x = torch.rand(BATCH, 1, SIZE, SIZE, device=device) * 2 - 1

    def infer():
        with torch.no_grad():
            generator(x)

    infer_s = time_calls(infer, device, repeats=repeats)
    generator.train()
    L, ab = train_batch(device)
    discriminator = Discriminator(DISCRIMINATOR_WIDTHS).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    train_s = time_calls(
        lambda: naive_train_step(generator, discriminator, opt_g, opt_d, L, ab), device, repeats=repeats
    )
    return {"train_naive_img_s": BATCH / train_s, "infer_naive_img_s": BATCH / infer_s}


def train_batch(device: torch.device, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    L = torch.rand(batch, 1, SIZE, SIZE, device=device) * 2 - 1
    ab = (torch.rand(batch, 2, SIZE, SIZE, device=device) * 2 - 1) * 0.5
    return L, ab


def bench_train(device: torch.device, repeats: int, batch: int = BATCH) -> dict:
    """Training images/s and FLOPs per step, and the matmul peak measured just before the steps
    (see `train_mfu`)."""
    torch.manual_seed(0)
    L, ab = train_batch(device, batch)
    gan = build_gan(ModelConfig(), TrainConfig(), SIZE, device)  # exactly as `train` builds it by default
    L_ours, ab_ours = gan.to_device(L), gan.to_device(ab)
    gan.train_step(L_ours, ab_ours)  # compiles the fused kernels for these shapes (seconds, the first time)
    peak = matmul_gflops(gan.amp_dtype or torch.float32, device)
    ours_s = time_calls(lambda: gan.train_step(L_ours, ab_ours), device, repeats=repeats)
    with FlopCounterMode(display=False) as counter:
        gan.train_step(L_ours, ab_ours)
    flops = counter.get_total_flops()
    dtype = "bf16" if gan.amp_dtype == torch.bfloat16 else "fp32"
    return {"train_img_s": batch / ours_s, "train_flops_per_step": flops, "train_dtype": dtype, "peak": peak}


def train_mfu(at_batch: dict, at_default_batch: dict, first_peak: float) -> dict:
    """MFU against the highest of the matmul peaks measured in the run (at its start and just before
    each training measurement). This machine's AMX matmul measured 1416 to 2069 GFLOP/s within
    minutes while training's speed moved by under 10%: against whichever peak came last the MFU of
    the same step read anywhere from 0.36 to 0.60; against the best one it is the share of what the
    hardware showed it can do."""
    peaks = [first_peak, at_batch["peak"], at_default_batch["peak"]]
    best = max(peaks) * 1e9

    def mfu(figures: dict, batch: int) -> float:
        return figures["train_flops_per_step"] * figures["train_img_s"] / batch / best

    return {
        "train_mfu": mfu(at_batch, BATCH),
        "train_mfu_default_batch": mfu(at_default_batch, TrainConfig().batch_size),
        "train_peak_gflops": max(peaks),
        "train_peak_gflops_seen": [round(p) for p in peaks],
    }


def bench_loader(root: Path, device: torch.device) -> dict:
    """Images/s the training loader delivers from 256x256 shards, with the default workers."""
    rng = np.random.default_rng(0)
    count = 512
    packs = root / "packs"
    packs.mkdir()
    np.save(packs / "train.npy", rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8))
    for split in ("val", "test"):
        np.save(packs / f"{split}.npy", np.zeros((0, SIZE, SIZE, 3), np.uint8))
    import pandas as pd

    pd.DataFrame({"split": ["train"] * count, "row": range(count), "id": map(str, range(count))}).to_parquet(
        packs / "index.parquet"
    )
    write_shards(packs, root / "shards", images_per_shard=128)
    dataset = LabShardDataset(root / "shards", "train")
    cfg = TrainConfig()
    loader = make_loader(
        dataset, BATCH, cfg.loader_workers, torch.Generator().manual_seed(0), pin_memory=device.type == "cuda"
    )

    def one_epoch():
        for L, ab in loader:
            L.to(device, non_blocking=True), ab.to(device, non_blocking=True)

    seconds = time_calls(one_epoch, device, warmup=1, repeats=3)
    return {"loader_img_s": (count // BATCH) * BATCH / seconds}


def bench_infer(model_dir: Path, device: torch.device, repeats: int) -> dict:
    """The generator as `colorize` runs it (numpy in, numpy out). The median of 3 separately loaded
    copies: one copy's speed depends on where its tensors landed in memory (+-8% between copies here),
    and each colorize run loads its own, so a single copy would make the colorize ratio a coin toss."""
    batch = np.random.default_rng(0).uniform(-1, 1, (BATCH, 1, SIZE, SIZE)).astype(np.float32)
    seconds = []
    for _ in range(3):
        predict = ModelRunner(model_dir, device=device.type).predict
        seconds.append(time_calls(functools.partial(predict, batch), device, repeats=repeats, min_seconds=1.5))
    return {"infer_img_s": BATCH / statistics.median(seconds)}


# One `colorize` call per fresh interpreter (bench/colorize_e2e.py), as under the `colorizer` command:
# nothing is warm but what the interpreter's imports made so (a second call in one process would find
# OpenCV's tables built). Before it, the same process times the model alone for 1.5 s (as `bench_infer`
# does, on its own copy): this machine's speed drifts by 10-20% within minutes, so the colorize/inference
# ratio compares figures taken seconds apart. That also pays torch's one-time set-up (~0.2 s of kernel
# selection on the first batch) before the clock starts, as the interpreter's imports are.


def bench_colorize(root: Path, model_dir: Path, device: torch.device) -> dict:
    """`colorize` end to end (decode, Lab, model, full-size recombination, encode, write) on 64 JPEGs:
    the median of 5 calls, each in a fresh interpreter into an empty folder, worker start-up and model
    loading included, the interpreter's imports not; and the median of the 5 ratios to the inference
    speed measured just before each call, in the same process. The marginal rate, start-up excluded,
    is the difference from the median of 3 calls on 8 images, interleaved with the others."""
    write_jpegs(root / "scans8", 8)
    write_jpegs(root / "scans64", 64)
    runs: dict[str, list[dict]] = {"scans8": [], "scans64": []}
    for run, name in enumerate(["scans64", "scans8"] * 3 + ["scans64"] * 2):
        command = [
            sys.executable,
            "-m",
            "bench.colorize_e2e",
            str(root / name),
            str(root / f"out{run}"),
            str(model_dir),
        ]
        done = subprocess.run([*command, device.type, str(COLORIZE_BATCH)], capture_output=True, text=True, check=True)
        runs[name].append(json.loads(done.stdout.splitlines()[-1]))
        speed = int(name[5:]) / runs[name][-1]["seconds"]
        print(
            f"  colorize {name}: {speed:.2f} img/s, inference alongside {runs[name][-1]['infer_img_s']:.2f}",
            file=sys.stderr,
        )
    seconds = {name: statistics.median(r["seconds"] for r in results) for name, results in runs.items()}
    infer_img_s = statistics.median(r["infer_img_s"] for r in runs["scans64"])
    model_core_ms = statistics.median(r["model_core_ms"] for r in runs["scans64"])
    worker_core_ms = photo_costs.worker_core_ms(root / "scans8", root / "worker_costs", SIZE)
    return {
        "colorize_e2e_img_s": 64 / seconds["scans64"],
        "colorize_marginal_img_s": 56 / max(seconds["scans64"] - seconds["scans8"], 1e-9),
        "colorize_infer_img_s": infer_img_s,
        "colorize_batch": COLORIZE_BATCH,
        "colorize_e2e_vs_infer": statistics.median(64 / r["seconds"] / r["infer_img_s"] for r in runs["scans64"]),
        "colorize_model_core_ms": model_core_ms,
        "colorize_worker_core_ms": worker_core_ms,
        "colorize_ceiling_vs_infer": colorize_ceiling(device, 1000 / infer_img_s, model_core_ms, worker_core_ms),
    }


def colorize_ceiling(device: torch.device, model_ms: float, model_core_ms: float, worker_core_ms: float) -> float:
    """The machine's limit for colorize against the model alone: every core busy, the workers' core
    time (decode, Lab, encode, write: `worker_core_ms` per photo) filling each moment the model leaves
    a core idle and costing it nothing more. On the CPU the model itself takes `model_core_ms` of the
    cores' time per photo; beside a GPU the workers have the cores to themselves."""
    cores = os.cpu_count() or 1
    busy = worker_core_ms + (model_core_ms if device.type == "cpu" else 0.0)
    return min(1.0, cores * model_ms / busy)


def quality_check(root: Path, device: torch.device) -> dict:
    """The fast path must not cost quality: same data, seed and steps in fp32 and by default."""
    shards = synthetic_shards(root / "quality", size=64, counts=(("train", 96), ("val", 16), ("test", 0)))
    results = {}
    os.environ["DVC_ROOT"] = str(root / "quality")  # a throwaway MLflow store
    for precision in ("fp32", "auto"):
        params = parse_params(
            {
                "seed": 1,
                "model": {"width_multiplier": 0.25},
                "train": {"epochs": 4, "batch_size": 16, "precision": precision},
            }
        )
        out = root / "quality" / precision
        final = train(params, shards, out / "model", out / "state", out / "plots.csv", out / "m.json")
        results[precision] = final["val_g_l1"]
    return {
        "quality_val_l1_fp32": results["fp32"],
        "quality_val_l1_fast": results["auto"],
        "quality_gap": abs(results["auto"] - results["fp32"]) / results["fp32"],
    }


def peak_memory(root: Path, model_dir: Path) -> dict:
    """Max RSS (MiB) of training at the 256 preset, and of colorizing one 6000x4000 photo."""
    train_kib = int(
        subprocess.run(
            [sys.executable, "-m", "bench.peak_train"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    write_jpegs(root / "huge", 1, 6000, 4000)
    measure = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    colorizer_bin = str(Path(sys.executable).parent / "colorizer")
    colorize_kib = int(
        subprocess.run(
            [
                sys.executable,
                "-c",
                measure,
                colorizer_bin,
                "colorize",
                str(root / "huge"),
                str(root / "huge-out"),
                "--model",
                str(model_dir),
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
    )
    return {"train_peak_rss_mib": train_kib / 1024, "colorize_6000x4000_peak_rss_mib": colorize_kib / 1024}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def machine_kind(device: torch.device) -> str:
    """What the figures depend on: the GPU's name, or the CPU's widest matrix ISA (the project's CPUs
    are Intel Xeon with AMX, AMD EPYC with AVX512-BF16, and AMD EPYC with AVX2 only)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    try:
        flags = set(
            next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
        )
    except (OSError, StopIteration):
        return torch.backends.cpu.get_cpu_capability()
    for flag, isa in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2")):
        if flag in flags:
            return isa
    return torch.backends.cpu.get_cpu_capability()


RESULTS = Path(__file__).parent / "results"


def save_results(figures: dict) -> Path:
    """bench/results/<date>_<kind>.json: one file per day and machine kind, so that figures of several
    kinds sit side by side (and the README's tables cite them) without rewriting each other."""
    vendor = "intel" if "intel" in figures["device"].lower() else "amd" if "amd" in figures["device"].lower() else ""
    kind = "-".join(part for part in (vendor, figures["kind"].lower()) if part).replace(" ", "-")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{figures['date']}_{kind}.json"
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path


def main() -> None:
    device = pick_device("auto")
    repeats = 3 if device.type == "cpu" else 20
    figures: dict = {
        "device": device_name(device),
        "kind": machine_kind(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures["matmul_gflops_fp32"] = matmul_gflops(torch.float32, device)
        # Without native bf16 (an AVX2-only CPU) torch.mm falls back to a scalar loop at ~1 GFLOP/s:
        # a 4096^2 product would take minutes and is no limit that anything here runs at.
        native_bf16 = autocast_dtype("auto", device) == torch.bfloat16
        figures["matmul_gflops_bf16"] = matmul_gflops(torch.bfloat16, device) if native_bf16 else None
        print("naive references, train ...", file=sys.stderr)
        figures |= bench_naive(device, repeats)
        keep_freed_memory()  # as `train` and `colorize` do, from here on
        at_batch = bench_train(device, repeats)
        # also at the batch `train` takes by default (params.yaml): the generator's innermost layers
        # (16x16 down to 1x1 pixels, the largest weights) cost about the same per step at either
        # batch, so a larger batch runs nearer the matmul peak
        at_default_batch = bench_train(device, repeats, TrainConfig().batch_size)
        first_peak = figures[f"matmul_gflops_{at_batch['train_dtype']}"]
        figures |= {k: v for k, v in at_batch.items() if k != "peak"} | {
            "train_default_batch": TrainConfig().batch_size,
            "train_img_s_default_batch": at_default_batch["train_img_s"],
        }
        figures |= train_mfu(at_batch, at_default_batch, first_peak)
        with fast.enabled_as(False):  # COLORIZER_FAST=0: the design document's blocks, torch's Adam
            figures["train_plain_img_s"] = bench_train(device, repeats)["train_img_s"]
        figures["train_op_time_share"] = profile_train.main(BATCH)["share_of_op_time"]
        model_dir = root / "model"
        export_model(
            model_dir,
            Generator(PIX2PIX_WIDTHS, SIZE).eval(),
            Discriminator(DISCRIMINATOR_WIDTHS),
            {},
        )
        print("loader, inference, colorize ...", file=sys.stderr)
        figures |= bench_loader(root, device)
        figures |= bench_infer(model_dir, device, repeats)
        with fast.enabled_as(False):  # the generator as trained, unfolded, on ATen's convolutions
            figures["infer_plain_img_s"] = bench_infer(model_dir, device, repeats)["infer_img_s"]
        figures |= bench_colorize(root, model_dir, device)
        print("quality, memory ...", file=sys.stderr)
        figures |= quality_check(root, device)
        figures |= peak_memory(root, model_dir)
        print("torchrun: 1 and 2 ranks ...", file=sys.stderr)
        figures |= ddp_scaling.main()
        print("colorize on Ray: local engine, 1 and 2 actors ...", file=sys.stderr)
        figures |= ray_engine.main(root / "ray", model_dir)
    sync(device)
    print_table(figures)
    figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
    print(f"written to {save_results(figures)}", file=sys.stderr)
    print(json.dumps(figures))


def print_table(f: dict) -> None:
    rows = [
        (
            "matmul limit fp32 / bf16 (GFLOP/s)",
            f"{f['matmul_gflops_fp32']:.0f} / " + (f"{bf16:.0f}" if (bf16 := f["matmul_gflops_bf16"]) else "n/a"),
            "" if bf16 else "no native bf16 on this device: ours trains in fp32",
        ),
        ("train step, naive fp32 (img/s)", f"{f['train_naive_img_s']:.2f}", ""),
        (
            "train step, ours (img/s)",
            f"{f['train_img_s']:.2f}",
            f"{f['train_img_s'] / f['train_naive_img_s']:.2f}x naive (target 2.5x)",
        ),
        (
            "train step, COLORIZER_FAST=0 (img/s)",
            f"{f['train_plain_img_s']:.2f}",
            f"the fast paths: {f['train_img_s'] / f['train_plain_img_s']:.2f}x these plain ones",
        ),
        (
            f"train MFU vs {f['train_dtype']} matmul peak",
            f"{f['train_mfu']:.2f}",
            f"the best of {' / '.join(map(str, f['train_peak_gflops_seen']))} GFLOP/s measured (target 0.45 on AMX)",
        ),
        (
            f"train step at train.batch_size {f['train_default_batch']} (img/s)",
            f"{f['train_img_s_default_batch']:.2f}",
            f"MFU {f['train_mfu_default_batch']:.2f}, "
            f"{f['train_img_s_default_batch'] / f['train_img_s']:.2f}x batch {BATCH}",
        ),
        (
            "train step op time: conv / fused BN+act+pool/upsample / BN / act / pool+upsample",
            " / ".join(f"{100 * f['train_op_time_share'].get(k, 0):.0f}%" for k in profile_train.TABLE_KINDS),
            "(python -m bench.profile_train)",
        ),
        (
            "loader from shards (img/s)",
            f"{f['loader_img_s']:.0f}",
            f"{f['loader_img_s'] / f['train_img_s']:.0f}x train (target 10x)",
        ),
        ("generator inference, naive fp32 (img/s)", f"{f['infer_naive_img_s']:.2f}", ""),
        (
            "generator inference, ours (img/s)",
            f"{f['infer_img_s']:.2f}",
            f"{f['infer_img_s'] / f['infer_naive_img_s']:.2f}x naive (target 1.8x)",
        ),
        (
            "generator inference, COLORIZER_FAST=0 (img/s)",
            f"{f['infer_plain_img_s']:.2f}",
            f"the fast paths: {f['infer_img_s'] / f['infer_plain_img_s']:.2f}x these plain ones",
        ),
        (
            "colorize end to end, 1024x768 JPEG (img/s)",
            f"{f['colorize_e2e_img_s']:.2f}",
            f"{f['colorize_e2e_vs_infer']:.2f}x inference alongside, {f['colorize_infer_img_s']:.1f} at batch "
            f"{COLORIZE_BATCH} (target 0.8x)",
        ),
        (
            "colorize's limit: cores x model time / (model + worker core time)",
            f"{f['colorize_ceiling_vs_infer']:.2f}x",
            f"model {f['colorize_model_core_ms']:.0f} + workers {f['colorize_worker_core_ms']:.1f} core-ms per photo",
        ),
        (
            "colorize marginal, start-up excluded (img/s)",
            f"{f['colorize_marginal_img_s']:.2f}",
            f"{f['colorize_marginal_img_s'] / f['colorize_infer_img_s']:.2f}x inference alongside",
        ),
        (
            "val L1 after a fixed run: fp32 / fast",
            f"{f['quality_val_l1_fp32']:.4f} / {f['quality_val_l1_fast']:.4f}",
            f"gap {100 * f['quality_gap']:.1f}% (bound 5%)",
        ),
        (
            "train on torchrun ranks 1 / 2, same global batch (img/s)",
            f"{f['ddp_1rank_img_s']:.1f} / {f['ddp_2rank_img_s']:.1f}",
            f"speedup {f['ddp_speedup']:.2f}x, efficiency {f['ddp_scaling_efficiency']:.2f} "
            f"(threads per rank {f['ddp_threads_per_rank']})",
        ),
        *ray_engine.table_rows(f),
        (
            "peak RSS: train 256 preset / colorize 6000x4000 (MiB)",
            f"{f['train_peak_rss_mib']:.0f} / {f['colorize_6000x4000_peak_rss_mib']:.0f}",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"# make bench: {f['date']}, {f['device']} ({f['kind']}), torch {f['torch_version']}, {f['threads']} threads")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>15}  {ratio}")


if __name__ == "__main__":
    main()
