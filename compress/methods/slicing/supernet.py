"""A nested supernet (SortedNet / Matryoshka): every sub-network keeps a prefix of each slice group's units (width)
and the first blocks of each residual stage (depth). The supernet runs as any of its sub-networks by slicing its
weights on the fly (so a narrow sub-network costs less to train), and a sub-network is cut out as a standalone dense
module whose outputs equal the sliced forward, with a spec that rebuilds it."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ...models.resize import remove_modules, resize_changes, shape_attrs
from ...models.spec import Drop, Resize
from ..pruning.blocks import droppable_blocks
from .groups import IN, OUT, Nesting, SliceGroup


@dataclass(frozen=True)
class SubNet:
    """One sub-network: a width multiplier for every slice group, and blocks per residual stage (None: all)."""

    width: float
    depth: Optional[int] = None

    @property
    def name(self) -> str:
        return f"w{self.width:g}" + ("" if self.depth is None else f"-d{self.depth}")


@dataclass(frozen=True)
class Layout:
    """Any sub-network of a supernet: the units kept of every slice group (a prefix) and the blocks kept of every
    residual stage (the first ones); a `SubNet` is one with the same width everywhere."""

    units: tuple[int, ...]
    blocks: tuple[int, ...]


def unit_step(group: SliceGroup, align: int) -> int:
    """Units of `group` that make up `align` channels (1 when its units do not divide the alignment)."""
    return align // group.channels if align % group.channels == 0 else 1


def kept_units(group: SliceGroup, width: float, align: int) -> int:
    """Units of `group` a sub-network of `width` keeps: a multiple of the channel alignment where the group is wide
    enough (a group narrower than the alignment stays whole), and at least one step."""
    step = unit_step(group, align)
    if len(group) < step:
        return len(group)
    return min(len(group), max(step, int(width * len(group) / step + 0.5) * step))


def residual_stages(model: nn.Module, input_shape: tuple[int, ...]) -> list[list[str]]:
    """Runs of blocks in a Sequential where every block after the first returns its input's shape (the residual
    blocks of a ResNet stage), longest first blocks kept: depth d keeps the first d blocks of each run."""
    droppable = set(droppable_blocks(model, input_shape))
    stages: list[list[str]] = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or any(name.startswith(b + ".") for s in stages for b in s):
            continue
        run: list[str] = []
        for child, block in seq.named_children():
            full = f"{name}.{child}" if name else child
            if full in droppable and not isinstance(block, (_ConvNd, nn.Linear)) and run:
                run.append(full)
                continue
            if len(run) > 1:
                stages.append(run)
            run = [full]
        if len(run) > 1:
            stages.append(run)
    return stages


class Supernet:
    """The network and its nesting: slice groups, residual stages and channel alignment."""

    def __init__(self, model: nn.Module, nesting: Nesting, stages: list[list[str]], align: int = 1):
        self.model, self.nesting, self.stages, self.align = model, nesting, stages, align

    @property
    def max_depth(self) -> int:
        return max((len(s) for s in self.stages), default=0)

    def layout(self, subnet: SubNet | Layout) -> Layout:
        """The layout of `subnet` (a Layout is returned as it is)."""
        if isinstance(subnet, Layout):
            return subnet
        depth = subnet.depth or self.max_depth
        return Layout(tuple(kept_units(g, subnet.width, self.align) for g in self.nesting.groups),
                      tuple(min(depth, len(stage)) for stage in self.stages))

    def dropped_blocks(self, subnet: SubNet | Layout) -> list[str]:
        layout = self.layout(subnet)
        return [block for stage, kept in zip(self.stages, layout.blocks) for block in stage[kept:]]

    def kept_indices(self, subnet: SubNet | Layout) -> dict[tuple[str, int], torch.Tensor]:
        """(module, OUT|IN) -> the indices the sub-network keeps, for every module dimension it narrows."""
        dropped: dict[tuple[str, int], set[int]] = {}
        for group, kept in zip(self.nesting.groups, self.layout(subnet).units):
            for unit in group.units[kept:]:
                for key, idxs in unit.items():
                    dropped.setdefault(key, set()).update(idxs)
        modules = dict(self.model.named_modules())
        return {(name, dim): torch.tensor([i for i in range(dim_size(modules[name], dim)) if i not in gone])
                for (name, dim), gone in dropped.items()}

    def signature(self, subnet: SubNet | Layout) -> tuple:
        """What the sub-network is made of: equal signatures are the same model."""
        layout = self.layout(subnet)
        return layout.units, tuple(self.dropped_blocks(layout))

    @contextmanager
    def active(self, subnet: SubNet | Layout) -> Iterator[nn.Module]:
        """Run the supernet as `subnet` inside the block: narrowed layers slice their weights, dropped blocks pass
        their input through, and BatchNorm layers leave their running statistics (the full network's) alone."""
        modules = dict(self.model.named_modules())
        kept = self.kept_indices(subnet)
        changed = {name for name, _ in kept} | {name for name, m in modules.items() if isinstance(m, _BatchNorm)}
        for name in changed:
            module = modules[name]
            module.forward = sliced_forward(module, kept.get((name, OUT)), kept.get((name, IN)))
        for name in self.dropped_blocks(subnet):
            modules[name].forward = lambda x: x
        try:
            yield self.model
        finally:
            for name in [*changed, *self.dropped_blocks(subnet)]:
                del modules[name].forward

    def extract(self, subnet: SubNet | Layout) -> tuple[nn.Module, list]:
        """A standalone copy of the sub-network, and the transforms (resize, drop) its spec records."""
        dense = copy.deepcopy(self.model)
        modules = dict(dense.named_modules())
        kept = self.kept_indices(subnet)
        for name in {name for name, _ in kept}:
            attrs, tensors = sliced(modules[name], kept.get((name, OUT)), kept.get((name, IN)))
            module = modules[name]
            for attr, value in attrs.items():
                setattr(module, attr, value)
            for key, tensor in tensors.items():
                old = getattr(module, key)
                setattr(module, key, nn.Parameter(tensor.detach().clone(), old.requires_grad)
                        if isinstance(old, nn.Parameter) else tensor.clone())
        dropped = self.dropped_blocks(subnet)
        remove_modules(dense, dropped)
        return dense, [Resize(modules=resize_changes(shape_attrs(self.model), shape_attrs(dense))), Drop(modules=dropped)]


def nested(model: nn.Module, input_shape: tuple[int, ...], device, align: int, depth: bool) -> Supernet:
    """The nested supernet of `model`: its slice groups (the classifier's outputs kept whole) and, with `depth`, its
    residual stages; a ConfigError when torch-pruning cannot trace it or nothing can be nested (naming the layers)."""
    from ...errors import ConfigError
    from ..pruning.masks import layers_in_order
    from .groups import find_groups

    classifier = list(layers_in_order(model, input_shape))[-1]
    nesting = find_groups(model, torch.zeros(1, *input_shape, device=device), keep=[classifier])
    if not nesting.groups:
        fixed = "; ".join(f"{name} ({why})" for name, why in nesting.fixed.items())
        raise ConfigError(f"no channel group of the model can be nested: {fixed or 'no layers'}")
    return Supernet(model, nesting, residual_stages(model, input_shape) if depth else [], align)


def dim_size(module: nn.Module, dim: int) -> int:
    if isinstance(module, _BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if dim == OUT else module.in_features
    return module.out_channels if dim == OUT else module.in_channels


def sliced(module: nn.Module, out: Optional[torch.Tensor], inp: Optional[torch.Tensor]) -> tuple[dict, dict]:
    """The shape attributes and tensors of `module` keeping output indices `out` and input indices `inp` (None: all).
    A grouped convolution keeps whole groups: its rows follow `out`, and its group count follows the rows kept."""
    pick = lambda t, dim, idx: t if t is None or idx is None else t.index_select(dim, idx.to(t.device))  # noqa: E731
    if isinstance(module, _BatchNorm):
        tensors = {k: pick(getattr(module, k), 0, out) for k in ("weight", "bias", "running_mean", "running_var")}
        return {"num_features": module.num_features if out is None else len(out)}, {k: v for k, v in tensors.items() if v is not None}
    weight = pick(module.weight, 0, out)
    tensors = {"weight": weight, "bias": pick(module.bias, 0, out)}
    if isinstance(module, nn.Linear):
        tensors["weight"] = pick(weight, 1, inp)
        attrs = {"out_features": tensors["weight"].shape[0], "in_features": tensors["weight"].shape[1]}
    elif module.groups == 1:
        tensors["weight"] = pick(weight, 1, inp)
        attrs = {"out_channels": tensors["weight"].shape[0], "in_channels": tensors["weight"].shape[1], "groups": 1}
    else:
        groups = module.groups * weight.shape[0] // module.out_channels
        attrs = {"out_channels": weight.shape[0], "in_channels": weight.shape[1] * groups, "groups": groups}
    return attrs, {k: v for k, v in tensors.items() if v is not None}


def sliced_forward(module: nn.Module, out: Optional[torch.Tensor], inp: Optional[torch.Tensor]):
    """A forward for `module` that computes with the sliced weights of `sliced` (gradients reach the full ones)."""
    if isinstance(module, _BatchNorm):
        def forward(x):
            _, t = sliced(module, out, inp)
            use_batch = module.training or not module.track_running_stats
            return F.batch_norm(x, t.get("running_mean"), t.get("running_var"), t.get("weight"), t.get("bias"), use_batch,
                                0.0, module.eps)  # the copies' statistics are not kept: recalibrate each sub-network
        return forward
    if isinstance(module, nn.Linear):
        def forward(x):
            _, t = sliced(module, out, inp)
            return F.linear(x, t["weight"], t.get("bias"))
        return forward
    conv = getattr(F, f"conv{len(module.kernel_size)}d")

    def forward(x):
        attrs, t = sliced(module, out, inp)
        weight = t["weight"]
        if weight.dim() == 4 and module.weight.is_contiguous(memory_format=torch.channels_last):
            # training in NHWC: index_select returns NCHW, and mixed layouts run the narrow passes 1.1-1.4x slower
            weight = weight.contiguous(memory_format=torch.channels_last)
        return conv(x, weight, t.get("bias"), module.stride, module.padding, module.dilation, attrs["groups"])
    return forward


def sort_by_importance(supernet: Supernet) -> None:
    """Permute each slice group's units so the most important come first, without changing the network's function:
    importance is the squared L2 norm of the unit's conv and linear weights, each layer normalised by its own mean."""
    modules = dict(supernet.model.named_modules())
    order: dict[tuple[str, int], torch.Tensor] = {}
    for group in supernet.nesting.groups:
        score = torch.zeros(len(group))
        for key in group.units[0]:
            module = modules[key[0]]
            if isinstance(module, _BatchNorm) or (key[1] == IN and getattr(module, "groups", 1) > 1):
                continue
            w = module.weight.detach().float().pow(2)
            per = torch.stack([w.index_select(key[1], torch.tensor(u[key])).sum() for u in group.units])
            score += per / per.mean().clamp_min(1e-12)
        ranking = torch.argsort(score, descending=True, stable=True).tolist()
        for key in group.units[0]:
            src = order.setdefault(key, torch.arange(dim_size(modules[key[0]], key[1])))
            for position, unit in zip(group.units, ranking):
                src[torch.tensor(position[key])] = torch.tensor(group.units[unit][key])
    with torch.no_grad():
        for (name, dim), src in order.items():
            permute(modules[name], dim, src)


def permute(module: nn.Module, dim: int, src: torch.Tensor) -> None:
    """Reorder `module`'s channels along `dim`: new[i] = old[src[i]] (a grouped convolution's inputs are reordered
    by its input layers, so only its rows move)."""
    if dim == IN:
        if getattr(module, "groups", 1) == 1:
            module.weight.copy_(module.weight.index_select(1, src))
        return
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, key, None)
        if t is not None:
            t.copy_(t.index_select(0, src))

