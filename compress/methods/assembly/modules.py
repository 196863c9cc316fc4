"""The modular supernet of NN-Factory over slicing's nested supernet: each slice group is cut into modules of
`module_channels` channels (kept as a prefix: module k only with modules 0..k-1), each residual stage into its
blocks (the first always kept). A choice of module and block counts is a `Layout`, extracted by the slicing
supernet's own extraction. For the generator's training, the same choice runs as a differentiable mask on the full
network, and its costs (MACs, the cost model's latency, weights size) are computed from the mask exactly as
`layer_costs` and the cost model would count the extracted model."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

from ...metrics import layer_costs
from ..slicing.groups import IN, OUT
from ..slicing.supernet import Layout, Supernet, dim_size, unit_step

if TYPE_CHECKING:
    from ...targets import TargetProfile

KINDS = ("latency_ms", "macs", "size_kb")  # the budgets a scenario can set


@dataclass(frozen=True)
class Choice:
    """Modules kept of every slice group and blocks kept of every residual stage (each at least 1)."""

    modules: tuple[int, ...]
    blocks: tuple[int, ...]


class ModularSupernet:
    """A `Supernet` seen as modules: `sizes[g]` modules in slice group g, `depths[s]` blocks in residual stage s."""

    def __init__(self, supernet: Supernet, module_channels: int, input_shape: tuple[int, ...]):
        self.supernet, self.input_shape, self.module_channels = supernet, input_shape, module_channels
        self.steps = [min(unit_step(g, module_channels), len(g)) for g in supernet.nesting.groups]  # units per module
        self.sizes = [-(-len(g) // step) for step, g in zip(self.steps, supernet.nesting.groups)]
        self.depths = [len(stage) for stage in supernet.stages]
        self.costs = MaskCosts(self)

    @property
    def largest(self) -> Choice:
        return Choice(tuple(self.sizes), tuple(self.depths))

    @property
    def smallest(self) -> Choice:
        return Choice((1,) * len(self.sizes), (1,) * len(self.depths))

    def layout(self, choice: Choice) -> Layout:
        """The slicing supernet's layout of `choice`."""
        units = tuple(min(len(g), n * step) for g, n, step in zip(self.supernet.nesting.groups, choice.modules, self.steps))
        return Layout(units, choice.blocks)

    def extract(self, choice: Choice) -> tuple[nn.Module, list]:
        """The standalone model of `choice` and the transforms its spec records."""
        return self.supernet.extract(self.layout(choice))

    def unit_masks(self, module_masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per slice group, the keep value of every unit from the keep values of its modules."""
        return [m.repeat_interleave(step)[: len(g)] for m, step, g in zip(module_masks, self.steps, self.supernet.nesting.groups)]

    def masks_of(self, choice: Choice) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The hard module masks and block gates of `choice`."""
        prefix = lambda n, size: (torch.arange(size) < n).float()  # noqa: E731
        return ([prefix(n, size) for n, size in zip(choice.modules, self.sizes)],
                [prefix(n, size) for n, size in zip(choice.blocks, self.depths)])

    @contextmanager
    def masked(self, module_masks: Sequence[torch.Tensor], gates: Sequence[torch.Tensor]) -> Iterator[nn.Module]:
        """Run the full network with every slice group's input channels scaled by its unit masks and every residual
        block blended with its input by its gate (0: the block is skipped); with hard masks this computes the
        extracted sub-network (BatchNorm on batch statistics), and gradients reach the masks."""
        model = self.supernet.model
        modules = dict(model.named_modules())
        units = self.unit_masks(module_masks)
        hooks = []
        for name, (const, members) in self.costs.channel_maps[IN].items():
            scale = lambda const=const, members=members: scaled(const, members, units)  # noqa: E731
            shape = (1, -1) if isinstance(modules[name], nn.Linear) else (1, -1) + (1,) * (modules[name].weight.dim() - 2)
            hooks.append(modules[name].register_forward_pre_hook(
                lambda m, args, scale=scale, shape=shape: (args[0] * scale().to(args[0]).view(shape),)))
        for stage, gate in zip(self.supernet.stages, gates):
            for block, g in zip(stage[1:], gate[1:]):  # the first block of a stage is always kept
                hooks.append(modules[block].register_forward_hook(
                    lambda m, args, out, g=g: args[0] + g.to(out) * (out - args[0])))
        try:
            yield model
        finally:
            for hook in hooks:
                hook.remove()


def scaled(const: torch.Tensor, members: list[tuple[int, torch.Tensor, torch.Tensor]], units: list[torch.Tensor]) -> torch.Tensor:
    """A module dimension's channel keep values: 1 for channels no group holds, each group's unit mask elsewhere."""
    out = const
    for group, channels, unit_of in members:
        out = out.index_put((channels,), units[group][unit_of])
    return out


class MaskCosts:
    """Costs of a masked supernet as functions of its (soft) module masks and block gates, matching `layer_costs`
    and the cost model on the extracted model when the masks are hard."""

    def __init__(self, net: ModularSupernet):
        supernet = net.supernet
        modules = dict(supernet.model.named_modules())
        raw: dict[int, dict[str, dict[int, tuple[list, list]]]] = {OUT: {}, IN: {}}  # dim -> module -> group -> (channels, units)
        for gi, group in enumerate(supernet.nesting.groups):
            for u, unit in enumerate(group.units):
                for (name, dim), idxs in unit.items():
                    channels, owners = raw[dim].setdefault(name, {}).setdefault(gi, ([], []))
                    channels += idxs
                    owners += [u] * len(idxs)
        self.channel_maps = {dim: {name: channel_map(modules[name], dim, by_group) for name, by_group in maps.items()}
                             for dim, maps in raw.items()}
        self.layers = layer_costs(supernet.model, net.input_shape)
        self.block_of = {layer.name: (s, b) for s, stage in enumerate(supernet.stages) for b, block in enumerate(stage)
                         for layer in self.layers if layer.name.startswith(block + ".")}
        self.ungrouped = {layer.name: isinstance(modules[layer.name], nn.Linear) or modules[layer.name].groups == 1
                          for layer in self.layers}
        self.net = net

    def fraction(self, name: str, dim: int, units: list[torch.Tensor]) -> torch.Tensor:
        """The kept share of a layer's output (OUT) or input (IN) channels."""
        entry = self.channel_maps[dim].get(name)
        if entry is None:
            return torch.tensor(1.0)
        return scaled(entry[0], entry[1], units).mean()

    def terms(self, module_masks, gates) -> dict[str, torch.Tensor]:
        """MACs, weights, activation values and layer count of the masked model (one example)."""
        units = self.net.unit_masks(module_masks)
        macs = weights = values = count = torch.tensor(0.0)
        for layer in self.layers:
            fo, fi = self.fraction(layer.name, OUT, units), self.fraction(layer.name, IN, units)
            where = self.block_of.get(layer.name)
            keep = gates[where[0]][where[1]] if where else torch.tensor(1.0)
            share = fo * fi if self.ungrouped[layer.name] else fo
            macs = macs + keep * layer.macs * share
            weights = weights + keep * layer.weights * share
            values = values + keep * (layer.weights * share + layer.inputs * fi + layer.outputs * fo)
            count = count + keep
        return {"macs": macs, "weights": weights, "values": values, "layers": count}

    def cost(self, kind: str, terms: dict[str, torch.Tensor], target: "TargetProfile") -> torch.Tensor:
        """One budget's cost from `terms`: MACs, batch-1 latency in ms (the cost model at the target's first preferred
        precision) or weights size in kB (conv and linear weights)."""
        from ...targets.cost import BYTES_PER_VALUE

        if kind == "macs":
            return terms["macs"]
        precision = target.preferred_precisions[0]
        if kind == "size_kb":
            return terms["weights"] * BYTES_PER_VALUE[precision] / 1e3
        compute = 2e3 * terms["macs"] / (target.peak_tops[precision] * 1e12) / target.efficiency
        memory = 1e3 * terms["values"] * BYTES_PER_VALUE[precision] / (target.memory_bandwidth_gbps * 1e9)
        return compute + memory / (target.memory_efficiency or target.efficiency) + terms["layers"] * target.layer_overhead_us / 1e3


def channel_map(module: nn.Module, dim: int, by_group: dict[int, tuple[list, list]]) -> tuple[torch.Tensor, list]:
    """(1 for every channel no group holds, else 0; per group: its channels and the unit each belongs to)."""
    const = torch.ones(dim_size(module, dim))
    members = []
    for gi, (channels, owners) in by_group.items():
        index = torch.tensor(channels)
        const[index] = 0.0
        members.append((gi, index, torch.tensor(owners)))
    return const, members

