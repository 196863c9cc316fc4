"""torchrun support: detect the launch, start the process group (gloo on CPU, NCCL on GPU), reduce metrics."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def barrier(group: Distributed) -> None:
    if group.enabled:
        dist.barrier()


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
