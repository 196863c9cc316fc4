"""Progressive knowledge distillation into a chain of students (Mamba base PKD, 2025): student k learns from student
k-1 (`progressive`) or every student from the teacher (`teacher`), each with the shared KD loss
`alpha * CE + (1 - alpha) * T^2 * KL` in the shared training loop; then the students act as an ensemble."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ...config import TrainConfig
from ...context import RunContext
from ...data import Split
from ...training import Trainer, predict
from .losses import TeacherTargets, distillation_loss


def train_chain(teacher: nn.Module, students: Sequence[nn.Module], cfg: TrainConfig, ctx: RunContext, alpha: float,
                temperature: float, progressive: bool) -> list[list[dict]]:
    """Train `students` in order, each from the teacher or, when `progressive`, from the student before it; returns
    each student's history. Every model is trainable again afterwards (a source is frozen while it teaches)."""
    histories, source = [], teacher
    for k, student in enumerate(students, 1):
        targets = TeacherTargets([source], ctx.data.train, temperature, ctx.device, cache=not ctx.data_config.augment,
                                 batch_size=ctx.data_config.eval_batch_size)
        loss_fn = distillation_loss(targets, temperature, hard_weight=alpha, label_smoothing=cfg.label_smoothing)
        student_ctx = dataclasses.replace(ctx, stage_name=f"{ctx.stage_name} student-{k}")
        histories.append(Trainer(student, cfg, student_ctx, loss_fn=loss_fn).fit())
        source = student if progressive else teacher
    for model in (teacher, *students):
        model.requires_grad_(True)
    return histories


def member_probs(models: Sequence[nn.Module], split: Split, batch_size: int, device) -> torch.Tensor:
    """Softmax of every model on `split`: (models, examples, classes), on the CPU."""
    return torch.stack([torch.softmax(predict(m, split, batch_size, device), -1) for m in models])


def fit_weights(probs: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Mixture weights on the simplex (a softmax of free parameters) that minimise the negative log-likelihood of
    `labels` under the weighted mean of `probs` (models, examples, classes)."""
    free = torch.zeros(len(probs), requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=0.1)
    picked = probs[:, torch.arange(probs.shape[1]), labels]  # (models, examples): each model's probability of the label
    for _ in range(steps):
        loss = -torch.log(torch.softmax(free, 0) @ picked + 1e-12).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(free.detach(), 0)


def mixture_accuracy(probs: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the weighted mean of `probs`."""
    return float(((weights[:, None, None] * probs).sum(0).argmax(1) == labels).float().mean())


@dataclasses.dataclass
class Choice:
    """An ensemble: member indices, their weights, validation accuracy and summed cost."""

    members: tuple[int, ...]
    weights: list[float]
    accuracy: float
    cost: float


def best_subset(probs: torch.Tensor, labels: torch.Tensor, costs: Sequence[float], budget: float, fitted: bool,
                weigh: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fit_weights) -> Choice | None:
    """The most accurate ensemble (any non-empty subset of the models, uniform or fitted weights) whose summed cost is
    at most `budget`; ties go to the cheaper one. None when no single model fits."""
    best = None
    for size in range(1, len(probs) + 1):
        for members in itertools.combinations(range(len(probs)), size):
            cost = sum(costs[i] for i in members)
            if cost > budget:
                continue
            part = probs[list(members)]
            weights = weigh(part, labels) if fitted and size > 1 else torch.full((size,), 1 / size)
            choice = Choice(members, weights.tolist(), mixture_accuracy(part, weights, labels), cost)
            if best is None or (choice.accuracy, -choice.cost) > (best.accuracy, -best.cost):
                best = choice
    return best


def whole(probs: torch.Tensor, labels: torch.Tensor, fitted: bool) -> Choice:
    """The ensemble of every model, with uniform or fitted weights."""
    weights = fit_weights(probs, labels) if fitted else torch.full((len(probs),), 1 / len(probs))
    return Choice(tuple(range(len(probs))), weights.tolist(), mixture_accuracy(probs, weights, labels), 0.0)


def ensemble_model(students: Sequence[nn.Module], specs: Sequence, choice: Choice, in_channels: int,
                   num_classes: int) -> tuple[nn.Module, object]:
    """The `mamba_ensemble` of `choice`'s students with their trained weights, and its spec (which rebuilds it)."""
    from ...models import build_model, make_spec

    spec = make_spec("mamba_ensemble", in_channels, num_classes,
                     {"members": [specs[i].kwargs for i in choice.members], "weights": choice.weights})
    ensemble = build_model(spec)
    for member, i in zip(ensemble.members, choice.members):
        member.load_state_dict(students[i].state_dict())
    return ensemble, spec


def choose_primary(family: dict, goal, floor: Optional[float]) -> str:
    """The primary model's name. With a latency `goal`: the most accurate member within it, else the fastest. With an
    accuracy `floor`: the fewest MACs at or above it, else the most accurate."""
    def metric(name, key):
        return family[name].metrics[key]

    if goal is not None:
        latency = {name: goal.measure(v.model) for name, v in family.items()}
        within = [n for n in family if latency[n] <= goal.value]
        return max(within, key=lambda n: metric(n, "val_accuracy")) if within else min(family, key=latency.get)
    within = [n for n in family if metric(n, "val_accuracy") >= floor - 1e-9]
    return min(within, key=lambda n: metric(n, "macs_share")) if within else max(family, key=lambda n: metric(n, "val_accuracy"))
