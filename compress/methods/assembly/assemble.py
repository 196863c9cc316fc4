"""Assembly of one scenario: the generator's choice, repaired until the extracted model's real cost is within the
budget (never over it), the head cut to the scenario's classes, BatchNorm recalibrated on them. Also the two
baselines the report compares it with: the SortedNet prefix rule (one width everywhere, the largest that fits) and an
evolutionary search over module choices (validation of each candidate as fitness, the same cost and repair)."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable, Optional

import torch
from torch import nn

from ...data import BatchLoader, Split
from ...errors import ConfigError
from ...metrics import count_macs
from ...models.resize import resize_changes, shape_attrs
from ...models.spec import Resize
from ...training import evaluate
from ..budget import target_costs
from ..pruning.masks import layers_in_order
from ..slicing.training import recalibrate_bn
from .generator import Generator, Path, Scenario, context_vector, first_over, routed
from .modules import Choice, ModularSupernet

UNITS = {"latency_ms": "ms", "macs": "of the supernet's MACs", "size_kb": "kB"}


@dataclass
class Factory:
    """A trained modular supernet and its generator."""

    net: ModularSupernet
    generator: Generator
    num_classes: int

    @cached_property
    def classifier(self) -> str:
        return list(layers_in_order(self.net.supernet.model, self.net.input_shape))[-1]

    @cached_property
    def full_terms(self) -> dict[str, torch.Tensor]:
        return self.net.costs.terms(*self.net.masks_of(self.net.largest))

    def build(self, choice: Choice, classes: Optional[tuple[int, ...]]) -> tuple[nn.Module, list]:
        """The extracted model of `choice` with its head cut to `classes`, and the transforms its spec records."""
        model, transforms = self.net.extract(choice)
        if classes:
            before = shape_attrs(model)
            cut_head(dict(model.named_modules())[self.classifier], list(classes))
            transforms.append(Resize(modules=resize_changes(before, shape_attrs(model))))
        return model, transforms

    def cost(self, model: nn.Module, scenario: Scenario) -> float:
        """The scenario's budget measure of a built model: cost-model latency (ms), MACs share, or weights size (kB)."""
        if scenario.kind == "macs":
            return count_macs(model, self.net.input_shape) / float(self.full_terms["macs"])
        costs = target_costs(model, scenario.target, self.net.input_shape)
        return costs["latency_ms"] if scenario.kind == "latency_ms" else costs["size_mb"] * 1e3

    def fits(self, choice: Choice, scenario: Scenario) -> bool:
        """Whether the built model of `choice` is within the scenario's budget."""
        return self.cost(self.build(choice, scenario.classes)[0], scenario) <= scenario.value

    def estimate(self, choice: Choice, scenario: Scenario) -> float:
        """The scenario's budget measure of `choice` from its masks alone, without extracting it: the mask costs
        count what `cost` counts on the extracted model, except the head cut to a class subset and, for size,
        biases and BatchNorm's parameters."""
        terms = self.net.costs.terms(*self.net.masks_of(choice))
        if scenario.kind == "macs":
            return float(terms["macs"] / self.full_terms["macs"])
        return float(self.net.costs.cost(scenario.kind, terms, scenario.target))


@dataclass
class Assembly:
    choice: Choice
    model: nn.Module
    transforms: list
    cost: float
    repaired: str  # "" (the generator's own estimate), "scale" (another point of its path) or "greedy"
    order: str  # of the generator's path it came from
    seconds: dict[str, float] = field(default_factory=dict)


def cut_head(linear: nn.Linear, classes: list[int]) -> None:
    """Keep only the rows of `classes` in the classifier, in that order."""
    index = torch.tensor(classes, device=linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach().index_select(0, index).clone())
    linear.out_features = len(classes)


def check_scenario(factory: Factory, scenario: Scenario) -> float:
    """The smallest sub-network's cost; a ConfigError naming it when even that is over the budget."""
    floor = factory.cost(factory.build(factory.net.smallest, scenario.classes)[0], scenario)
    if floor > scenario.value:
        raise ConfigError(f"budget {scenario.kind} {scenario.value:g} is below the smallest possible sub-network: the "
                          f"smallest achievable is {floor:.4g} {UNITS[scenario.kind]}" +
                          (f" on target {scenario.target.name}" if scenario.kind != "macs" else ""))
    return floor


