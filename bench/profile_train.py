"""Where a training step's time goes (`python -m bench.profile_train [BATCH]`): the design document's
256 px preset as `train` builds it, one step under torch.profiler after warm-up, CPU time by kind of
operator (convolutions, the blocks' fused BatchNorm/activation/pooling/upsampling kernels, the
BatchNorm, activations, pooling and upsampling left on ATen, the optimizer, the rest),
with the step's images/s and MFU against the machine's measured bf16 (or fp32) matmul peak."""

from colorizer.runtime import setup_process

if __name__ == "__main__":  # run alone; `make bench` imports it after its own set-up
    setup_process()  # before torch loads, as the entry points do

import json
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench.common import SIZE, matmul_gflops
from colorizer.config import ModelConfig, TrainConfig
from colorizer.devices import pick_device
from colorizer.training.gan import build_gan

KINDS = {  # the first pattern found in an operator's name decides its kind
    # the only compiled graphs in a step are the blocks' fused BatchNorm + activation + pool/upsample kernels
    "fused BN+act+pool/upsample": ("compiledfxgraph",),
    "convolution": ("convolution", "conv", "mkldnn_conv"),
    "batchnorm": ("batch_norm", "native_batch_norm"),
    "activation": ("relu", "leaky", "tanh", "sigmoid", "threshold", "gelu"),
    "pool/upsample/cat": ("pool", "upsample", "interpolate", "cat", "pad"),
    "loss": ("binary_cross_entropy", "l1_loss", "abs", "mean", "sub"),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "sqrt"),
}
TABLE_KINDS = ("convolution", "fused BN+act+pool/upsample", "batchnorm", "activation", "pool/upsample/cat")


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KINDS.items():
        if any(p in lowered for p in patterns):
            return kind
    return "other"


def main(batch: int) -> dict:
    device = pick_device("auto")
    gan = build_gan(ModelConfig(), TrainConfig(), SIZE, device)
    L = gan.to_device(torch.rand(batch, 1, SIZE, SIZE) * 2 - 1)
    ab = gan.to_device((torch.rand(batch, 2, SIZE, SIZE) * 2 - 1) * 0.5)
    for _ in range(2):
        gan.train_step(L, ab)
    steps, started = 3, time.perf_counter()
    for _ in range(steps):
        gan.train_step(L, ab)
    seconds = (time.perf_counter() - started) / steps
    with FlopCounterMode(display=False) as counter:
        gan.train_step(L, ab)
    bf16 = gan.amp_dtype == torch.bfloat16
    peak = matmul_gflops(torch.bfloat16 if bf16 else torch.float32, device) * 1e9
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        gan.train_step(L, ab)
    by_kind: dict[str, float] = defaultdict(float)
    # self time of the leaf-most aten ops and of the compiled kernels: each microsecond counted once
    counted = ("aten::", "## Call CompiledFxGraph")
    for event in prof.key_averages():
        if event.key.startswith(counted) or "mkldnn" in event.key or "Optimizer" in event.key:
            by_kind[kind_of(event.key)] += event.self_cpu_time_total
    total = sum(by_kind.values())
    return {
        "batch": batch,
        "img_s": batch / seconds,
        "mfu": counter.get_total_flops() / seconds / peak,
        "peak_dtype": "bf16" if bf16 else "fp32",
        "share_of_op_time": {k: round(v / total, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            (e.key, round(e.self_cpu_time_total / 1e3, 1))
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
        ],
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8), indent=1))
