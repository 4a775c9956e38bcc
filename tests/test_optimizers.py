import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from colorizer.training.optimizers import ChannelsLastAdam


def twin_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 4, 3), nn.Conv2d(4, 1, 1))
    twin = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 4, 3), nn.Conv2d(4, 1, 1))
    twin.load_state_dict(model.state_dict())
    return model.to(memory_format=torch.channels_last), twin.to(memory_format=torch.channels_last)


def set_gradients(model: nn.Module, step: int, contiguous: bool = False) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        grad = torch.randn(p.shape, generator=generator)
        p.grad = grad if contiguous else grad.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else grad


@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "weight_decay": 0.01}, {"maximize": True}])
def test_it_is_torchs_fused_adam_bit_for_bit(options):
    ours, theirs = twin_models()
    assert not ours[0].weight.is_contiguous()  # channels-last weights: the case it is for
    optimizer = ChannelsLastAdam(ours.parameters(), lr=0.1, betas=(0.5, 0.999), fused=True, **options)
    reference = torch.optim.Adam(theirs.parameters(), lr=0.1, betas=(0.5, 0.999), fused=True, **options)
    for step in range(4):
        # a gradient in another layout than its weight (step 2): the kernel is handed them as they are
        for model in (ours, theirs):
            set_gradients(model, step, contiguous=step == 2)
        optimizer.step()
        reference.step()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
            assert p.stride() == q.stride()
    ours_state, theirs_state = optimizer.state_dict()["state"], reference.state_dict()["state"]
    for key in theirs_state:
        for name, value in theirs_state[key].items():
            torch.testing.assert_close(ours_state[key][name], value, rtol=0, atol=0)


def test_the_fused_kernel_copies_nothing_for_channels_last_weights():
    model = twin_models()[0]
    optimizer = ChannelsLastAdam(model.parameters(), lr=0.1, fused=True)
    set_gradients(model, 0)
    optimizer.step()  # the moments are created on the first step
    assert not tensor_copies(optimizer)
    reference = torch.optim.Adam(twin_models()[1].parameters(), lr=0.1, fused=True)
    for p in reference.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    reference.step()
    assert tensor_copies(reference)  # what it saves: torch's own copies them


def tensor_copies(optimizer: torch.optim.Optimizer) -> list:
    """The shapes copied during a step, but for 0-dim tensors (the kernel's step counts)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        optimizer.step()
    return [
        e.input_shapes
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::copy_", "aten::clone") and e.input_shapes and e.input_shapes[0]
    ]
