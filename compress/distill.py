"""Knowledge-distillation pieces for any distillation stage: teacher soft targets (live or cached), the KD loss,
and an output discriminator trained adversarially from a training-loop callback."""
from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch, Split
from .distributed import SINGLE, Distributed, all_reduce, average_gradients
from .training import Callback, LossFn


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


class Discriminator(nn.Sequential):
    """MLP from C logits through `hidden` LeakyReLU layers to one score; a positive score means "teacher"."""

    def __init__(self, num_classes: int, hidden: Sequence[int] = (64,)):
        sizes = [num_classes, *hidden]
        layers = [layer for cin, cout in zip(sizes, sizes[1:]) for layer in (nn.Linear(cin, cout), nn.LeakyReLU(0.2))]
        super().__init__(*layers, nn.Linear(sizes[-1], 1))


class Adversary(Callback):
    """Adversarial training of a `Discriminator` inside the shared loop.

    The loss closure adds `student_loss` (the student is rewarded when its logits are scored as the teacher's); after
    each student step, `on_step_end` takes one Adam step teaching the discriminator to tell the two apart.
    """

    def __init__(self, discriminator: Discriminator, lr: float = 1e-4, group: Distributed = SINGLE):
        self.discriminator, self.group = discriminator, group  # under torchrun every rank holds the same discriminator
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr)
        self.pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.totals = [0.0, 0.0, 0]  # loss sum, accuracy sum, steps in this epoch

    def student_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """BCE of the student's scores against the "teacher" label; keeps the pair for the discriminator's step."""
        self.pending = (student_logits.detach().float(), teacher_logits.detach().float())
        scores = self.discriminator(student_logits.float())
        return F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))

    def step(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[float, float]:
        """One optimiser step of the discriminator (student = 0, teacher = 1); returns its loss and accuracy."""
        scores = self.discriminator(torch.cat([student_logits, teacher_logits])).squeeze(1)
        labels = torch.cat([torch.zeros(len(student_logits)), torch.ones(len(teacher_logits))]).to(scores.device)
        loss = F.binary_cross_entropy_with_logits(scores, labels)
        self.optimizer.zero_grad(set_to_none=True)  # also drops what the student's backward left here
        loss.backward()
        average_gradients(self.discriminator.parameters(), self.group)
        self.optimizer.step()
        return loss.item(), ((scores > 0).float() == labels).float().mean().item()

    def on_fit_start(self, trainer) -> None:
        self.discriminator.to(trainer.device).train()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.totals = [0.0, 0.0, 0]

    def on_step_end(self, trainer) -> None:
        if self.pending is not None:
            loss, accuracy = self.step(*self.pending)
            self.pending = None
            self.totals = [self.totals[0] + loss, self.totals[1] + accuracy, self.totals[2] + 1]

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        loss, accuracy, steps = all_reduce(self.totals, self.group)
        metrics["discriminator_loss"] = loss / max(steps, 1)
        metrics["discriminator_accuracy"] = accuracy / max(steps, 1)


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
