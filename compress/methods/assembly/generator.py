"""The module assembler of NN-Factory: a small network from a scenario (the budget's kind, the target's numbers, the
task's classes) to an assembly path through the supernet's modules, trained once with the supernet frozen. A path is
a width multiplier per slice group and, per residual stage, the scale values at which its later blocks enter; at
scale w a group keeps the share min(1, w * multiplier) of its modules and a stage every block whose value is at most
w. The budget decides w (the largest scale whose model fits), so a bigger budget never gives a smaller model and the
models of one scenario are nested. Untrained, the path widens every group uniformly at depth 1, then adds whole
blocks (the SortedNet supernet's widths first). Training relaxes the path to soft module ramps and block gates, solves
w so that the soft model's cost meets a sampled budget exactly (gradients pass through that solve implicitly), and
minimises the masked supernet's task loss on the scenario's classes (plus, optionally, a penalty on the rounded
model's cost above the budget); the checkpoint that scores best on fixed probe scenarios is kept."""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...data import BatchLoader, Split
from .modules import KINDS, Choice, ModularSupernet

if TYPE_CHECKING:
    from ...targets import TargetProfile


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


SPREAD = 2.0  # a group's width multiplier lies in [1 / SPREAD, SPREAD]
BLOCK_START, BLOCK_STEP = 1.0, 0.15  # untrained, the later blocks enter one by one once every group is at full width
POSITIONS = 256  # scales sampled along a path to list its choices