def assemble(factory: Factory, scenario: Scenario, calibration: Split, bn_batches: int, batch_size: int,
             device: torch.device, seed: int = 0) -> Assembly:
    """The model for `scenario`: generate (the generator's paths and switch), repair (each path that `routed` asks for
    fitted to its budget on real costs; which of two fits costs more, by the mask costs), build, recalibrate
    BatchNorm; each step's wall time recorded."""
    seconds, started = {}, time.perf_counter()
    floor = check_scenario(factory, scenario)
    paths, switch = factory.generator.plan(context_vector(scenario, factory.num_classes))
    seconds["generate"], started = time.perf_counter() - started, time.perf_counter()
    repairs: dict[Choice, str] = {}

    def fit(path: Path, goal: float) -> tuple[Choice, float]:
        budget, choices = replace(scenario, value=goal), path.along()
        guess = first_over(lambda i: factory.estimate(choices[i], budget) <= goal, 0, len(choices))
        choice, how = fit_budget(factory, choices, lambda c: factory.fits(c, budget), guess)
        repairs[choice] = "" if choice == choices[max(guess - 1, 0)] else how  # "": the mask costs' own choice
        return choice, factory.estimate(choice, scenario)

    full = factory.estimate(factory.net.largest, scenario)
    fitted, order = routed(paths, switch * full, scenario.value, floor, fit)
    seconds["repair"], started = time.perf_counter() - started, time.perf_counter()
    model, transforms = factory.build(fitted, scenario.classes)
    calibrate(model, calibration, scenario.classes, bn_batches, batch_size, device, seed)
    seconds["bn"] = time.perf_counter() - started
    return Assembly(fitted, model, transforms, factory.cost(model, scenario), repairs[fitted], order, seconds)


def fit_budget(factory: Factory, choices: list[Choice], fits: Callable[[Choice], bool],
               guess: Optional[int] = None) -> tuple[Choice, str]:
    """The largest of the nested `choices` (the generator's path) whose extracted model's real cost fits: the
    generator decides where the modules go, the real cost decides how far along its path to go, so a bigger budget
    never gives a smaller model. When not even the first fits, it is shrunk greedily, widest group first. `guess`, the
    index of the first choice over budget by a cheap estimate, places the search: the real cost then confirms it (two
    extractions where the estimate is right) or searches outward from there."""
    fits_at = lambda i: fits(choices[i])  # noqa: E731
    low = first_over(fits_at, 0, len(choices)) if guess is None else confirmed(fits_at, guess, len(choices))
    if low:
        return choices[low - 1], "scale"
    return greedy_repair(choices[0], fits, lambda c: widest(c, factory.net)), "greedy"


def confirmed(fits_at: Callable[[int], bool], guess: int, count: int) -> int:
    """`first_over` of the real `fits_at` over [0, count), starting from an estimate's answer `guess`: steps away
    from it in doubling strides until the answer is bracketed, then bisects."""
    if guess and not fits_at(guess - 1):
        high, stride = guess - 1, 1  # high does not fit
        while high - stride >= 0 and not fits_at(high - stride):
            high, stride = high - stride, stride * 2
        return first_over(fits_at, max(high - stride + 1, 0), high)
    if guess < count and fits_at(guess):
        low, stride = guess, 1  # low fits
        while low + stride < count and fits_at(low + stride):
            low, stride = low + stride, stride * 2
        return first_over(fits_at, low + 1, min(low + stride, count))
    return guess


def widest(choice: Choice, net: ModularSupernet) -> Optional[tuple[str, int]]:
    """The group or stage that keeps the largest share of its modules (the search's repair order)."""
    shares = [((n / size, -i), ("modules", i)) for i, (n, size) in enumerate(zip(choice.modules, net.sizes)) if n > 1]
    shares += [((n / size, -i), ("blocks", i)) for i, (n, size) in enumerate(zip(choice.blocks, net.depths)) if n > 1]
    return max(shares)[1] if shares else None


