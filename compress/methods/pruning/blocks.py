"""Gradual block dropping: depth pruning on the pruning schedule. A block whose output has its input's shape (a
residual block, typically) is blended with the identity, y = g * block(x) + (1 - g) * x, while the network fine-tunes;
g falls from 1 to 0 on the stage's schedule, and at g = 0 the block is exactly the identity and is removed. Depth is
what channel pruning cannot take away: a high-resolution block keeps its cost per channel however narrow it becomes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Union

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ...errors import ConfigError
from ...metrics import forward_with_hooks, layer_costs
from ...models.resize import remove_modules
from ...training import Callback, Trainer

if TYPE_CHECKING:
    from ...targets import TargetProfile


def droppable_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the submodules that hold a conv or linear layer and return a tensor of their input's shape, in
    `named_modules` order."""
    holds_layer = {m for m in model.modules() if any(isinstance(c, (_ConvNd, nn.Linear)) for c in m.modules())}
    names = {m: name for name, m in model.named_modules() if name and m in holds_layer}
    found: set[str] = set()

    def check(module: nn.Module, inputs, output) -> None:
        if len(inputs) == 1 and torch.is_tensor(inputs[0]) and torch.is_tensor(output) and output.shape == inputs[0].shape:
            found.add(names[module])

    forward_with_hooks(model, input_shape, names, check)
    return [name for name in names.values() if name in found]


def choose_blocks(candidates: list[str], request: Union[int, list[str]], cost: Callable[[str], float]) -> list[str]:
    """The blocks to drop: the named ones (checked to be droppable), or the `request` costliest droppable ones; a
    block inside or around a chosen one is never chosen too."""
    if isinstance(request, int):
        chosen: list[str] = []
        for name in sorted(candidates, key=cost, reverse=True):
            if len(chosen) < request and not any(nested(name, other) for other in chosen):
                chosen.append(name)
        if len(chosen) < request:
            raise ConfigError(f"drop_blocks: {request} blocks requested, but only {len(chosen)} can be dropped without one "
                              f"holding another (droppable: {', '.join(candidates) or 'none'})")
        return chosen
    for name in request:
        if name not in candidates:
            raise ConfigError(f"drop_blocks: {name!r} cannot be dropped: only a module that holds a conv or linear layer and "
                              f"returns its input's shape can; the droppable ones are: {', '.join(candidates) or 'none'}")
    clash = [(a, b) for i, a in enumerate(request) for b in request[i + 1:] if nested(a, b)]
    if clash:
        raise ConfigError(f"drop_blocks: {clash[0][0]!r} and {clash[0][1]!r} are nested; name one of them")
    return list(request)


def blocks_to_drop(model: nn.Module, input_shape: tuple[int, ...], request: Union[int, list[str]],
                   target: Optional[TargetProfile]) -> list[str]:
    """The blocks `request` names, or that many of the droppable ones with the highest estimated latency on `target`
    (the most MACs without a target)."""
    from ...targets.cost import estimate_latency_ms

    costs = layer_costs(model, input_shape)

    def cost(block: str) -> float:
        inside = [c for c in costs if nested(c.name, block)]
        if target is None:
            return sum(c.macs for c in inside)
        return estimate_latency_ms(inside, target.preferred_precisions[0], target)

    return choose_blocks(droppable_blocks(model, input_shape), request, cost)


def nested(a: str, b: str) -> bool:
    """Whether module `a` is `b`, inside `b`, or around `b`."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class BlockDropping(Callback):
    """Blends each block with the identity by the gate `kept(step)` (1 -> 0) during training, then removes the blocks.
    The blend is in place from construction: create it before the channel pruner traces the model."""

    def __init__(self, model: nn.Module, names: list[str], kept: Callable[[int], float]):
        self.model, self.names, self.kept = model, names, kept
        self.gate = 1.0
        self.hooks = [model.get_submodule(name).register_forward_hook(self.blend) for name in names]

    def blend(self, module: nn.Module, inputs, output) -> torch.Tensor:
        # blended even at g = 1, so that the channel pruner's trace ties the block's input channels to its output's
        return self.gate * output + (1.0 - self.gate) * inputs[0]

    def on_fit_start(self, trainer: Trainer) -> None:
        self.gate = self.kept(trainer.global_step)

    def on_step_end(self, trainer: Trainer) -> None:
        self.gate = self.kept(trainer.global_step)

    def on_fit_end(self, trainer: Trainer) -> None:  # the schedule ends by the last step: the blocks are the identity
        for hook in self.hooks:
            hook.remove()
        remove_modules(self.model, self.names)
