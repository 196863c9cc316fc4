"""Budgets a compressed model must meet (MACs, latency on a target) and the search for the smallest compression
ratio that meets one. Shared by every stage that compresses to a budget."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from torch import nn

from ..errors import ConfigError
from ..metrics import count_macs, layer_costs

if TYPE_CHECKING:
    from ..targets import TargetProfile

MAX_RATIO = 0.99  # the largest share a search may remove


@dataclass(frozen=True)
class Goal:
    """A budget: `measure(model) <= value`; `key` names the setting it comes from, for messages."""

    key: str
    value: float
    measure: Callable[[nn.Module], float]

    def met(self, model: nn.Module) -> bool:
        return self.measure(model) <= self.value


def macs_goal(share: float, model: nn.Module, input_shape: tuple[int, ...], key: str = "target_macs") -> Goal:
    """Keep at most `share` of `model`'s MACs."""
    base = count_macs(model, input_shape)
    return Goal(key, share, lambda m: count_macs(m, input_shape) / base)


def latency_goal(ms: float, target: "TargetProfile", input_shape: tuple[int, ...], key: str = "target_latency_ms") -> Goal:
    """Batch-1 latency on `target` at its first preferred precision, estimated by the cost model, of at most `ms`."""
    from ..targets.cost import estimate_latency_ms

    precision = target.preferred_precisions[0]
    return Goal(key, ms, lambda m: estimate_latency_ms(layer_costs(m, input_shape), precision, target))


def goal_for(target_macs: Optional[float], target_latency_ms, model: nn.Module, target: Optional[TargetProfile],
             input_shape: tuple[int, ...]) -> Optional[Goal]:
    """The goal a stage's `target_macs` (a share of `model`'s MACs) or `target_latency_ms` (milliseconds, or 'budget':
    the target's `budgets.latency_ms`) set; None when neither is set."""
    if target_macs is not None:
        return macs_goal(target_macs, model, input_shape)
    if target_latency_ms is None:
        return None
    if target is None:
        raise ConfigError("target_latency_ms needs a target profile")
    value = target.budgets.latency_ms if target_latency_ms == "budget" else target_latency_ms
    if value is None:
        raise ConfigError(f"target_latency_ms: budget: target {target.name} has no latency budget; give milliseconds")
    return latency_goal(value, target, input_shape)


def smallest_ratio(trial: Callable[[float], nn.Module], goal: Goal, iterations: int = 12) -> tuple[float, nn.Module]:
    """The smallest ratio in [0, MAX_RATIO] whose `trial(ratio)` model meets `goal`, found by bisection, with that
    model; MAX_RATIO and its model when even that is not enough (the caller reports the floor)."""
    low, high = 0.0, MAX_RATIO
    best = trial(high)
    if not goal.met(best):
        return high, best
    for _ in range(iterations):
        mid = (low + high) / 2
        candidate = trial(mid)
        if goal.met(candidate):
            high, best = mid, candidate
        else:
            low = mid
    return high, best


def target_costs(model: nn.Module, target: "TargetProfile", input_shape: tuple[int, ...]) -> dict[str, float]:
    """Batch-1 latency, run-time memory and weights size of `model` on `target` at its first preferred precision,
    from the cost model: what the target's budgets are checked against before anything is exported."""
    from ..targets.cost import BYTES_PER_VALUE, estimate_latency_ms, estimate_memory_mb

    precision = target.preferred_precisions[0]
    layers = layer_costs(model, input_shape)
    weight_bytes = sum(p.numel() for p in model.parameters()) * BYTES_PER_VALUE[precision]
    return {"latency_ms": estimate_latency_ms(layers, precision, target), "size_mb": weight_bytes / 1e6,
            "memory_mb": estimate_memory_mb(layers, weight_bytes, precision)}


def over_budget(costs: dict[str, float], target: "TargetProfile") -> list[str]:
    """The target's latency, size and memory budgets that `costs` (from `target_costs`) exceed, as phrases."""
    budgets = target.budgets
    limits = {"latency_ms": budgets.latency_ms, "size_mb": budgets.size_mb, "memory_mb": budgets.memory_mb}
    return [f"{key} {costs[key]:.3g} > {limit:g}" for key, limit in limits.items() if limit is not None and costs[key] > limit]
