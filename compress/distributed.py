"""torchrun support: detect the launch, start the process group (gloo on CPU, NCCL on GPU), reduce metrics."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from .errors import CompressError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = Distributed()


def init_from_env(device: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def on_main(group: Distributed, action: Callable[[], None]) -> None:
    """Run `action` on rank 0 only, then tell every rank whether it worked, so no rank waits forever for a failed one."""
    error = None
    if group.is_main:
        try:
            action()
        except Exception as e:  # re-raised below, after the other ranks have heard of it
            error = e
    succeeded = all_reduce([0.0 if error else 1.0], group, "min")[0]
    if error is not None:
        raise error
    if not succeeded:
        raise CompressError("rank 0 failed to write the run folder (its error is printed above); this rank stops too")


def average_gradients(parameters: Iterable[torch.nn.Parameter], group: Distributed) -> None:
    """Average gradients across ranks, as DistributedDataParallel does for the module it wraps; unchanged in a single
    process. For modules trained beside the main model (e.g. MEAL's discriminator) with their own optimizer."""
    if not group.enabled:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= group.world_size


def all_reduce(values: list[float], group: Distributed, op: str = "sum") -> list[float]:
    """Sum (or min) a few numbers across ranks; unchanged in a single process."""
    if not group.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return tensor.tolist()


def shutdown(group: Distributed) -> None:
    if group.enabled and dist.is_initialized():
        dist.destroy_process_group()
