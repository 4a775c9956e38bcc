"""An exponential moving average of the generator's weights (train.ema_decay): the model that is
validated, sampled, exported and shipped, while the optimizer trains the raw weights.

torch's `AveragedModel` keeps the copy and its update count; the average itself follows timm's
`ModelEmaV3`: the decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that a short
training is not dominated by the random initial weights (at 0.999 the first 1,000 steps would be).
BatchNorm's running statistics are averaged the same way; its step counter is copied.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

from colorizer import fast


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones (timm's warm-up)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA of `model` (a deep copy, same device and memory format); `.update_parameters(model)`
    after every optimizer step, `.module` is the averaged network."""

    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = 1.0 - warmed_up_decay(decay, int(updates))
        if fast.usable("foreach EMA update", _probe_foreach):  # one kernel launch for all the tensors
            if not averaged[0].is_floating_point():  # num_batches_tracked
                torch._foreach_copy_(averaged, current)
            else:
                torch._foreach_lerp_(averaged, current, weight)
            return
        for mine, theirs in zip(averaged, current, strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, weight)
            else:
                mine.copy_(theirs)

    return AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)


def _probe_foreach() -> None:
    torch._foreach_lerp_([torch.zeros(1)], [torch.ones(1)], 0.5)
    torch._foreach_copy_([torch.zeros(1, dtype=torch.long)], [torch.ones(1, dtype=torch.long)])
