"""The module assembler of NN-Factory: a small network from a scenario (the budget's kind, the target's numbers, the
task's classes) to an assembly path through the supernet's modules, trained once with the supernet frozen. A path is
a width multiplier per slice group and, per residual stage, the scale values at which its later blocks enter; at
scale w a group keeps the share min(1, w * multiplier) of its modules and a stage every block whose value is at most
w. The budget decides w (the largest scale whose model fits), so a bigger budget never gives a smaller model and the
models of one path are nested. The generator gives a path in each of two orders (`ORDERS`) and a switch budget:
untrained, width first widens every group uniformly at depth 1, then adds whole blocks; depth first widens uniformly
at depth 1 to the narrowest width the supernet was trained at, adds every block, then widens on (the SortedNet grid's
deepest layouts). Budgets up to the switch take the depth-first path, larger ones the width-first path unless depth
first's model at the switch costs more (`routed`), so a bigger budget still never gives a smaller model. Training
relaxes each path to soft module ramps and block gates, solves w so that the soft model's cost meets a sampled
budget, and scores each order by the masked supernet's task loss on the scenario's classes (plus, optionally, a
penalty on the rounded model's cost above the budget); the switch moves towards the budgets where the two orders'
losses cross. Optionally the paths learn too, through the solve by the implicit function theorem. The checkpoint that
scores best on fixed probe scenarios is kept."""
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
ORDERS = ("width first", "depth first")
# Where the later blocks enter along the untrained paths: width first from scale 1.0 (every group at full width) in
# steps of 0.15; depth first from the supernet's narrowest trained width in steps of 0.01.
WIDTH_FIRST_BLOCKS, DEPTH_FIRST_STEP = (1.0, 0.15), 0.01
SWITCH, SWITCH_WIDTH = 0.5, 0.25  # the untrained switch budget (a share of the full cost); the gate's width in log budget
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
    """Scenario context -> a `Path` through the modules of every slice group and the blocks of every residual stage
    in each of the `ORDERS`, and the switch budget between them (a share of the full supernet's cost). `narrowest` is
    the narrowest width the supernet was trained at (a share of full width), where depth first adds the blocks."""

    def __init__(self, context_size: int, sizes: list[int], depths: list[int], hidden: int = 64, narrowest: float = 0.25):
        super().__init__()
        self.sizes, self.depths, self.hidden = list(sizes), list(depths), hidden
        self.body = nn.Sequential(nn.Linear(context_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.switch = nn.Linear(hidden, 1)  # log of the switch budget
        self.widths = nn.Linear(hidden, len(ORDERS) * len(self.sizes))
        for layer in (self.switch, self.widths):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.switch.bias, math.log(SWITCH))
        steps = []  # per order, softplus^-1 of each block's distance to the previous threshold of its stage
        for start, step in (WIDTH_FIRST_BLOCKS, (narrowest, DEPTH_FIRST_STEP)):
            entered = 0  # later blocks before this stage's, in the order
            for d in self.depths:
                values = [start + step * (entered + k) for k in range(d - 1)]
                steps += [v - (values[k - 1] if k else 0.0) for k, v in enumerate(values)]
                entered += d - 1
        self.blocks = nn.Linear(hidden, len(steps)) if steps else None  # None: no residual stage has a later block
        if self.blocks is not None:
            nn.init.zeros_(self.blocks.weight)
            with torch.no_grad():
                self.blocks.bias.copy_(torch.log(torch.expm1(torch.tensor(steps))))

    def forward(self, context: torch.Tensor) -> tuple[dict[str, Path], torch.Tensor]:
        h = self.body(context)
        multipliers = torch.exp(math.log(SPREAD) * torch.tanh(self.widths(h))).view(len(ORDERS), -1)
        steps = (F.softplus(self.blocks(h)) if self.blocks is not None else h.new_zeros(0)).view(len(ORDERS), -1)
        paths = {order: Path(m, self.thresholds(s), self.sizes) for m, s, order in zip(multipliers, steps, ORDERS)}
        return paths, torch.exp(self.switch(h)[0])

    def thresholds(self, steps: torch.Tensor) -> list[torch.Tensor]:
        """Each residual stage's block thresholds: the running sums of its steps."""
        starts = [sum(d - 1 for d in self.depths[:i]) for i in range(len(self.depths) + 1)]
        return [torch.cumsum(steps[a:b], 0) for a, b in zip(starts, starts[1:])]

    def parameters_to_train(self, paths: bool) -> list[nn.Parameter]:
        """What training updates: the body and the switch, and with `paths` also each order's path."""
        modules = [self.body, self.switch]
        if paths:
            modules += [self.widths] + ([self.blocks] if self.blocks is not None else [])
        return [p for module in modules for p in module.parameters()]

    @torch.no_grad()
    def plan(self, context: torch.Tensor) -> tuple[dict[str, Path], float]:
        """The scenario's paths and switch budget, without gradients."""
        paths, switch = self(context)
        return paths, float(switch)


def routed(paths: dict[str, Path], switch: float, goal: float, floor: float,
           fit: Callable[[Path, float], tuple[Choice, float]]) -> tuple[Choice, str]:
    """The choice for budget `goal` and its order: depth first up to the `switch` budget; above it width first, unless
    depth first's choice at the switch costs more. Each order's fits grow with the budget, so a bigger budget never
    gives a smaller model. `fit(path, goal)` gives the largest choice along `path` within `goal` and its cost;
    `floor` is the smallest sub-network's cost (at a switch below it, width first only). Budgets are in one unit,
    e.g. shares of the full supernet's cost."""
    if goal <= switch:
        return fit(paths["depth first"], goal)[0], "depth first"
    above = fit(paths["width first"], goal)
    below = fit(paths["depth first"], switch) if switch >= floor else None
    return (below[0], "depth first") if below is not None and below[1] > above[1] else (above[0], "width first")


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


def fitted(net: ModularSupernet, path: Path, kind: str, target, goal: float) -> tuple[Choice, float]:
    """The largest choice along `path` whose mask cost is within `goal` (the first choice when none is), and its
    mask cost."""
    choices = path.along()
    cost = lambda i: float(net.costs.cost(kind, net.costs.terms(*net.masks_of(choices[i])), target))  # noqa: E731
    index = max(first_over(lambda i: cost(i) <= goal, 0, len(choices)) - 1, 0)
    return choices[index], cost(index)


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
    train_paths: bool = False  # the paths too, not only the switch
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
    after step 0 the gate-weighted loss and budget overshoot of the rounded models) and the kept step."""
    rng = random.Random(seed)
    full, floors = reference_costs(net, targets)
    reference = targets[0] if targets else None
    optimizer = torch.optim.Adam(generator.parameters_to_train(plan.train_paths), lr=plan.lr)
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
                loss, expected, over = scenario_loss(net, generator, context_vector(scenario, num_classes), scenario, target,
                                                     scale, relative, x, y, plan)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % max(1, plan.steps // 10) == 0 or step == plan.steps:
                    score = probe.score(generator)
                    if score > best[0]:
                        best = (score, step, copy_state(generator))
                    entry = {"step": step, "loss": expected, "over_budget": over, "probe_accuracy": score}
                    history.append(entry)
                    if log:
                        log(f"generator step {step}/{plan.steps}: loss {entry['loss']:.3f}, over budget "
                            f"{entry['over_budget']:.1%}, probe accuracy {score:.2%}")
    generator.load_state_dict(best[2])
    generator.eval()
    return {"history": history, "kept_step": best[1], "probe_accuracy": best[0]}


def scenario_loss(net: ModularSupernet, generator: Generator, context: torch.Tensor, scenario: Scenario, target,
                  full: float, relative: float, x: torch.Tensor, y: torch.Tensor,
                  plan: GeneratorTraining) -> tuple[torch.Tensor, float, float]:
    """The generator's training objective for one scenario (`context`), budget (`relative` x the `full` cost) and
    batch: the switch learns from both orders' losses (`path_loss`), weighed by a soft gate on the budget (width first
    above the switch), so it moves to where they cross; with `plan.train_paths` each order's path also learns from its
    own loss. Also returns the gate-weighted loss and overshoot."""
    paths, switch = generator(context)
    with torch.set_grad_enabled(plan.train_paths):
        losses, overs = (torch.stack(t).cpu() for t in zip(*(path_loss(net, path, scenario, target, relative * full, x, y, plan)
                                                             for path in paths.values())))
    width_first = torch.sigmoid((math.log(relative) - torch.log(switch)) / SWITCH_WIDTH)
    weights = torch.stack([width_first, 1 - width_first])  # in the order of ORDERS
    expected, over = (float((weights.detach() * t.detach()).sum()) for t in (losses, overs))
    return (losses.sum() if plan.train_paths else 0.0) + (weights * losses.detach()).sum(), expected, over


def path_loss(net: ModularSupernet, path: Path, scenario: Scenario, target, goal: float, x: torch.Tensor,
              y: torch.Tensor, plan: GeneratorTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of `path` for one scenario and batch: the masked supernet's cross-entropy at the scale whose
    soft model meets `goal` (differentiable in the path when `plan.train_paths`), plus the penalty on the rounded
    model's relative cost above it; and that overshoot."""
    w = (at_budget(net, path, scenario.kind, target, goal, plan.temperature) if plan.train_paths else
         torch.tensor(solve_scale(net, path, scenario.kind, target, goal, plan.temperature)))
    masks, gates = path.soft(w, plan.temperature)
    with net.masked(masks, gates) as masked:
        out = masked(x)
    if scenario.classes:
        out = out[:, list(scenario.classes)]
    hard = net.masks_of(path.choice(float(w.detach())))
    rounded = net.costs.terms(straight_through(hard[0], masks), straight_through(hard[1], gates))
    over = F.relu(net.costs.cost(scenario.kind, rounded, target) / goal - 1.0).to(out.device)
    return F.cross_entropy(out, y) + plan.budget_penalty * over, over


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
        self.full, self.floors = full, floors
        self.reference = targets[0] if targets else None
        self.scenarios = [sample_scenario(rng, targets, num_classes, plan.subset_share, floors, full)
                          for _ in range(plan.probe_scenarios)]
        self.cache: dict[tuple[int, Choice], float] = {}

    @torch.no_grad()
    def score(self, generator: Generator) -> float:
        """The mean accuracy over the probe scenarios."""
        scores = []
        for i, (scenario, relative) in enumerate(self.scenarios):
            paths, switch = generator.plan(context_vector(scenario, self.num_classes))
            key, target = cost_key(scenario.kind, scenario.target), scenario.target or self.reference
            fit = lambda path, share: fitted(self.net, path, scenario.kind, target, share * self.full[key])  # noqa: E731
            choice, _ = routed(paths, switch, relative, self.floors[key], fit)
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
