"""Nestable channel groups of a network, from torch-pruning's dependency graph.

Coupled channels (a convolution's outputs, its BatchNorm, every layer that reads them, all sides of a residual
addition) form one torch-pruning group. A *unit* is what a sub-network keeps or drops as a whole: one channel of a
group, or, around a grouped convolution, one of its convolution groups together with the input channels that feed it
(so a grouped convolution keeps whole groups). Units with the same members and sizes form a `SliceGroup`; a
sub-network keeps a prefix of each slice group's units, and importance sorting puts the most important units first.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ...errors import ConfigError

OUT, IN = 0, 1  # the dimension a member's indices live in: output channels (features) or input channels


@dataclass
class SliceGroup:
    """Interchangeable units: `units[u]` maps (module name, OUT|IN) to the indices unit `u` covers there."""

    units: list[dict[tuple[str, int], list[int]]]
    channels: int  # output channels per unit (1, or a grouped convolution's channels per group)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def name(self) -> str:
        """The first module whose output channels the group holds, for messages and the report."""
        return next(name for name, dim in self.units[0] if dim == OUT)


@dataclass
class Nesting:
    """What can be nested: the slice groups, and the layers kept at full width with the reason."""

    groups: list[SliceGroup]
    fixed: dict[str, str] = field(default_factory=dict)  # module name -> why its channels cannot be nested


def nestable(module: nn.Module) -> str:
    """'' when the slicer can take a subset of `module`'s channels, else why not."""
    if isinstance(module, _ConvNd):
        if module.transposed:
            return "transposed convolution"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r}"
        return ""
    if isinstance(module, (nn.Linear, _BatchNorm)):
        return ""
    return f"{type(module).__name__} (only convolution, linear and batch-norm layers are sliced)"


def find_groups(model: nn.Module, example: torch.Tensor, keep: list[str]) -> Nesting:
    """The nestable channel groups of `model`; groups touching a layer in `keep` (the classifier) stay whole, and so
    do groups with a layer the slicer cannot slice (listed in `Nesting.fixed`)."""
    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    try:
        model.eval()  # tracing runs a forward pass with autograd on: keep the BatchNorm statistics as they are
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        tp_groups = list(graph.get_all_groups(root_module_types=(_ConvNd, nn.Linear)))
    except Exception as e:
        raise ConfigError(f"torch-pruning cannot trace the model to find its channel groups: {type(e).__name__}: {e}") from None
    finally:
        model.train(was_training)
    atoms = UnionFind()
    entries: list[tuple[int, str, int, list[int], list[int]]] = []  # (tp group, module, dim, indices, root indices)
    blocked: dict[int, tuple[str, str]] = {}  # tp group -> (module, why the group stays whole)
    for gid, group in enumerate(tp_groups):
        for item in group:
            module = item.dep.target.module
            dim = OUT if graph.is_out_channel_pruning_fn(item.dep.handler) else IN
            if isinstance(module, nn.Parameter) or module not in names:
                if isinstance(module, nn.Parameter):
                    blocked[gid] = (f"parameter {tuple(module.shape)}", "a bare parameter")
                continue  # torch-pruning's stand-ins for additions, concatenations and reshapes
            name, why = names[module], nestable(module)
            if why or (name in keep and dim == OUT):
                blocked[gid] = (name, why or "kept at full width")
            entries.append((gid, name, dim, list(item.idxs), list(item.root_idxs)))
            for root in item.root_idxs:
                atoms.add((gid, root))
    join_conv_groups(model, entries, atoms, blocked)

    components: dict[tuple, dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
    for gid, name, dim, idxs, roots in entries:
        for idx, root in zip(idxs, roots):
            components[atoms.find((gid, root))][(name, dim)].append(idx)
    whole = {atoms.find((gid, root)) for gid, *_, roots in entries if gid in blocked for root in roots}
    fixed = dict(blocked.values())
    classes: dict[tuple, list] = defaultdict(list)
    for root, unit in components.items():
        if root not in whole:
            signature = tuple(sorted((key, len(idxs)) for key, idxs in unit.items()))
            classes[signature].append({key: sorted(idxs) for key, idxs in unit.items()})
    groups = []
    for units in classes.values():
        units.sort(key=lambda u: min(min(v) for v in u.values()))
        out = [len(idxs) for (name, dim), idxs in units[0].items() if dim == OUT]
        if len(units) > 1 and out:
            groups.append(SliceGroup(units, channels=max(out)))
    return Nesting(groups, fixed)


def join_conv_groups(model: nn.Module, entries: list, atoms: "UnionFind", blocked: dict[int, tuple[str, str]]) -> None:
    """Tie each convolution group of a grouped convolution (1 < groups, not depthwise) into one unit: its output
    channels and the input channels that feed it, whichever torch-pruning groups they come from."""
    for name, conv in model.named_modules():
        if not isinstance(conv, _ConvNd) or conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels:
            continue
        cin, cout = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        seen_in = set()
        for gid, member, dim, idxs, roots in entries:
            if member != name:
                continue
            size = cout if dim == OUT else cin
            for idx, root in zip(idxs, roots):
                atoms.union((gid, root), ("conv-group", name, idx // size))
                seen_in.update([idx] if dim == IN else [])
        if len(seen_in) < conv.in_channels:  # some inputs come from a layer whose channels cannot be nested
            for gid, member, dim, *_ in entries:
                if member == name:
                    blocked[gid] = (name, "grouped convolution fed by channels that are not nested")


class UnionFind:
    """Disjoint sets of hashable items."""

    def __init__(self):
        self.parent: dict = {}

    def add(self, item) -> None:
        self.parent.setdefault(item, item)

    def find(self, item):
        self.add(item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)
