"""The sub-networks of a trained supernet as a model family: each cut out, its BatchNorm recalibrated (once per
distinct sub-network), measured (accuracy before and after recalibration, MACs, ONNX Runtime latency here with the
members timed in alternating rounds, cost-model costs per target), and the most accurate one within each target's
budgets chosen, without search."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...errors import ConfigError
from ...metrics import count_macs
from ...training import evaluate
from ..budget import over_budget, target_costs
from ..measure import onnx_latencies
from .supernet import SubNet, Supernet
from .training import recalibrate_bn

if TYPE_CHECKING:
    from ...context import RunContext
    from ...targets import TargetProfile


@dataclass
class Member:
    """One extracted sub-network with its measurements."""

    subnet: SubNet
    model: nn.Module
    transforms: list
    metrics: dict = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> target_costs


def cut_family(supernet: Supernet, grid: list[SubNet], ctx: RunContext, bn_batches: int, loader) -> list[Member]:
    """Extract every sub-network of `grid`, recalibrate and measure it; sub-networks that come out identical (e.g.
    two widths that round to the same channel counts) are measured once and listed once, under the first name."""
    shape, members, seen = ctx.data.input_shape, [], {}
    full_macs = count_macs(supernet.model, shape)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.stage_dir) as scratch:
        for subnet in grid:
            signature = supernet.signature(subnet)
            if signature in seen:
                seen[signature].metrics.setdefault("same_as", []).append(subnet.name)
                continue
            model, transforms = supernet.extract(subnet)
            before = evaluate(model, ctx.data.val, ctx.data_config.eval_batch_size, ctx.device)["accuracy"]
            used = recalibrate_bn(model, loader, bn_batches, ctx.device)
            after = evaluate(model, ctx.data.val, ctx.data_config.eval_batch_size, ctx.device)["accuracy"]
            macs = count_macs(model, shape)
            member = Member(subnet, model, transforms, {
                "width": subnet.width, "depth": subnet.depth, "macs_share": macs / full_macs,
                "val_accuracy_inherited_bn": before, "val_accuracy_recalibrated": after, "bn_gain": after - before,
                "bn_batches": used})
            member.costs = {t.name: target_costs(model, t, shape) for t in ctx.targets or [ctx.target] if t is not None}
            member.metrics["estimated"] = member.costs
            members.append(member)
            seen[signature] = member
            ctx.log(f"[{ctx.stage_name}] {subnet.name}: {macs / full_macs:.1%} of the MACs, val accuracy {before:.2%} -> "
                    f"{after:.2%} after BatchNorm recalibration")
        # timed together, so that the members' latencies compare (one at a time, noise reordered them)
        timed = onnx_latencies({m.subnet.name: m.model for m in members}, ctx.data.val.x[:1].cpu(), Path(scratch), [1], runs=100)
    for member in members:
        member.model.to(ctx.device)
        member.metrics["host_latency_ms"] = timed[member.subnet.name]["latency_ms"]["1"]
    return members


def choose(members: list[Member], target: TargetProfile) -> Member:
    """The most accurate member within `target`'s budgets (fewer MACs on a tie); a ConfigError naming the cheapest
    member's costs when none fits."""
    fitting = [m for m in members if not over_budget(m.costs[target.name], target)]
    if not fitting:
        cheapest = min(members, key=lambda m: m.costs[target.name]["latency_ms"])
        raise ConfigError(f"no sub-network fits the budgets of target {target.name}: the cheapest, {cheapest.subnet.name}, "
                          f"has {'; '.join(over_budget(cheapest.costs[target.name], target))}; add smaller widths or depths")
    return max(fitting, key=lambda m: preference(m.metrics))


def preference(metrics: dict) -> tuple[float, float]:
    """How fitting members rank (higher first): validation accuracy after recalibration, then fewer MACs."""
    return metrics["val_accuracy_recalibrated"], -metrics["macs_share"]


def pareto_names(members: list[Member]) -> list[str]:
    """Members no other member beats on both MACs and accuracy."""
    def beaten(m: Member) -> bool:
        return any(o.metrics["macs_share"] <= m.metrics["macs_share"] and o.metrics["val_accuracy_recalibrated"] >
                   m.metrics["val_accuracy_recalibrated"] for o in members)
    return [m.subnet.name for m in members if not beaten(m)]

