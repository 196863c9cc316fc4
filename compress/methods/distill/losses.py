"""Knowledge-distillation losses for any distillation stage: ensemble soft targets (live or cached) and the KD loss,
as a loss function for the shared training loop (with the adversarial term of `adversary.py` when given)."""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...data import Batch, Split
from ...training import LossFn
from .adversary import Adversary

if TYPE_CHECKING:
    from ...context import RunContext
    from .config import SelfDistillation


class Targets(NamedTuple):
    """What a student learns from, one row per example."""

    probs: torch.Tensor  # mean of the teachers' softmax(logits / T)
    logits: torch.Tensor  # mean of the teachers' logits: the discriminator's "teacher" examples


@torch.no_grad()
def ensemble_targets(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float = 1.0) -> Targets:
    """Targets of an ensemble on inputs `x`; the teachers should be in eval mode."""
    logits = torch.stack([teacher(x).float() for teacher in teachers])
    return Targets(torch.softmax(logits / temperature, dim=-1).mean(0), logits.mean(0))


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, labels: torch.Tensor,
            temperature: float = 1.0, hard_weight: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """`hard_weight * CE(labels) + (1 - hard_weight) * T^2 * KL(target || softmax(student / T))`, batch mean.

    The T^2 factor keeps the soft term's gradients the same size at any temperature (Hinton et al., 2015).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    loss = (1 - hard_weight) * temperature**2 * F.kl_div(log_q, target_probs, reduction="batchmean")
    if hard_weight:
        loss = loss + hard_weight * F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return loss


class TeacherTargets:
    """Targets for batches of one split: looked up by `Batch.index` in a table computed once (valid when the inputs
    are the same every epoch, i.e. without random augmentation), or computed from each batch's inputs."""

    def __init__(self, teachers: Sequence[nn.Module], split: Split, temperature: float, device: torch.device | str,
                 cache: bool, batch_size: int = 512):
        self.teachers = [teacher.to(device).eval().requires_grad_(False) for teacher in teachers]
        self.temperature, self.device = temperature, device
        self.seconds = 0.0  # time spent running the teachers
        self.table = self.compute(split.x, batch_size) if cache else None

    def compute(self, x: torch.Tensor, batch_size: int) -> Targets:
        start = time.perf_counter()
        parts = [ensemble_targets(self.teachers, chunk.to(self.device), self.temperature) for chunk in x.split(batch_size)]
        self.seconds += time.perf_counter() - start
        return Targets(*(torch.cat(column) for column in zip(*parts)))

    def __call__(self, batch: Batch) -> Targets:
        if self.table is None:
            return self.compute(batch.x, len(batch.x))
        return Targets(*(column[batch.index] for column in self.table))


def distillation_loss(targets: Callable[[Batch], Targets], temperature: float = 1.0, hard_weight: float = 0.0,
                      adversary: Optional[Adversary] = None, adversary_weight: float = 1.0,
                      label_smoothing: float = 0.0) -> LossFn:
    """The student's `loss_fn(logits, batch)` for the shared `Trainer`: KD to the batch's targets, plus
    `adversary_weight` times the adversarial term when an `Adversary` (also passed as a callback) is given."""

    def loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = targets(batch)
        value = kd_loss(logits, target.probs, batch.y, temperature, hard_weight, label_smoothing)
        if adversary is not None:
            value = value + adversary_weight * adversary.student_loss(logits, target.logits)
        return value

    return loss


def self_distillation_loss(model: nn.Module, cfg: "SelfDistillation", ctx: "RunContext", label_smoothing: float = 0.0) -> LossFn:
    """The loss of `distillation_loss` towards a frozen copy of `model` as it is now (before a stage changes it); the
    copy's targets are computed once when the training inputs are the same every epoch (no augmentation)."""
    targets = TeacherTargets([copy.deepcopy(model)], ctx.data.train, cfg.temperature, ctx.device,
                             cache=not ctx.data_config.augment, batch_size=ctx.data_config.eval_batch_size)
    return distillation_loss(targets, cfg.temperature, cfg.hard_label_weight, label_smoothing=label_smoothing)