@dataclass(frozen=True)
class Path:
    """One scenario's assembly path: `multipliers[g]` scales group g's kept share, `thresholds[s]` are the scale
    values at which stage s's later blocks enter (increasing); `sizes[g]` is group g's module count."""

    multipliers: torch.Tensor
    thresholds: list[torch.Tensor]
    sizes: list[int]

    @property
    def top(self) -> float:
        """The smallest scale at which every module and block is kept."""
        return max([1.0 / float(self.multipliers.detach().min())] + [float(t.detach().max()) for t in self.thresholds if len(t)])

    def soft(self, w: torch.Tensor, temperature: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Module keep values (a ramp from 0 to 1 as a module's channels fill in, the first always 1) and block gates
        (a sigmoid of the scale past the block's threshold) at scale `w`."""
        masks = []
        for share, n in zip(torch.clamp(w * self.multipliers, 0.0, 1.0), self.sizes):
            ramp = torch.clamp(share * n - torch.arange(n, dtype=share.dtype), 0.0, 1.0)
            masks.append(torch.cat([torch.ones(1, dtype=ramp.dtype), ramp[1:]]))
        gates = [torch.cat([torch.ones(1), torch.sigmoid((w - t) / temperature)]) for t in self.thresholds]
        return masks, gates

    def along(self) -> list[Choice]:
        """The distinct choices at `POSITIONS` evenly spaced scales from 0 to `top`, smallest first; each holds the one
        before it."""
        counts = self.counts(torch.linspace(0.0, self.top, POSITIONS, dtype=torch.float64)).tolist()
        return [self.as_choice(c) for i, c in enumerate(counts) if i == 0 or c != counts[i - 1]]

    def choice(self, w: float) -> Choice:
        """The hard choice at scale `w`: each group's share rounded to whole modules (at least one), and the blocks
        whose thresholds `w` has reached."""
        return self.as_choice(self.counts(torch.tensor([w], dtype=torch.float64))[0].tolist())

    def counts(self, w: torch.Tensor) -> torch.Tensor:
        """Per scale in `w` (one dimension), the kept modules of every group, then the kept blocks of every stage."""
        sizes = torch.tensor(self.sizes, dtype=torch.float64)
        shares = torch.clamp(w[:, None] * self.multipliers.detach().double(), 0.0, 1.0)
        modules = torch.clamp(torch.floor(shares * sizes + 0.5), min=1).long()
        blocks = [1 + (t.detach().double()[None, :] <= w[:, None]).sum(1, keepdim=True) for t in self.thresholds]
        return torch.cat([modules, *blocks], 1)

    def as_choice(self, counts: list[int]) -> Choice:
        return Choice(tuple(counts[: len(self.sizes)]), tuple(counts[len(self.sizes):]))


class Generator(nn.Module):
    """Scenario context -> the scenario's `Path` through the modules of every slice group and the blocks of every
    residual stage."""

    def __init__(self, context_size: int, sizes: list[int], depths: list[int], hidden: int = 64):
        super().__init__()
        self.sizes, self.depths, self.hidden = list(sizes), list(depths), hidden
        self.body = nn.Sequential(nn.Linear(context_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.widths = nn.Linear(hidden, len(self.sizes))
        nn.init.zeros_(self.widths.weight)
        nn.init.zeros_(self.widths.bias)
        steps = []  # softplus^-1 of each block's distance to the previous threshold of its stage
        for d in self.depths:
            values = [BLOCK_START + BLOCK_STEP * (len(steps) + k) for k in range(d - 1)]
            steps += [v - (values[k - 1] if k else 0.0) for k, v in enumerate(values)]
        self.blocks = nn.Linear(hidden, len(steps)) if steps else None  # None: no residual stage has a later block
        if self.blocks is not None:
            nn.init.zeros_(self.blocks.weight)
            with torch.no_grad():
                self.blocks.bias.copy_(torch.log(torch.expm1(torch.tensor(steps))))

    def forward(self, context: torch.Tensor) -> Path:
        h = self.body(context)
        multipliers = torch.exp(math.log(SPREAD) * torch.tanh(self.widths(h)))
        steps, thresholds, start = F.softplus(self.blocks(h)) if self.blocks is not None else h.new_zeros(0), [], 0
        for d in self.depths:
            thresholds.append(torch.cumsum(steps[start : start + d - 1], 0))
            start += d - 1
        return Path(multipliers, thresholds, self.sizes)

    @torch.no_grad()
    def path(self, context: torch.Tensor) -> Path:
        """The scenario's path, without gradients."""
        return self(context)


def solve_scale(net: ModularSupernet, path: Path, kind: str, target, goal: float, temperature: float,
                iterations: int = 20) -> float:
    """The scale at which the soft model's cost is `goal` (bisection; the cost grows with the scale)."""
    low, high = 0.0, path.top
    with torch.no_grad():
        for _ in range(iterations):
            mid = (low + high) / 2
            cost = float(net.costs.cost(kind, net.costs.terms(*path.soft(torch.tensor(mid), temperature)), target))
            low, high = (mid, high) if cost <= goal else (low, mid)
    return low


def first_over(fits_at: Callable[[int], bool], low: int, high: int) -> int:
    """The first index in [low, high) that does not fit (`high` when all do), by bisection: fitting is monotone."""
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if fits_at(mid) else (low, mid)
    return low


def fitted(net: ModularSupernet, path: Path, kind: str, target, goal: float) -> Choice:
    """The largest choice along `path` whose mask cost is within `goal` (the first choice when none is)."""
    choices = path.along()
    fits = lambda i: float(net.costs.cost(kind, net.costs.terms(*net.masks_of(choices[i])), target)) <= goal  # noqa: E731
    return choices[max(first_over(fits, 0, len(choices)) - 1, 0)]


def at_budget(net: ModularSupernet, path: Path, kind: str, target, goal: float, temperature: float) -> torch.Tensor:
    """The scale that meets `goal`, differentiable in the path by the implicit function theorem: its value is the
    solved scale w*, its gradient -(dcost/dpath) / (dcost/dw) at w*."""
    detached = Path(path.multipliers.detach(), [t.detach() for t in path.thresholds], path.sizes)
    solved = torch.tensor(solve_scale(net, detached, kind, target, goal, temperature), requires_grad=True)
    cost = net.costs.cost(kind, net.costs.terms(*path.soft(solved, temperature)), target)
    slope = torch.autograd.grad(cost, solved, retain_graph=True)[0].detach().clamp_min(1e-9)
    return solved.detach() - (cost - cost.detach()) / slope


def straight_through(hard: list[torch.Tensor], soft: list[torch.Tensor]) -> list[torch.Tensor]:
    """Hard values forward, the soft values' gradients backward."""
    return [h + s - s.detach() for h, s in zip(hard, soft)]


@dataclass
class GeneratorTraining:
    steps: int
    lr: float = 3e-3
    budget_penalty: float = 0.0
    temperature: float = 0.02  # of the block gates, in units of the scale
    subset_share: float = 0.5  # share of sampled scenarios with a class subset
    probe_scenarios: int = 16  # fixed scenarios that score each checkpoint
    probe_examples: int = 2048  # training examples they are scored on


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
                    num_classes: int, plan: GeneratorTraining, seed: int, device: torch.device, log=None) -> dict:
    """Train `generator` on sampled scenarios, one per batch, with the supernet frozen (BatchNorm on batch statistics,
    running statistics untouched). Every tenth of the steps, and before the first, the generator is scored on fixed
    probe scenarios (`probe_accuracy`); the best-scoring checkpoint is kept. Returns the history (probe accuracy, and
    after step 0 the loss and the rounded model's budget overshoot) and the kept step."""
    rng = random.Random(seed)
    full, floors = reference_costs(net, targets)
    reference = targets[0] if targets else None
    optimizer = torch.optim.Adam(generator.parameters(), lr=plan.lr)
    probe = Probe(net, data, targets, num_classes, plan, seed, full, floors, batch_size, device)
    loader, step = BatchLoader(data, batch_size, shuffle=True, seed=seed), 0
    generator.train()
    best = (probe.score(generator), 0, copy_state(generator))
    history = [{"step": 0, "probe_accuracy": best[0]}]
    with on_batch_statistics(net.supernet.model):
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
                target, scale = scenario.target or reference, full[cost_key(scenario.kind, scenario.target)]
                path = generator(context_vector(scenario, num_classes))
                w = at_budget(net, path, scenario.kind, target, relative * scale, plan.temperature)
                masks, gates = path.soft(w, plan.temperature)
                with net.masked(masks, gates) as masked:
                    out = masked(x)
                if scenario.classes:
                    out = out[:, list(scenario.classes)]
                hard = net.masks_of(path.choice(float(w.detach())))
                rounded = net.costs.terms(straight_through(hard[0], masks), straight_through(hard[1], gates))
                over = F.relu(net.costs.cost(scenario.kind, rounded, target) / scale / relative - 1.0)
                loss = F.cross_entropy(out, y) + plan.budget_penalty * over.to(out.device)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % max(1, plan.steps // 10) == 0 or step == plan.steps:
                    score = probe.score(generator)
                    if score > best[0]:
                        best = (score, step, copy_state(generator))
                    entry = {"step": step, "loss": float(loss.detach()), "over_budget": float(over.detach()),
                             "probe_accuracy": score}
                    history.append(entry)
                    if log:
                        log(f"generator step {step}/{plan.steps}: loss {entry['loss']:.3f}, over budget "
                            f"{entry['over_budget']:.1%}, probe accuracy {score:.2%}")
    generator.load_state_dict(best[2])
    generator.eval()
    return {"history": history, "kept_step": best[1], "probe_accuracy": best[0]}


@contextmanager
def on_batch_statistics(model: nn.Module) -> Iterator[None]:
    """`model` frozen in training mode: BatchNorm normalises by each batch's own statistics and leaves its running
    statistics untouched; parameters, modes and momenta are restored afterwards."""
    from torch.nn.modules.batchnorm import _BatchNorm

    requires = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in norms:
        m.momentum = 0.0
    model.train()
    try:
        yield
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        for m, mode in zip(model.modules(), modes):
            m.training = mode
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `module`'s state, to restore a checkpoint from."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Probe:
    """Fixed scenarios and training examples that score a generator checkpoint: the mean accuracy of the masked
    supernet (BatchNorm on batch statistics) for each scenario's choice, fitted to its budget by the mask costs.
    Scores of a scenario's choice are cached, since most choices repeat between checkpoints."""

    def __init__(self, net: ModularSupernet, data: Split, targets, num_classes: int, plan: GeneratorTraining, seed: int,
                 full: dict, floors: dict, batch_size: int, device: torch.device):
        rng = random.Random(seed + 1)
        order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(seed + 1))[: plan.probe_examples]
        self.examples = Split(data.x[order], data.y[order])
        self.net, self.num_classes, self.batch_size, self.device = net, num_classes, batch_size, device
        self.reference = targets[0] if targets else None
        self.scenarios = [(s, r * full[cost_key(s.kind, s.target)]) for s, r in
                          (sample_scenario(rng, targets, num_classes, plan.subset_share, floors, full)
                           for _ in range(plan.probe_scenarios))]
        self.cache: dict[tuple[int, Choice], float] = {}

    @torch.no_grad()
    def score(self, generator: Generator) -> float:
        """The mean accuracy over the probe scenarios."""
        scores = []
        for i, (scenario, goal) in enumerate(self.scenarios):
            path = generator.path(context_vector(scenario, self.num_classes))
            choice = fitted(self.net, path, scenario.kind, scenario.target or self.reference, goal)
            if (i, choice) not in self.cache:
                self.cache[i, choice] = self.accuracy(choice, scenario.classes)
            scores.append(self.cache[i, choice])
        return sum(scores) / len(scores)

    def accuracy(self, choice: Choice, classes: Optional[tuple[int, ...]]) -> float:
        split = self.examples.of_classes(list(classes)) if classes else self.examples
        correct = 0
        with on_batch_statistics(self.net.supernet.model), self.net.masked(*self.net.masks_of(choice)) as masked:
            for x, y in zip(split.x.split(self.batch_size), split.y.split(self.batch_size)):
                out = masked(x.to(self.device))
                out = out[:, list(classes)] if classes else out
                correct += int((out.argmax(1).cpu() == y).sum())
        return correct / max(1, len(split.y))


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