def greedy_repair(choice: Choice, fits: Callable[[Choice], bool], pick: Callable[[Choice], Optional[tuple[str, int]]]) -> Choice:
    """Drop one module (or block) at a time, from where `pick` says, until `fits`."""
    while not fits(choice):
        where = pick(choice)
        if where is None:
            raise ConfigError("no sub-network fits the budget")  # check_scenario rules this out first
        kind, i = where
        counts = list(getattr(choice, kind))
        counts[i] -= 1
        choice = replace(choice, **{kind: tuple(counts)})
    return choice


def of_classes(split: Split, classes: Optional[tuple[int, ...]]) -> Split:
    """`split` cut to the scenario's classes (all of it for None)."""
    return split.of_classes(list(classes)) if classes else split


def calibrate(model: nn.Module, split: Split, classes, batches: int, batch_size: int, device, seed: int) -> None:
    """Recalibrate BatchNorm on `batches` training batches of the scenario's classes."""
    recalibrate_bn(model, BatchLoader(of_classes(split, classes), batch_size, shuffle=True, seed=seed), batches, device)


def prefix_choice(factory: Factory, scenario: Scenario) -> Choice:
    """The SortedNet rule without search: one width for every group (and one depth for every stage), the largest
    model that fits the budget."""
    net = factory.net
    fits = lambda c: factory.fits(c, scenario)  # noqa: E731
    best, best_cost = net.smallest, -math.inf
    for depth in range(max(net.depths, default=1), 0, -1):
        uniform = lambda w: Choice(tuple(max(1, round(w * size)) for size in net.sizes),  # noqa: E731
                                   tuple(min(depth, d) for d in net.depths))
        low, high = 0, 64  # widths k/64; fits is monotone in the width
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(uniform(mid / 64)) else (low, mid - 1)
        cost = factory.cost(factory.build(uniform(low / 64), scenario.classes)[0], scenario)
        if best_cost < cost <= scenario.value:
            best, best_cost = uniform(low / 64), cost
    return best


def evolutionary_search(factory: Factory, scenario: Scenario, fitness: Callable[[Choice], float], population: int,
                        generations: int, seed: int) -> tuple[Choice, int]:
    """Evolution as Once-for-All searches its supernet: random repaired choices, then each generation keeps the
    better half and breeds the rest by uniform crossover and mutation, each child repaired to the budget. Returns
    the best choice and the number of candidates evaluated."""
    net, rng = factory.net, random.Random(seed)
    repair_ = lambda c: greedy_repair(c, lambda x: factory.fits(x, scenario), lambda x: widest(x, net))  # noqa: E731
    scores: dict[Choice, float] = {}

    def score(choice: Choice) -> float:
        if choice not in scores:
            scores[choice] = fitness(choice)
        return scores[choice]

    def random_choice() -> Choice:
        return Choice(tuple(rng.randint(1, n) for n in net.sizes), tuple(rng.randint(1, d) for d in net.depths))

    def mutate(choice: Choice) -> Choice:
        genes = [(n, size) for n, size in zip(choice.modules + choice.blocks, net.sizes + net.depths)]
        new = [rng.randint(1, size) if rng.random() < 0.2 else n for n, size in genes]
        return Choice(tuple(new[: len(net.sizes)]), tuple(new[len(net.sizes):]))

    def cross(a: Choice, b: Choice) -> Choice:
        pick = lambda x, y: tuple(rng.choice(pair) for pair in zip(x, y))  # noqa: E731
        return Choice(pick(a.modules, b.modules), pick(a.blocks, b.blocks))

    members = [repair_(random_choice()) for _ in range(population)]
    for _ in range(generations):
        members = sorted(set(members), key=score, reverse=True)[: max(2, population // 2)]
        while len(members) < population:
            members.append(repair_(mutate(cross(rng.choice(members), rng.choice(members)))))
    best = max(members, key=score)
    return best, len(scores)


def accuracy_of(model: nn.Module, split: Split, classes, batch_size: int, device) -> float:
    """Top-1 accuracy on the examples of `classes` (labels by position in `classes`)."""
    return evaluate(model, of_classes(split, classes), batch_size, device)["accuracy"]
