"""oneDNN convolutions for inference on a CPU: a convolution and its block's activation in one call
(`conv_act`, the ops and weight packing Inductor's CPU backend emits for the pair), and the UNet's
upsampling written straight into its concatenation (`upsampled_cat`). Fast paths (`colorizer.fast`)
of the folded generator (`colorize.inference`); they call private oneDNN ops of torch, probed once.
`make bench` measures them (its generator inference rows, with and without COLORIZER_FAST)."""

from __future__ import annotations

import torch
from torch import nn

from colorizer import fast
from colorizer.devices import cpu_has_native_bf16


def onednn_applies(x: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether `conv_act` runs on x as one oneDNN call: a batch on a CPU with oneDNN, computed in
    `dtype` (by default autocast's when it is on, else x's): float32, or bf16 where the CPU has it
    (oneDNN has no bf16 convolutions for an AVX2-only CPU, where ATen falls back to slow kernels)."""
    dtype = dtype or _compute_dtype(x.dtype)
    return x.device.type == "cpu" and x.dim() == 4 and dtype in onednn_dtypes()


def _compute_dtype(default: torch.dtype) -> torch.dtype:
    # autocast knows nothing of oneDNN's ops: cast as it would for a convolution
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else default


def onednn_dtypes() -> frozenset[torch.dtype]:
    """The dtypes `conv_act` runs in as one oneDNN call: float32, and bf16 where the CPU has it natively
    (oneDNN has no bf16 convolutions for an AVX2-only CPU); none with the fast paths off, or where
    this torch's private oneDNN ops are not as this module calls them."""
    if not fast.usable("oneDNN inference convolutions", _probe_onednn):
        return frozenset()
    return frozenset({torch.float32, torch.bfloat16}) if cpu_has_native_bf16() else frozenset({torch.float32})


def _probe_onednn() -> None:
    """Call the private ops once on a tiny input, as `conv_act` calls them: raises where another torch
    has renamed them or changed their arguments."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch is built without oneDNN")
    x = torch.ones(1, 2, 4, 4).contiguous(memory_format=torch.channels_last)
    # in float32 whatever autocast the caller runs under, and without drawing from torch's generator
    with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False), torch.no_grad():
        for conv in (nn.Conv2d(2, 2, 3, padding=1), nn.ConvTranspose2d(2, 2, 3, padding=1)):
            expected = torch.relu(conv(x))
            torch.testing.assert_close(_onednn_conv_act(x, conv, 0.0, torch.float32), expected)


def conv_act(x: torch.Tensor, conv: nn.Conv2d | nn.ConvTranspose2d, negative_slope: float) -> torch.Tensor:
    """ReLU (negative_slope 0) or LeakyReLU of conv(x), for inference on a CPU (`onednn_applies`): one
    oneDNN call that applies the activation as it writes the convolution's output (a post-op), on
    weights laid out once for oneDNN (`_packed_weight`): the ops and the weight packing Inductor's
    CPU backend emits for the pair. In autocast's dtype when it is on, else the weights' (`make
    bench`'s colorize model rows measure the folded generator against the unfolded one).
    Elsewhere the convolution and then the activation in place."""
    dtype = _compute_dtype(conv.weight.dtype)
    if conv.padding_mode != "zeros" or not onednn_applies(x, dtype):
        y = conv(x)
        return nn.functional.leaky_relu(y, negative_slope, inplace=True) if negative_slope else torch.relu_(y)
    return _onednn_conv_act(x, conv, negative_slope, dtype)


def _onednn_conv_act(
    x: torch.Tensor, conv: nn.Conv2d | nn.ConvTranspose2d, negative_slope: float, dtype: torch.dtype
) -> torch.Tensor:
    activation, scalars = ("leaky_relu", [negative_slope]) if negative_slope else ("relu", [])
    x = x.to(dtype)
    weight = _packed_weight(conv, x)
    bias = conv.bias.to(dtype) if conv.bias is not None else None
    geometry = (conv.stride, conv.dilation, conv.groups)
    if isinstance(conv, nn.ConvTranspose2d):
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, weight, bias, conv.padding, conv.output_padding, *geometry, activation, scalars, ""
        )
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, *geometry, activation, scalars, "")


def _packed_weight(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """conv's weight in x's dtype, reordered into the blocked layout oneDNN picks for x's shape: made
    on the first call for a shape and kept with the convolution (one shape at a time: a bulk run's
    batches share one), where oneDNN would reorder every weight on every call. For inference, on
    weights that no longer change."""
    key = (tuple(x.shape), x.dtype)
    cached = conv.__dict__.get("_onednn_packed")
    if cached is not None and cached[0] == key:
        return cached[1]
    weight = conv.weight.to(x.dtype)
    if isinstance(conv, nn.ConvTranspose2d):
        packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            weight, conv.padding, conv.output_padding, conv.stride, conv.dilation, conv.groups, list(x.shape)
        )
    else:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, conv.padding, conv.stride, conv.dilation, conv.groups, list(x.shape)
        )
    conv.__dict__["_onednn_packed"] = (key, packed)  # replaced whole: a concurrent call sees old or new
    return packed


def upsampled_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """cat([2x nearest upsample(x), skip]) (B, C + Cs, 2H, 2W), channels-last, for inference: each
    part written once into the concatenation, where upsampling and then `torch.cat` write the
    upsampled tensor twice."""
    batch, channels, height, width = x.shape
    dtype = torch.promote_types(x.dtype, skip.dtype)
    out = torch.empty(
        (batch, channels + skip.shape[1], 2 * height, 2 * width),
        dtype=dtype,
        device=x.device,
        memory_format=torch.channels_last,
    )
    upsampled = out[:, :channels].unflatten(3, (width, 2)).unflatten(2, (height, 2))  # (B, C, H, 2, W, 2)
    upsampled.copy_(x[:, :, :, None, :, None].expand_as(upsampled))
    out[:, channels:].copy_(skip)
    return out
