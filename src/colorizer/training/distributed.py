"""Training on several processes: torchrun's world (RANK, LOCAL_RANK, WORLD_SIZE), the process group,
and the few collective operations the training loop needs.

One process (plain `python`, or `torchrun --nproc-per-node=1`) is a world of size 1: no process group,
no DistributedDataParallel, exactly the single-process code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, validates, checkpoints and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ONE_PROCESS = World()


def world_from_env() -> World:
    """The world torchrun describes in the environment (a plain process: a world of one)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def rank_device(world: World, device: torch.device) -> torch.device:
    """One GPU per rank on a node (cuda:LOCAL_RANK); the CPU is shared."""
    if device.type != "cuda" or not world.distributed:
        return device
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(world: World, device: torch.device, timeout_minutes: float = 30) -> Iterator[None]:
    """The process group for a world of several (nccl on CUDA, gloo on the CPU), torn down at the end."""
    if not world.distributed:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    timeout = timedelta(minutes=timeout_minutes)
    store = _store_of_this_start(world, timeout)
    if store is not None:
        kwargs |= {"store": store, "rank": world.rank, "world_size": world.size}
    dist.init_process_group(backend, timeout=timeout, **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _store_of_this_start(world: World, timeout: timedelta) -> dist.Store | None:
    """Under torchrun (its agent hosts the store), the store seen under a prefix of this start of the
    ranks. After `--max-restarts` restarts a failed worker group, torch tells the new ranks that the
    store is new when it is the same one (same port, torch 2.13; pytorch#167288), and the process
    group reads the dead ranks' addresses: gloo's connect is refused or hangs. Every restart starts
    every rank once, so each rank's own start count (kept in the store) names the start they share."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None  # a plain env:// world: rank 0 hosts a new store every time
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.size, is_master=False, timeout=timeout
    )
    start = agent_store.add(f"colorizer/starts/rank{world.rank}", 1)
    return dist.PrefixStore(f"colorizer/start{start}", agent_store)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, torch.Tensor], world: World) -> dict[str, float]:
    """Each value averaged over the ranks: one all-reduce for all of them (once per epoch)."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([values[key].float() for key in keys])
    if world.distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= world.size
    return dict(zip(keys, stacked.cpu().tolist(), strict=True))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (its state_dict has no `module.` prefix)."""
    return getattr(module, "module", module)
