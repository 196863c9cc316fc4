"""Sorted training and BatchNorm recalibration of a nested supernet.

Each step trains the full network, the smallest sub-network and K sampled ones on the same batch, gradients
accumulated in one backward pass (the sandwich rule of US-Nets); with in-place distillation the sub-networks learn the
full network's (or a teacher's) soft predictions instead of the labels."""
from __future__ import annotations

import random
from typing import Callable, Literal, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...data import Batch, BatchLoader
from ..distill.losses import Targets, kd_loss
from .supernet import SubNet, Supernet


class SandwichStep:
    """`step_fn` for the shared Trainer: the full network's loss plus the mean loss of the smallest and `samples`
    random sub-networks (the sum of all four lets the shared weights take four steps at once, and averaging all four
    slows the full network down: both trained worse on Fashion-MNIST, docs/benchmarks.md).

    `smallest="per_depth"` takes the narrowest sub-network of each depth in turn, one per step, instead of the
    narrowest and shallowest every step ("overall"); the others are sampled from the rest of the grid. On
    Fashion-MNIST it lifted the narrow deep sub-networks by 0.5-1.3 points and cost the narrow shallow ones 0.5-0.9,
    at the same training time (docs/benchmarks.md)."""

    def __init__(self, supernet: Supernet, grid: list[SubNet], samples: int, inplace: bool, seed: int,
                 loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor],
                 teacher: Optional[Callable[[Batch], Targets]] = None, temperature: float = 1.0,
                 smallest: Literal["per_depth", "overall"] = "per_depth"):
        self.supernet, self.samples, self.inplace = supernet, samples, inplace
        self.full = max(grid, key=lambda s: (s.width, s.depth or 0))
        narrowest = narrowest_per_depth(grid)
        self.smallest = narrowest if smallest == "per_depth" else narrowest[:1]
        self.middle = [s for s in grid if s != self.full and s not in self.smallest]
        self.loss_fn, self.teacher, self.temperature = loss_fn, teacher, temperature
        self.random = random.Random(seed)
        self.steps = 0

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        if self.teacher is not None:
            soft = self.teacher(batch).probs
            loss = kd_loss(logits, soft, batch.y, self.temperature, hard_weight=0.5)
        else:
            soft = torch.softmax(logits.detach().float(), dim=-1)
            loss = self.loss_fn(logits, batch)
        smallest = self.smallest[self.steps % len(self.smallest)]
        self.steps += 1
        picks = [smallest] + self.random.sample(self.middle, min(self.samples, len(self.middle)))
        temperature = self.temperature if self.teacher is not None else 1.0
        subs = 0.0
        for subnet in picks:
            with self.supernet.active(subnet):
                sub = model(batch.x)
            subs = subs + (kd_loss(sub, soft, batch.y, temperature) if self.inplace else self.loss_fn(sub, batch))
        return loss + subs / len(picks), logits


def narrowest_per_depth(grid: list[SubNet]) -> list[SubNet]:
    """The narrowest grid member of each depth, shallowest first."""
    depths = sorted({s.depth or 0 for s in grid})
    return [min((s for s in grid if (s.depth or 0) == d), key=lambda s: s.width) for d in depths]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: BatchLoader, batches: int, device: torch.device) -> int:
    """Recompute every BatchNorm's running statistics as the plain average over `batches` training batches (the
    statistics a sub-network inherits from the supernet belong to the full network). Returns the batches used."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or batches == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    used = 0
    try:
        for batch in loader:
            if used == batches:
                break
            model(batch.x.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used

