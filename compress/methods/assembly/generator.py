"""The module assembler of NN-Factory: a small network from a scenario (the budget's kind and size, the target's
numbers, the task's classes) to keep probabilities of every module and block, trained once with the supernet
frozen. A module's keep logit is `base + softplus(slope) * log(budget)`, so a bigger budget never keeps fewer modules;
modules are kept as prefixes (module k only with modules 0..k-1), relaxed with straight-through Gumbel-sigmoid in
training. The loss is the masked supernet's task loss on the scenario's classes plus a penalty on cost above budget."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...data import BatchLoader, Split
from .modules import KINDS, Choice, ModularSupernet

if TYPE_CHECKING:
    from ...targets import TargetProfile

MIN_BUDGET = 1e-3  # relative budgets are clamped here before the logarithm


@dataclass(frozen=True)
class Scenario:
    """A budget of one kind (`value` in its unit: ms, a share of the supernet's MACs, or kB) on `target`, for the
    classes `classes` (None: all)."""

    kind: str
    value: float
    target: "TargetProfile"
    classes: Optional[tuple[int, ...]] = None


def target_features(target: "TargetProfile") -> list[float]:
    """The profile's numbers the cost model uses, scaled to about unit size."""
    precision = target.preferred_precisions[0]
    return [math.log10(target.peak_tops[precision]), math.log10(target.memory_bandwidth_gbps), target.efficiency,
            math.log10(1 + target.layer_overhead_us)]


def context_size(num_classes: int) -> int:
    """Length of `context_vector`: budget kind, target numbers, class mask."""
    return len(KINDS) + 4 + num_classes


def context_vector(scenario: Scenario, num_classes: int) -> torch.Tensor:
    """What the generator sees besides the budget: the budget's kind, the target's numbers (for latency budgets,
    the only ones that depend on the target) and the class mask."""
    kind = [float(scenario.kind == k) for k in KINDS]
    numbers = target_features(scenario.target) if scenario.kind == "latency_ms" else [0.0] * 4
    classes = torch.zeros(num_classes)
    classes[list(scenario.classes) if scenario.classes else slice(None)] = 1.0
    return torch.cat([torch.tensor(kind + numbers), classes])


class Generator(nn.Module):
    """Scenario context and log relative budget -> keep logits of every module after the first of each slice group
    and every block after the first of each residual stage."""

    def __init__(self, context_size: int, sizes: list[int], depths: list[int], hidden: int = 64):
        super().__init__()
        self.sizes, self.depths, self.hidden = list(sizes), list(depths), hidden
        outputs = sum(n - 1 for n in self.sizes + self.depths)
        self.body = nn.Sequential(nn.Linear(context_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.base, self.slope = nn.Linear(hidden, outputs), nn.Linear(hidden, outputs)
        nn.init.constant_(self.base.bias, 2.0)
        nn.init.constant_(self.slope.bias, 1.0)

    def forward(self, context: torch.Tensor, log_budget: torch.Tensor) -> torch.Tensor:
        h = self.body(context)
        return self.base(h) + F.softplus(self.slope(h)) * log_budget.unsqueeze(-1)

    def split(self, values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-module (or per-block) values with a leading 1 for the always-kept first one, as prefix products."""
        out, start = [], 0
        for n in self.sizes + self.depths:
            part = values[start : start + n - 1]
            out.append(torch.cat([torch.ones(1, dtype=values.dtype), torch.cumprod(part, 0)]))
            start += n - 1
        return out[: len(self.sizes)], out[len(self.sizes):]

    @torch.no_grad()
    def logits(self, context: torch.Tensor, relative_budget: float) -> torch.Tensor:
        """The keep logits for one scenario at a budget relative to the full supernet's cost."""
        return self(context, torch.tensor(math.log(max(relative_budget, MIN_BUDGET))))

    def choice(self, context: torch.Tensor, relative_budget: float) -> Choice:
        """The hard choice for one scenario: every module whose logit and all earlier ones' are positive."""
        modules, blocks = self.split((self.logits(context, relative_budget) > 0).float())
        return Choice(tuple(int(m.sum()) for m in modules), tuple(int(b.sum()) for b in blocks))


def relaxed(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid: hard 0/1 forward, the soft sample's gradient backward."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return (soft > 0.5).float() + soft - soft.detach()


@dataclass
class GeneratorTraining:
    steps: int
    lr: float = 3e-3
    budget_penalty: float = 10.0
    temperature: float = 1.0
    subset_share: float = 0.5  # share of sampled scenarios with a class subset


def sample_scenario(rng: random.Random, targets: list["TargetProfile"], num_classes: int, subset_share: float,
                    floors: dict[tuple[str, str], float], full: dict[tuple[str, str], float]) -> tuple[Scenario, float]:
    """A random training scenario and its budget relative to the full supernet (between the smallest layout's
    relative cost and 1)."""
    kind = rng.choice([*KINDS[1:], *(["latency_ms"] if targets else [])])
    target = rng.choice(targets) if targets else None
    key = cost_key(kind, target)
    relative = rng.uniform(floors[key], 1.0)
    classes = None
    if num_classes > 2 and rng.random() < subset_share:
        classes = tuple(sorted(rng.sample(range(num_classes), rng.randint(2, num_classes - 1))))
    return Scenario(kind, relative * full[key], target, classes), relative


def train_generator(net: ModularSupernet, generator: Generator, data: Split, batch_size: int, targets: list["TargetProfile"],
                    num_classes: int, plan: GeneratorTraining, seed: int, device: torch.device, log=None) -> list[dict]:
    """Train `generator` on sampled scenarios with the supernet frozen (BatchNorm on batch statistics, running
    statistics untouched); returns the loss and budget-overshoot history every tenth of the steps."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model = net.supernet.model
    rng, noise = random.Random(seed), torch.Generator().manual_seed(seed)
    full, floors = reference_costs(net, targets)
    reference = targets[0] if targets else None
    optimizer = torch.optim.Adam(generator.parameters(), lr=plan.lr)
    requires = [p.requires_grad for p in model.parameters()]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in norms:
        m.momentum = 0.0
    history, loader, step = [], BatchLoader(data, batch_size, shuffle=True, seed=seed), 0
    model.train()
    generator.train()
    try:
        while step < plan.steps:
            loader.set_epoch(step)
            for batch in loader:
                if step == plan.steps:
                    break
                scenario, relative = sample_scenario(rng, targets, num_classes, plan.subset_share, floors, full)
                x, y = batch.x.to(device), batch.y.to(device)
                if scenario.classes:
                    cut = Split(x, y).of_classes(list(scenario.classes))
                    x, y = cut.x, cut.y
                    if len(y) == 0:
                        continue
                logits = generator(context_vector(scenario, num_classes), torch.tensor(math.log(relative)))
                modules, blocks = generator.split(relaxed(logits, plan.temperature, noise))
                with net.masked(modules, blocks) as masked:
                    out = masked(x)
                if scenario.classes:
                    out = out[:, list(scenario.classes)]
                cost = net.costs.cost(scenario.kind, net.costs.terms(modules, blocks), scenario.target or reference)
                over = F.relu(cost / full[cost_key(scenario.kind, scenario.target)] / relative - 1.0)
                loss = F.cross_entropy(out, y) + plan.budget_penalty * over.to(out.device)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step % max(1, plan.steps // 10) == 0:
                    history.append({"step": step, "loss": float(loss.detach()), "over_budget": float(over.detach())})
                    if log:
                        log(f"generator step {step}/{plan.steps}: loss {history[-1]['loss']:.3f}, over budget {history[-1]['over_budget']:.1%}")
                step += 1
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    generator.eval()
    return history


def cost_key(kind: str, target: Optional["TargetProfile"]) -> tuple[str, str]:
    """Latency budgets depend on the target; MACs and (relative) size do not."""
    return kind, target.name if kind == "latency_ms" and target is not None else ""


def reference_costs(net: ModularSupernet, targets: list["TargetProfile"]) -> tuple[dict, dict]:
    """Per budget kind (and target, for latency): the full supernet's cost, and the smallest layout's relative cost."""
    large, small = net.costs.terms(*net.masks_of(net.largest)), net.costs.terms(*net.masks_of(net.smallest))
    full, floors = {}, {}
    for kind in KINDS:
        for target in (targets if kind == "latency_ms" else targets[:1] or [None]):
            key = cost_key(kind, target)
            full[key] = float(net.costs.cost(kind, large, target))
            floors[key] = float(net.costs.cost(kind, small, target)) / full[key]
    return full, floors
