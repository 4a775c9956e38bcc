"""Adam for channels-last models: torch's fused kernel, fed tensors it need not copy (a fast path,
`colorizer.fast`; `python -m bench.profile_train` shows the optimizer's share of a step).

The fused CPU kernel copies every parameter that is not contiguous (a channels-last convolution
weight), its gradient and both moments to contiguous tensors and the results back, for every
step. Adam is elementwise, so the kernel may as well update a weight through the view that makes it
contiguous, (O, kh, kw, I) for a channels-last (O, I, kh, kw), as long as the parameter, its
gradient and its moments are all seen through the same one; the result is the same, bit for bit.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch

from colorizer import fast

# the private method ChannelsLastAdam overrides, as torch 2.x defines it
_INIT_GROUP_PARAMETERS = [
    "self", "group", "params_with_grad", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps",
]  # fmt: skip


def adam(parameters: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam as training uses it: fused and channels-last aware on the fast path, torch's own Adam off it
    (or where this torch's Adam is not as ChannelsLastAdam expects)."""
    if fast.usable("channels-last Adam", _probe_adam):
        return ChannelsLastAdam(parameters, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(parameters, lr=lr, betas=betas)


def _probe_adam() -> None:
    found = list(inspect.signature(torch.optim.Adam._init_group).parameters)
    if found != _INIT_GROUP_PARAMETERS:
        raise TypeError(f"torch.optim.Adam._init_group{tuple(found)} is not the method ChannelsLastAdam overrides")


def _contiguous_views(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of one parameter seen as contiguous (O, kh, kw, I) when every one of them is a
    channels-last 4-D tensor that is not contiguous as it is; otherwise as they are."""
    if all(
        t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last) for t in tensors
    ):
        return [t.permute(0, 2, 3, 1) for t in tensors]
    return tensors


class ChannelsLastAdam(torch.optim.Adam):
    """torch.optim.Adam (use it with fused=True), its parameters' state as Adam keeps it; only the
    tensors handed to the kernel differ, as views of the same memory."""

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):  # noqa: ANN001, ANN202
        has_complex = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        per_parameter = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if group["amsgrad"] else [])
        for i, tensors in enumerate(zip(*per_parameter, strict=True)):
            for tensor_list, view in zip(per_parameter, _contiguous_views(list(tensors)), strict=True):
                tensor_list[i] = view
        return has_complex
