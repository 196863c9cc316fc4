"""An output discriminator trained adversarially beside the student (MEAL V2): it learns to tell student logits
from the teachers', and the student is rewarded for fooling it. Runs as a callback of the shared training loop."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import SINGLE, Distributed, all_reduce, average_gradients
from ...training import Callback


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
